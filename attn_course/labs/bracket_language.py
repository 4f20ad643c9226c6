"""Part IV lab (autoregressive decoding): a bracket language a small GPT learns in seconds.

The language has rules a reader can check by eye. A sentence is a balanced string over two
bracket pairs, ``()`` and ``[]`` (the Dyck-2 language), nested at most ``max_depth`` deep, with
at least one and at most ``max_pairs`` pairs, followed by ``.``::

    ( [ ] ) [ ( ) ] .        valid
    ( [ ) ] .                ')' closes '[' at position 2
    ( ( ( ( ( ) ) ) ) ) .    nested 5 deep, more than max_depth = 4

Every rule needs attention to reach back: the right closer is fixed by the most recent
unclosed opener, however far back it is, and ``.`` may only come when nothing is open.

* ``BracketTask``          the grammar: random sentences, encode / decode, batches.
* ``check_brackets``       the rule-checker: ``None`` for a valid sentence, else the first broken rule.
* ``train_bracket_model``  a small ``attn_course.gpt.GPT`` trained on next-token prediction.
* ``sample_sentences``     generate from ``<bos>`` with ``attn_course.decoding.generate`` and check each.
* ``left_pad``             prompts of different lengths -> one left-padded batch and its attention mask.
* ``plot_sampling_distributions``   what greedy / temperature / top-k / top-p sample from, side by side.
* ``forward_flops``        FLOPs of one forward pass counted by torch: the Linear layers and attention apart.
* ``plot_temperature``     one frame of the temperature slider: the distribution at ``T``, then after top-p.
* ``plot_work_per_token``  multiply-adds to produce token t, with and without a KV cache.

Token ids: ``0 <pad>``, ``1 <bos>``, ``2 .``, ``3 (``, ``4 )``, ``5 [``, ``6 ]``. Shapes:
``(B, T)`` token batches, ``T = 2 * max_pairs + 2`` (``<bos>``, the brackets, ``.``), right-padded.
"""

from __future__ import annotations

import random
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attn_course import utils
from attn_course._validation import require_int
from attn_course.decoding import generate, generation_macs, sampling_distribution
from attn_course.gpt import GPT, GPTConfig
from attn_course.gqa import GroupedQueryAttention
from attn_course.labs.training import TrainHistory, run_steps

__all__ = [
    "VOCAB",
    "PAD",
    "BOS",
    "EOS",
    "BracketTask",
    "check_brackets",
    "default_model_config",
    "train_bracket_model",
    "sample_sentences",
    "SampleReport",
    "left_pad",
    "plot_sampling_distributions",
    "ForwardFlops",
    "forward_flops",
    "plot_temperature",
    "plot_work_per_token",
]

VOCAB = ("<pad>", "<bos>", ".", "(", ")", "[", "]")
PAD, BOS, EOS = 0, 1, 2
_PAIRS = {")": "(", "]": "["}  # closer -> its opener
_IDS = {tok: i for i, tok in enumerate(VOCAB)}


def check_brackets(text: str, max_depth: int | None = None, max_pairs: int | None = None) -> str | None:
    """``None`` if ``text`` (space-separated tokens, e.g. ``"( [ ] ) ."``) is a sentence, else why not.

    Rules, checked left to right: only the symbols ``( ) [ ] .``; a closer must close the most
    recent unclosed opener of its own kind; nesting at most ``max_depth``; at most ``max_pairs``
    pairs; the sentence ends with one ``.`` when nothing is open, and is not empty.
    """
    tokens = text.split()
    stack: list[tuple[str, int]] = []
    pairs = 0
    for i, tok in enumerate(tokens):
        if tok in ("(", "["):
            stack.append((tok, i))
            pairs += 1
            if max_depth is not None and len(stack) > max_depth:
                return f"nested {len(stack)} deep at position {i}, more than max_depth = {max_depth}"
            if max_pairs is not None and pairs > max_pairs:
                return f"more than max_pairs = {max_pairs} pairs"
        elif tok in _PAIRS:
            if not stack:
                return f"'{tok}' at position {i} closes nothing"
            opener, j = stack.pop()
            if opener != _PAIRS[tok]:
                return f"'{tok}' at position {i} closes '{opener}' from position {j}"
        elif tok == ".":
            if stack:
                opener, j = stack[-1]
                return f"'.' at position {i} while '{opener}' from position {j} is still open"
            if i == 0:
                return "empty sentence"
            if i != len(tokens) - 1:
                return f"tokens after '.' at position {i}"
            return None
        else:
            return f"unknown token {tok!r} at position {i}"
    return "no '.' at the end" if not stack else f"'{stack[-1][0]}' from position {stack[-1][1]} is never closed"


@dataclass
class BracketTask:
    """The grammar's parameters and its random sentences."""

    max_pairs: int = 8  # at most 8 bracket pairs: 16 symbols
    max_depth: int = 4  # nesting depth limit (the checker enforces it too)

    def __post_init__(self) -> None:
        require_int(self.max_pairs, "max_pairs")
        require_int(self.max_depth, "max_depth")

    @property
    def seq_len(self) -> int:
        """Tokens in a padded sentence: ``<bos>``, ``2 * max_pairs`` brackets, ``.``."""
        return 2 * self.max_pairs + 2

    def sentence(self, rng: random.Random) -> str:
        """A uniform number of pairs in ``[1, max_pairs]``; open or close with probability 1/2 when both are legal."""
        n = rng.randint(1, self.max_pairs)
        out, stack, opens_left = [], [], n
        while opens_left or stack:
            must_close = opens_left == 0 or len(stack) == self.max_depth
            if stack and (must_close or rng.random() < 0.5):
                out.append(")" if stack.pop() == "(" else "]")
            else:
                opener = rng.choice("([")
                stack.append(opener)
                out.append(opener)
                opens_left -= 1
        return " ".join(out + ["."])

    def encode(self, text: str) -> list[int]:
        """``"( ) ."`` -> ``[BOS, 3, 4, EOS]``."""
        return [BOS] + [_IDS[t] for t in text.split()]

    def decode(self, ids) -> str:
        """Token ids -> text, without ``<bos>``/``<pad>``, cut after the first ``.``."""
        words = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i in (PAD, BOS):
                continue
            words.append(VOCAB[i])
            if i == EOS:
                break
        return " ".join(words)

    def batch(self, batch_size: int, rng: random.Random) -> torch.Tensor:
        """``(B, seq_len)`` encoded sentences, right-padded with ``PAD``."""
        out = torch.full((batch_size, self.seq_len), PAD, dtype=torch.long)
        for b in range(batch_size):
            ids = self.encode(self.sentence(rng))
            out[b, :len(ids)] = torch.tensor(ids)
        return out


def default_model_config(task: BracketTask) -> GPTConfig:
    """A 2-layer, 2-head, 48-wide GPT (~60k parameters) whose context holds one sentence."""
    return GPTConfig(vocab_size=len(VOCAB), context_length=task.seq_len, n_layer=2, n_head=2, n_embd=48)


def train_bracket_model(
    task: BracketTask | None = None,
    config: GPTConfig | None = None,
    *,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    num_threads: int | None = 1,
    progress: bool = True,
) -> tuple[GPT, TrainHistory]:
    """Train a ``GPT`` to predict each next token of fresh random sentences; return it and its history.

    Measured (defaults, one thread, 2026-11-30): 13 s of CPU time for 1000 steps; sampled at
    temperature 1, ~98 % of sentences pass ``check_brackets`` (1 % untrained), at 0.7 all of them.

    Input ``tokens[:, :-1]``, target ``tokens[:, 1:]``; padding targets are ignored (padding only
    follows the sentence, so the causal mask already hides it from real tokens). AdamW with a
    one-cycle schedule. ``num_threads``: torch threads while training (one is fastest for these
    tiny tensors); ``history.seconds`` is the wall-clock time.
    """
    task = BracketTask() if task is None else task
    config = default_model_config(task) if config is None else config
    require_int(steps, "steps")
    require_int(batch_size, "batch_size")
    utils.seed_everything(seed)
    rng = random.Random(seed)
    model = GPT(config)

    def loss_for_step(i: int) -> torch.Tensor:
        tokens = task.batch(batch_size, rng)  # (B, T)
        logits = model(tokens[:, :-1])  # (B, T - 1, V)
        targets = tokens[:, 1:].masked_fill(tokens[:, 1:] == PAD, -100)  # (B, T - 1)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)

    start = time.perf_counter()
    with utils.num_threads(num_threads, name="num_threads"):
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
        losses = run_steps(model, loss_for_step, optimizer, schedule, steps, grad_clip=1.0,
                           progress=progress, desc="bracket GPT")
    return model, TrainHistory(losses=losses, seconds=time.perf_counter() - start)


@dataclass
class SampleReport:
    """Generated sentences and what the rule-checker said about each."""

    sentences: list[str]
    errors: list[str | None]  # None = valid

    @property
    def valid_fraction(self) -> float:
        return sum(e is None for e in self.errors) / len(self.errors)

    @property
    def distinct_fraction(self) -> float:
        """Distinct valid sentences / valid sentences (a model that memorised one sentence scores low)."""
        valid = [s for s, e in zip(self.sentences, self.errors) if e is None]
        return len(set(valid)) / max(1, len(valid))


def sample_sentences(
    model: GPT,
    task: BracketTask,
    num: int = 200,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    window: int | None = None,
    num_threads: int | None = 1,
) -> SampleReport:
    """Generate ``num`` sentences from ``<bos>`` (one batch, KV cache) and check each one.

    ``window``: decode with a ``SlidingWindowCache`` of that many positions, so each token sees
    only the last ``window`` ones -- an opener further back is forgotten, and the rules break.
    """
    require_int(num, "num")
    prompts = torch.full((num, 1), BOS, dtype=torch.long)  # (B, 1)
    cache = "static" if window is None else model.new_cache("sliding", num, window=require_int(window, "window"))
    with utils.num_threads(num_threads, name="num_threads"):
        out = generate(model, prompts, task.seq_len - 1, temperature=temperature, top_k=top_k, top_p=top_p,
                       seed=seed, cache=cache)  # (B, seq_len)
    sentences = [task.decode(row) for row in out]
    errors = [check_brackets(s, task.max_depth, task.max_pairs) for s in sentences]
    return SampleReport(sentences, errors)


# --------------------------------------------------------------------------- chapter helpers


def left_pad(prompts: list[list[int]], pad: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths -> ``idx (B, T_max)`` left-padded with ``pad``, ``mask (B, T_max)``.

    ``mask`` is 1 at real tokens and 0 at padding: what ``attn_course.decoding.generate`` takes as
    ``attention_mask``. Left, not right: every row's last column is then its newest token, so
    one new column per step extends every row.
    """
    if not prompts or any(not isinstance(p, (list, tuple)) or not p for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
    T = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), T), pad, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)  # (B, T)
    for b, p in enumerate(prompts):
        idx[b, T - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[b, T - len(p):] = 1
    return idx, mask


def plot_sampling_distributions(logits: torch.Tensor, settings: dict[str, dict], vocab=VOCAB,
                                valid: set[str] | None = None):
    """One bar chart per sampling setting: the distribution ``sampling_distribution`` draws from.

    ``logits (V,)``; ``settings`` maps a panel title to keyword arguments of
    ``sampling_distribution`` (``temperature``, ``top_k``, ``top_p``). Tokens in ``valid`` are
    drawn in colour, the others grey. Returns ``(figure, {title: probabilities (V,)})``.
    """
    import matplotlib.pyplot as plt

    if logits.dim() != 1 or logits.shape[0] != len(vocab):
        raise ValueError(f"logits must be ({len(vocab)},) = (V,), one score per token, got {tuple(logits.shape)}")
    if not settings:
        raise ValueError("settings must name at least one sampling setting")
    probs = {title: sampling_distribution(logits, **kw) for title, kw in settings.items()}
    fig, axes = plt.subplots(1, len(settings), figsize=(2.1 * len(settings), 2.9), sharey=True,
                             layout="constrained")
    axes = [axes] if len(settings) == 1 else list(axes)
    colors = ["C0" if valid is None or tok in valid else "0.6" for tok in vocab]
    for ax, (title, p) in zip(axes, probs.items()):
        ax.bar(range(len(vocab)), p.tolist(), color=colors)
        ax.set_xticks(range(len(vocab)), vocab, rotation=90)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("probability of the next token")
    fig.suptitle("What each sampling method draws from (grey: tokens that break a rule)", fontsize=10)
    return fig, probs


@dataclass
class ForwardFlops:
    """FLOPs of one forward pass, as torch's ``FlopCounterMode`` counted them."""

    linear: int  # inside the nn.Linear layers: projections, MLP, output layer
    attention: int  # the attention step between them (scores and weighted sum), on the naive path

    @property
    def total(self) -> int:
        return self.linear + self.attention


@contextmanager
def _naive_attention(model: GPT):
    """Run every attention layer through the package's own ``scaled_dot_product_attention``
    (plain matrix products every torch version counts), then restore each layer's setting."""
    layers = [m for m in model.modules() if isinstance(m, GroupedQueryAttention)]
    before = [m.naive for m in layers]
    try:
        for m in layers:
            m.naive = True
        yield
    finally:
        for m, was in zip(layers, before):
            m.naive = was


def forward_flops(model: GPT, idx: torch.Tensor, cache=None) -> ForwardFlops:
    """FLOPs of one forward pass of ``model`` on ``idx (B, T)`` (``last_only``), counted by torch.

    ``torch.utils.flop_counter.FlopCounterMode`` counts the matrix products it sees. Whether it
    counts torch's fused attention kernel depends on the torch version and the kernel chosen, so
    the count is taken on the naive attention path (the package's ``scaled_dot_product_attention``:
    two plain batched matrix products per layer), and each ``nn.Linear`` and each attention layer
    reads the counter before and after it runs: the Linear layers' FLOPs and the attention step's
    are then known apart, whatever else torch counts. The naive path computes every score of the
    ``T x S`` matrix, the masked ones too: ``2 * 2 T S D`` FLOPs per layer. ``cache`` is updated.
    """
    from torch.utils.flop_counter import FlopCounterMode

    watched = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, GroupedQueryAttention))]
    flops = {id(m): 0 for m in watched}  # FLOPs counted while each module ran (its children's too)
    with ExitStack() as stack:
        counter = stack.enter_context(FlopCounterMode(display=False))
        stack.enter_context(torch.no_grad())
        stack.enter_context(_naive_attention(model))
        for m in watched:
            start = {}
            handles = (m.register_forward_pre_hook(lambda mod, args, s=start: s.update(n=counter.get_total_flops())),
                       m.register_forward_hook(lambda mod, args, out, s=start: flops.update(
                           {id(mod): flops[id(mod)] + counter.get_total_flops() - s["n"]})))
            for h in handles:
                stack.callback(h.remove)
        model(idx, cache, last_only=True)
    linear = sum(flops[id(m)] for m in watched if isinstance(m, torch.nn.Linear))
    # an attention layer's count holds its own qkv and out projections: keep what lies between them
    attention = sum(flops[id(m)] - sum(flops[id(c)] for c in m.modules() if isinstance(c, torch.nn.Linear))
                    for m in watched if isinstance(m, GroupedQueryAttention))
    return ForwardFlops(linear=linear, attention=attention)


def plot_temperature(fig, logits: torch.Tensor, temperature: float, *, top_p: float = 0.9, vocab=VOCAB,
                     valid: set[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame of a temperature slider, drawn on the empty figure ``fig``: two bar charts, the
    distribution at ``temperature`` and the same after nucleus filtering with ``top_p``.

    ``logits (V,)``; tokens in ``valid`` in colour, the others grey. Returns both distributions ``(V,)``.
    """
    if logits.dim() != 1 or logits.shape[0] != len(vocab):
        raise ValueError(f"logits must be ({len(vocab)},) = (V,), one score per token, got {tuple(logits.shape)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    shaped = sampling_distribution(logits, temperature=temperature)  # (V,)
    nucleus = sampling_distribution(logits, temperature=temperature, top_p=top_p)  # (V,)
    colors = ["C0" if valid is None or tok in valid else "0.6" for tok in vocab]
    axes = fig.subplots(1, 2, sharey=True)
    for ax, p, title in ((axes[0], shaped, f"T = {temperature:g}"),
                         (axes[1], nucleus, f"T = {temperature:g}, then top-p {top_p:g}: {int((nucleus > 0).sum())} kept")):
        ax.bar(range(len(vocab)), p.tolist(), color=colors)
        ax.set_xticks(range(len(vocab)), vocab, rotation=90)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("probability of the next token")
    return shaped, nucleus


def plot_work_per_token(config: GPTConfig, lengths, ax=None):
    """Multiply-adds (``generation_macs``) to produce the token after ``t`` tokens, with and without a cache."""
    from attn_course.plotting import finish_axes, new_axes

    lengths = [require_int(t, "lengths") for t in lengths]
    ax = new_axes(ax)
    for cached, label in ((False, "no cache: recompute all t tokens"), (True, "KV cache: one new token")):
        ax.plot(lengths, [generation_macs(t, config, cached) for t in lengths], marker=".", label=label)
    return finish_axes(ax, xlabel="tokens so far, t", ylabel="multiply-adds for the next token",
                       title="Work to produce one token")
