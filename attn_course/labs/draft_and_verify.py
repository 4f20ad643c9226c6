"""Part VI lab (speculative decoding): a target and a shallower draft on a bracket stream, drafts verified.

The language is chapter 14's bracket language (``labs.bracket_language``, the Dyck-2 sentences
``( [ ] ) .``) written as one stream: ``<bos>`` then sentence after sentence. Some tokens are
easy (a closer is fixed by the last open bracket; ``.`` follows when nothing is open), some are
coin flips (open or close?): a small draft gets many of them right, never all.

* ``bracket_stream``       a long 1-D tensor of token ids: the training data and the prompts.
* ``target_config``, ``draft_config``   a 2-layer GPT and a 1-layer, 4x narrower one.
* ``train_stream_model``   next-token training on random windows of the stream (seconds on a CPU).
* ``train_pair``           both models at once (one process each: ``labs.training.train_side_by_side``).
* ``stream_prompts``       prompts cut from a held-out stream.
* ``sweep_drafts``         ``speculative_generate`` over prompts for each ``k``: counts and seconds.
* ``time_target_alone``, ``call_cost_ratio``   the baseline's seconds; one draft call over one target call.
* ``plot_sweep``, ``plot_tokens_per_call``   the chapter's figures (the second is the slider's frame).
* ``draw_draft_and_verify``, ``ALT``           the diagram of one round.
* ``speculative_comparison``   the headline for ``benchmarks/serving.py``: target alone vs speculative,
                               tokens/s at identical greedy output.

Shapes: the stream ``(N,)``; prompts ``(1, T)``; training batches ``(B, context + 1)``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from functools import partial

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from attn_course import utils
from attn_course._validation import require_int
from attn_course.decoding import generate
from attn_course.diagrams import COLORS, INK, MUTED, arrow, box, canvas, label
from attn_course.gpt import GPT, GPTConfig
from attn_course.labs.bracket_language import BOS, VOCAB, BracketTask
from attn_course.labs.training import TrainHistory, run_steps, train_side_by_side
from attn_course.prepack import prepack_linears
from attn_course.speculative import SpeculativeStats, expected_tokens_per_call, speculative_generate

__all__ = [
    "ALT",
    "bracket_stream",
    "target_config",
    "draft_config",
    "train_stream_model",
    "train_pair",
    "stream_prompts",
    "sweep_drafts",
    "time_target_alone",
    "call_cost_ratio",
    "plot_sweep",
    "plot_tokens_per_call",
    "draw_draft_and_verify",
    "speculative_comparison",
]

ALT = {
    "draw_draft_and_verify": (
        "One round of speculative decoding. Top: after the context, the small draft model proposes "
        "k = 4 tokens, one cheap call each. Middle: the target model runs once over the context's last "
        "token and the 4 drafts, giving its distribution p at all 5 positions. Bottom: drafts are checked "
        "left to right; the first two are accepted (probability min(1, p/q)), the third is rejected and "
        "replaced by a sample of the residual max(0, p - q); the fourth is discarded. The round emits 3 "
        "tokens for one target call."
    ),
    "plot_tokens_per_call": (
        "Left: bars of the probability that a round with k drafts emits 1, 2, ..., k + 1 tokens when each "
        "draft is accepted with probability a: a^j (1 - a) for j accepted drafts, a^k for all. Right: the "
        "expected tokens per target call (1 - a^(k+1)) / (1 - a) against k, with the measured values of "
        "the chapter's sweep as dots and the current k marked."
    ),
}


# --------------------------------------------------------------------------- data and models


def bracket_stream(num_tokens: int, seed: int = 0, task: BracketTask | None = None) -> torch.Tensor:
    """``<bos>`` and then bracket sentences, one after another: ``(num_tokens,)`` token ids."""
    require_int(num_tokens, "num_tokens")
    task = BracketTask() if task is None else task
    rng = random.Random(seed)
    ids = [BOS]
    while len(ids) < num_tokens:
        ids += task.encode(task.sentence(rng))[1:]  # without its <bos>: sentences follow each other
    return torch.tensor(ids[:num_tokens])


def target_config(context: int = 32) -> GPTConfig:
    """The target: 2 layers, 2 heads, 32 wide (~27k parameters)."""
    return GPTConfig(vocab_size=len(VOCAB), context_length=context, n_layer=2, n_head=2, n_embd=32)


def draft_config(context: int = 32) -> GPTConfig:
    """The draft: 1 layer, 1 head, 8 wide (~1k parameters): same vocabulary, same context."""
    return GPTConfig(vocab_size=len(VOCAB), context_length=context, n_layer=1, n_head=1, n_embd=8)


def train_stream_model(model: GPT, data: torch.Tensor, steps: int = 200, batch_size: int = 16, lr: float = 1e-2,
                       seed: int = 0, progress: bool = True, desc: str = "GPT", bos_first: bool = False,
                       threads: int = 1) -> TrainHistory:
    """Train ``model`` in place to predict each next token of random windows of ``data``.

    A batch is ``batch_size`` windows of ``context_length + 1`` tokens at random offsets (with
    ``bos_first``, each window's first token is replaced by ``<bos>``); AdamW with a one-cycle
    schedule, on ``threads`` threads (one for the chapter's tiny tensors).
    """
    require_int(steps, "steps")
    T = model.config.context_length
    g = torch.Generator().manual_seed(seed)
    offsets = torch.arange(T + 1)

    def loss_for_step(i: int) -> torch.Tensor:
        start = torch.randint(0, len(data) - T - 1, (batch_size,), generator=g)
        x = data[start[:, None] + offsets].to(model.wte.weight.device)  # (B, T + 1)
        if bos_first:
            x[:, 0] = BOS
        logits = model(x[:, :-1])  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())

    begin = time.perf_counter()
    with utils.num_threads(threads):
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        if steps >= 20:
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
        else:  # too few steps for a warm-up phase (OneCycleLR divides by its length)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
        losses = run_steps(model, loss_for_step, optimizer, schedule, steps, grad_clip=1.0, progress=progress,
                           desc=desc, postfix_every=20)
    return TrainHistory(losses=losses, seconds=time.perf_counter() - begin)


def train_pair(data: torch.Tensor, context: int = 32, target_steps: int = 200, draft_steps: int = 100,
               seed: int = 0, workers: int = 2, progress: bool = True,
               target: GPTConfig | None = None, draft: GPTConfig | None = None,
               target_lr: float = 1e-2, threads: int = 1) -> tuple[GPT, GPT, dict]:
    """Build and train the target and the draft on ``data``; return ``(target, draft, histories)``.

    Side by side in ``workers`` processes of ``threads`` threads each (``workers=1``: one after
    the other, e.g. with ``threads=2`` for a target too large for one core). The draft trains at
    ``lr = 1e-2``, the target at ``target_lr`` (lower for a wide one).
    """
    torch.manual_seed(seed)
    models = {"target": GPT(target or target_config(context)), "draft": GPT(draft or draft_config(context))}
    steps = {"target": target_steps, "draft": draft_steps}
    lrs = {"target": target_lr, "draft": 1e-2}
    jobs = {name: (m, partial(train_stream_model, m, data, steps[name], lr=lrs[name], seed=seed + i,
                              progress=progress, desc=name, threads=threads))
            for i, (name, m) in enumerate(models.items())}
    histories = train_side_by_side(jobs, workers=workers, progress=progress)
    return models["target"].eval(), models["draft"].eval(), histories


def stream_prompts(num: int, length: int = 4, seed: int = 1) -> list[torch.Tensor]:
    """``num`` prompts ``(1, length)`` cut at random places of a stream the models never saw."""
    data = bracket_stream(num * 50 + length, seed=seed + 10_000)
    rng = random.Random(seed)
    return [data[None, s:s + length] for s in (rng.randrange(len(data) - length) for _ in range(num))]


# --------------------------------------------------------------------------- measurements


def _add(total: SpeculativeStats, s: SpeculativeStats) -> None:
    for name in ("rounds", "drafted", "accepted", "target_calls", "draft_calls", "rejections"):
        setattr(total, name, getattr(total, name) + getattr(s, name))


def sweep_drafts(target: GPT, draft: GPT, prompts: Sequence[torch.Tensor], ks: Sequence[int], new_tokens: int,
                 temperature: float = 0.0, seed: int = 0, check_greedy: bool = True,
                 threads: int = 1) -> dict[int, dict]:
    """For each ``k``: ``speculative_generate`` on every prompt; the summed ``SpeculativeStats`` and seconds.

    ``result[k]`` has ``stats``, ``tokens`` (new tokens, all prompts), ``seconds`` (on ``threads``
    threads) and, greedy with ``check_greedy``, ``identical``: every output equal to
    ``generate(target, ...)`` alone.
    """
    out = {}
    alone = [generate(target, p, new_tokens) for p in prompts] if temperature == 0 and check_greedy else None
    with utils.num_threads(threads):
        for k in ks:
            total, seconds, same = SpeculativeStats(), 0.0, True
            for i, p in enumerate(prompts):
                start = time.perf_counter()
                tokens, stats = speculative_generate(target, draft, p, new_tokens, k=k, temperature=temperature,
                                                     seed=seed + i)
                seconds += time.perf_counter() - start
                _add(total, stats)
                if alone is not None:
                    same = same and torch.equal(tokens, alone[i])
            out[k] = {"stats": total, "tokens": new_tokens * len(prompts), "seconds": seconds}
            if alone is not None:
                out[k]["identical"] = same
    return out


def time_target_alone(target: GPT, prompts: Sequence[torch.Tensor], new_tokens: int, threads: int = 1) -> float:
    """Seconds for ``generate(target, p, new_tokens)`` (greedy, dynamic cache) over all prompts."""
    with utils.num_threads(threads):
        start = time.perf_counter()
        for p in prompts:
            generate(target, p, new_tokens)
        return time.perf_counter() - start


def call_cost_ratio(target: GPT, draft: GPT, context: int = 16, repeats: int = 20, threads: int = 1) -> float:
    """``c``: the time of one draft decode call over one target decode call (one token, ``context`` cached)."""
    def one_call(model: GPT) -> float:
        cache = model.new_cache("dynamic")
        x = torch.zeros(1, context, dtype=torch.long, device=model.wte.weight.device)
        with torch.no_grad():
            model(x, cache)
            def step():
                model(x[:, :1], cache)
                cache.crop(context)
            return utils.best_seconds(step, repeats=repeats)
    with utils.num_threads(threads):
        return one_call(draft) / one_call(target)


# --------------------------------------------------------------------------- figures


def plot_sweep(results: dict[int, dict], sampled: dict[int, dict] | None = None, axes=None):
    """Two panels against ``k``: acceptance (rate and ``alpha``), tokens per target call with the formula."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    series = {"greedy": results} if sampled is None else {"greedy": results, "sampled (T = 1)": sampled}
    for (name, res), color in zip(series.items(), (COLORS["query"], COLORS["key"])):
        ks = sorted(res)
        st = [res[k]["stats"] for k in ks]
        axes[0].plot(ks, [s.alpha for s in st], "o-", color=color, label=f"{name}: alpha (per tested draft)")
        axes[0].plot(ks, [s.acceptance_rate for s in st], "s--", color=color, alpha=0.6,
                     label=f"{name}: accepted / drafted")
        measured = [res[k]["tokens"] / s.target_calls for k, s in zip(ks, st)]
        alpha = sum(s.accepted for s in st) / max(1, sum(s.accepted + s.rejections for s in st))
        axes[1].plot(ks, measured, "o", color=color, label=f"{name}: measured")
        grid = torch.linspace(min(ks), max(ks), 50).tolist()
        axes[1].plot(grid, [(1 - alpha ** (x + 1)) / (1 - alpha) for x in grid], "-", color=color, alpha=0.6,
                     label=f"(1 - a^(k+1)) / (1 - a), a = {alpha:.2f}")
    ks = sorted(results)
    axes[1].plot(ks, [k + 1 for k in ks], ":", color=MUTED, label="k + 1 (every draft accepted)")
    axes[0].set(xlabel="drafted tokens per round k", ylabel="acceptance", ylim=(0, 1.02),
                title="How often the target agrees")
    axes[1].set(xlabel="drafted tokens per round k", ylabel="tokens per target call",
                title="Tokens per target forward pass")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return axes


def plot_tokens_per_call(fig: Figure, k: float, alpha: float, measured: dict[int, float] | None = None) -> Figure:
    """Slider frame: the law of tokens per round for ``k`` drafts, and ``(1 - a^(k+1)) / (1 - a)`` against k."""
    k = int(k)
    fig.clear()
    left, right = fig.subplots(1, 2)
    j = list(range(k + 1))
    probs = [alpha ** i * (1 - alpha) for i in range(k)] + [alpha ** k]  # j drafts accepted
    left.bar([i + 1 for i in j], probs, color=COLORS["value"], alpha=0.8)
    mean = expected_tokens_per_call(alpha, k)
    left.axvline(mean, color=COLORS["context"], lw=2, label=f"mean = {mean:.2f} tokens")
    left.set(xlabel="tokens emitted by one round", ylabel="probability", ylim=(0, 1), xlim=(0.4, 9.6),
             title=f"k = {k} drafts, each accepted with a = {alpha:.2f}")
    left.legend(fontsize=8)
    ks = list(range(1, 9))
    right.plot(ks, [expected_tokens_per_call(alpha, x) for x in ks], "-", color=COLORS["query"],
               label="(1 - a^(k+1)) / (1 - a)")
    right.plot(ks, [x + 1 for x in ks], ":", color=MUTED, label="k + 1")
    right.axhline(1 / (1 - alpha) if alpha < 1 else 9, color=MUTED, lw=0.8, ls="--", label="limit 1 / (1 - a)")
    if measured:
        right.plot(list(measured), list(measured.values()), "o", color=COLORS["key"], label="measured (greedy)")
    right.plot([k], [mean], "o", ms=12, mfc="none", mec=COLORS["context"], mew=2)
    right.set(xlabel="k", ylabel="tokens per target call", ylim=(0, 9.5), title="Expected tokens per target call")
    right.legend(fontsize=8, loc="upper left")
    right.grid(alpha=0.3)
    return fig  # the slider's figure lays itself out (constrained layout): no tight_layout here


def draw_draft_and_verify() -> Figure:
    """One round: the draft proposes 4 tokens, the target scores 5 positions at once, 2 kept, 1 replaced."""
    fig, ax = canvas(10.4, 4.6, ALT["draw_draft_and_verify"])
    w, h, dx = 0.62, 0.42, 0.78
    context = ["(", "[", "]", ")", "("]
    drafts = ["[", "]", "]", "."]
    x0 = 1.0
    ys = {"draft": 3.85, "target": 2.35, "out": 0.75}
    label(ax, 0.1, 4.4, "1. the draft proposes k = 4 tokens: 4 calls of a small model", ha="left", color=INK, size=10)
    label(ax, 0.1, 2.95, "2. the target scores all 5 positions in ONE forward pass", ha="left", color=INK, size=10)
    label(ax, 0.1, 1.35, "3. keep each draft with probability min(1, p/q); at the first rejection, sample "
          "max(0, p - q) (normalised) instead", ha="left", color=INK, size=10)
    for i, t in enumerate(context):
        box(ax, x0 + i * dx, ys["draft"], w, h, t, COLORS["state"])
    first = x0 + len(context) * dx
    for i, t in enumerate(drafts):
        x = first + i * dx
        box(ax, x, ys["draft"], w, h, t, COLORS["key"])
        label(ax, x, ys["draft"] - 0.36, f"q{i + 1}", size=8, color=COLORS["key"])
        if i:
            arrow(ax, (x - dx + w / 2, ys["draft"] + 0.12), (x - w / 2, ys["draft"] + 0.12), COLORS["key"], rad=-0.6)
    label(ax, first + 3.5 * dx + 0.35, ys["draft"], "draft tokens\nx ~ q", ha="left", color=COLORS["key"])
    # The target over the last context token and the 4 drafts.
    xs = [first - dx + i * dx for i in range(5)]
    box(ax, (xs[0] + xs[-1]) / 2, ys["target"], xs[-1] - xs[0] + w, 0.5, "target: one call over 5 positions",
        COLORS["query"])
    for i, x in enumerate(xs):
        arrow(ax, (x, ys["draft"] - h / 2 - 0.22), (x, ys["target"] + 0.25), COLORS["query"], lw=1.0)
        label(ax, x + 0.02, ys["target"] - 0.42, f"p{i + 1}", size=8, color=COLORS["query"])
    label(ax, xs[-1] + 0.5, ys["target"], "p at every position:\nthe next-token law\nafter each prefix",
          ha="left", color=COLORS["query"])
    # Outcome.
    verdicts = [("[", "accept", COLORS["value"]), ("]", "accept", COLORS["value"]),
                (")", "] rejected:\nresampled", COLORS["context"])]
    for i, x in enumerate(xs[1:4]):
        t, why, color = verdicts[i]
        box(ax, x, ys["out"], w, h, t, color)
        label(ax, x, ys["out"] - 0.42 - 0.08 * why.count("\n"), why, size=8, color=color)
    box(ax, xs[4], ys["out"], w, h, ".", MUTED, ls="--", fill="white")
    label(ax, xs[4], ys["out"] - 0.42, "discarded", size=8, color=MUTED)
    for i, t in enumerate(context):
        box(ax, x0 + i * dx, ys["out"], w, h, t, COLORS["state"])
    label(ax, xs[4] + 0.55, ys["out"], "3 new tokens\nfor 1 target call\n(at best k + 1 = 5)", ha="left",
          color=INK)
    return fig


# --------------------------------------------------------------------------- the serving benchmark's headline


def speculative_comparison(k: int = 4, new_tokens: int = 28, num_prompts: int = 8, context: int = 32,
                           target_steps: int = 200, draft_steps: int = 100, seed: int = 0,
                           device: str | torch.device = "cpu", target: GPTConfig | None = None,
                           draft: GPTConfig | None = None, progress: bool = False, target_lr: float = 1e-2,
                           workers: int = 2, threads: int = 1, prepack: bool = False, repeats: int = 1) -> dict:
    """Train the pair, then decode the same prompts greedily with the target alone and speculatively.

    Returns ``tokens_per_s_target``, ``tokens_per_s_speculative``, ``speedup`` (their ratio, each
    the best of ``repeats`` runs, alternated), ``identical`` (every speculative output equals the
    target's own), ``alpha``, ``tokens_per_target_call``, ``target_calls`` and
    ``target_calls_alone`` (= tokens), ``k``, ``device``, ``cost_ratio`` (one draft call over one
    target call) and ``target_parameters``.

    Speculative decoding pays off when checking k + 1 tokens costs about what one token costs:
    when the target's weights stream from memory (larger than the processor's caches, or on a
    GPU). On a CPU, ``prepack=True`` prepacks the target's linear layers (``attn_course.prepack``)
    so that a few rows at once are still one pass over the weights; the target alone uses the
    same prepacked model. ``workers``, ``threads``, ``target_lr``: as in ``train_pair``.
    """
    data = bracket_stream(60_000, seed=seed)
    t_model, d_model, _ = train_pair(data, context, target_steps, draft_steps, seed=seed, progress=progress,
                                     target=target, draft=draft, target_lr=target_lr, workers=workers,
                                     threads=threads)
    t_model, d_model = t_model.to(device), d_model.to(device)
    if prepack and torch.device(device).type == "cpu":
        prepack_linears(t_model, batch_size=k + 1)
    prompts = [p.to(device) for p in stream_prompts(num_prompts, 4, seed=seed + 1)]
    with utils.num_threads(threads):
        generate(t_model, prompts[0], 4), speculative_generate(t_model, d_model, prompts[0], 4, k=k)  # warm up
    alone_s = spec_s = float("inf")
    for i in range(repeats):  # alternated, so a change in the machine's load hits both alike
        alone_s = min(alone_s, time_target_alone(t_model, prompts, new_tokens, threads=threads))
        # greedy output is the same in every repeat: compare it with the target's own once
        res = sweep_drafts(t_model, d_model, prompts, [k], new_tokens, check_greedy=i == 0, threads=threads)[k]
        if i == 0:
            identical = res["identical"]
        spec_s = min(spec_s, res["seconds"])
    st, tokens = res["stats"], res["tokens"]
    cost_ratio = call_cost_ratio(t_model, d_model, context=min(16, context - 1), threads=threads)
    return {
        "k": k,
        "device": str(device),
        "tokens": tokens,
        "tokens_per_s_target": tokens / alone_s,
        "tokens_per_s_speculative": tokens / spec_s,
        "speedup": alone_s / spec_s,
        "identical": identical,
        "alpha": st.alpha,
        "tokens_per_target_call": tokens / st.target_calls,
        "target_calls": st.target_calls,
        "target_calls_alone": tokens,
        "cost_ratio": cost_ratio,
        "target_parameters": sum(p.numel() for p in t_model.parameters()),
    }
