"""Part VI lab (smaller caches): bytes per token by scheme, and what quantising or evicting costs a trained model.

* ``bytes_table``          bytes per token for real model shapes (``kv_cache.PUBLISHED_SHAPES``,
                           ``mla.MLA_SHAPES``): MHA / GQA / MQA in float16, the cache in int8 and
                           in int4 (KIVI), and DeepSeek-V2's latent cache beside its MHA equivalent.
* ``train_stream_lm``      a small GPT trained with full attention on the bracket stream of
                           ``labs.draft_and_verify`` (``<bos>`` first), a few CPU seconds.
* ``heldout_batch``        held-out sequences of the stream, ``<bos>`` first.
* ``teacher_forced``       feed a batch one token at a time through a cache; the logits at every step.
* ``cache_quality``        logits error, next-token agreement and perplexity of each cache against
                           the float32 cache.
* ``layer_keys``           the keys and values a model caches in one layer, for a batch.
* ``group_errors``         int4 error of keys and values for per-channel and per-token groups.
* ``windowed_perplexity``  perplexity beyond the window: full cache, window only, sinks + window.
* ``attention_on_first``   how much attention each head puts on the first positions (is there a sink?).
* ``recall_batch``, ``train_recall_lm``, ``train_recall_seeds``   a language where most tokens need no memory, and a GPT
                           trained on it: its heads park their attention on ``<bos>`` (a sink).
* ``latent_gpt``, ``compare_attention_caches``   GPTs whose attention is MHA, MQA or MLA (a latent
                           cache), trained alike: held-out loss against cache numbers per token.
* ``compression_headline`` the chapter's headline for ``benchmarks/serving.py``: bytes per token by
                           scheme (Llama-3-8B, DeepSeek-V2) and the int8 / int4 caches' quality.
* ``plot_group_size``      the slider's frame: int4 bytes per token and error against the group size.
* ``draw_latent_attention``, ``draw_quant_groups``, ``draw_sink_cache``, ``ALT``   the diagrams.

Shapes: token batches ``(B, T)``; logits ``(B, T - 1, V)``; keys ``(B, H_kv, T, d)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from attn_course.attention_sinks import SinkCache
from attn_course.diagrams import COLORS, INK, MUTED, arrow, box, canvas, label, rect
from attn_course.gpt import GPT, GPTConfig
from attn_course.kv_cache import PUBLISHED_SHAPES, DynamicCache, KVCache, SlidingWindowCache, kv_cache_bytes
from attn_course.kv_quant import QuantizedCache, dequantize_groups, quantize_groups, quantized_bytes_per_token
from attn_course.labs.bracket_language import BOS
from attn_course.labs.draft_and_verify import bracket_stream, target_config, train_stream_model
from attn_course.labs.training import TrainHistory, run_steps
from attn_course.mla import MLA_SHAPES, MultiHeadLatentAttention

__all__ = [
    "ALT",
    "bytes_table",
    "train_stream_lm",
    "heldout_batch",
    "teacher_forced",
    "cache_quality",
    "layer_keys",
    "group_errors",
    "windowed_perplexity",
    "attention_on_first",
    "latent_gpt",
    "compare_attention_caches",
    "compression_headline",
    "RECALL_VOCAB",
    "recall_batch",
    "recall_config",
    "train_recall_lm",
    "train_recall_seeds",
    "plot_group_size",
    "draw_latent_attention",
    "draw_quant_groups",
    "draw_sink_cache",
]

ALT = {
    "draw_latent_attention": (
        "Multi-head latent attention. A token's hidden state x is projected down to a small latent c_kv "
        "(the only thing cached, with one small rotary key k_rope shared by all heads). Explicit form: the "
        "latent is projected up by W_uk and W_uv into every head's keys and values. Absorbed form: W_uk is "
        "folded into each head's query, which then scores the cached latents directly, and W_uv is folded "
        "into the output projection, so keys and values are never rebuilt."
    ),
    "draw_quant_groups": (
        "Two grids of tokens (rows) by channels (columns). Keys, per channel: a group is one channel over G "
        "consecutive tokens (a vertical strip), so an outlier channel gets its own range. Values, per token: a "
        "group is G channels of one token (a horizontal strip). The newest tokens that do not yet fill a key "
        "group stay in full precision (the residual)."
    ),
    "draw_sink_cache": (
        "A row of token positions. A sliding window keeps only the last W positions; the first tokens, which "
        "a model trained with full attention uses as attention sinks, are evicted. The sink cache keeps the "
        "first few positions forever and the last W, evicting only the middle."
    ),
    "plot_group_size": (
        "Left: int4 bytes per token for Llama-3-8B against the group size G (the scales and zero points cost "
        "less with larger groups), with float16 and int8 for reference. Right: the int4 error of the model's "
        "keys and values against G."
    ),
}


# --------------------------------------------------------------------------- bytes


def bytes_table(group_size: int = 128) -> list[dict]:
    """Bytes per token (all layers, K and V, 16-bit numbers unless quantised) for each published shape.

    For every ``PUBLISHED_SHAPES`` model: ``mha`` (one K/V head per query head), ``gqa`` (its own
    K/V heads), ``mqa`` (one), ``int8`` and ``int4`` (its own K/V heads, quantised). For
    DeepSeek-V2 (``MLA_SHAPES``): ``mla`` and the ``mha`` its 128 heads would need.
    """
    rows = []
    for key, s in PUBLISHED_SHAPES.items():
        per = {h: kv_cache_bytes(s.num_layers, h, s.head_dim, tokens=1) for h in (s.num_heads, s.num_kv_heads, 1)}
        rows.append({"key": key, "name": s.name, "mha": per[s.num_heads], "gqa": per[s.num_kv_heads], "mqa": per[1],
                     "int8": quantized_bytes_per_token(s.num_layers, s.num_kv_heads, s.head_dim, "int8"),
                     "int4": quantized_bytes_per_token(s.num_layers, s.num_kv_heads, s.head_dim, "int4",
                                                       group_size=min(group_size, s.head_dim)),
                     "mla": None})
    for key, s in MLA_SHAPES.items():
        rows.append({"key": key, "name": s.name, "mha": kv_cache_bytes(s.num_layers, s.num_heads, s.head_dim, 1),
                     "gqa": None, "mqa": kv_cache_bytes(s.num_layers, 1, s.head_dim, 1), "int8": None, "int4": None,
                     "mla": s.bytes_per_token()})
    return rows


# --------------------------------------------------------------------------- a model and its caches


def train_stream_lm(context: int = 64, steps: int = 200, seed: int = 0, progress: bool = True) -> tuple[GPT, TrainHistory]:
    """A 2-layer GPT (``draft_and_verify.target_config``) trained with full attention on the bracket stream.

    Windows start at random places of the stream; their first token is replaced by ``<bos>``, so
    every training sequence, like every test sequence, starts with it.
    """
    torch.manual_seed(seed)
    model = GPT(target_config(context))
    history = train_stream_model(model, bracket_stream(60_000, seed=seed), steps, seed=seed, progress=progress,
                                 desc="full-attention GPT", bos_first=True)
    return model.eval(), history


def heldout_batch(batch: int = 32, length: int = 64, seed: int = 1) -> torch.Tensor:
    """``(batch, length)`` sequences of a stream the model never saw, each starting with ``<bos>``."""
    data = bracket_stream(batch * length + 1, seed=seed + 20_000)
    x = data[1:1 + batch * length].view(batch, length).clone()
    x[:, 0] = BOS
    return x


def teacher_forced(model: GPT, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Feed ``tokens (B, T)`` one at a time through ``cache``: logits ``(B, T - 1, V)`` for positions 1..T-1."""
    out = []
    with torch.no_grad():
        for t in range(tokens.shape[1] - 1):
            out.append(model(tokens[:, t:t + 1], cache)[:, -1])  # (B, V)
    return torch.stack(out, dim=1)


def _perplexity(logits: torch.Tensor, tokens: torch.Tensor, start: int = 0, scored: torch.Tensor | None = None) -> float:
    """exp(mean NLL) of the targets ``tokens[:, 1 + start:]`` (only where ``scored (B, T - 1)`` is True, if given)."""
    nll = F.cross_entropy(logits[:, start:].flatten(0, 1), tokens[:, 1 + start:].flatten(), reduction="none")
    if scored is not None:
        nll = nll[scored[:, start:].flatten()]
    return float(nll.mean().exp())


def cache_quality(model: GPT, tokens: torch.Tensor, caches: dict[str, Callable[[], KVCache]]) -> dict[str, dict]:
    """For each named cache factory: logits error, next-token agreement and perplexity against float32.

    ``result[name]``: ``max_logit_error``, ``mean_logit_error``, ``agreement`` (arg-max equal to the
    float32 cache's, over all positions), ``perplexity``; ``result["float32"]`` is the reference.
    """
    cfg = model.config
    ref = teacher_forced(model, tokens, DynamicCache(cfg.n_layer, cfg.n_kv_head, cfg.head_dim))
    out = {"float32": {"max_logit_error": 0.0, "mean_logit_error": 0.0, "agreement": 1.0,
                       "perplexity": _perplexity(ref, tokens)}}
    for name, make in caches.items():
        cache = make()
        logits = teacher_forced(model, tokens, cache)
        diff = (logits - ref).abs()
        out[name] = {"max_logit_error": float(diff.max()), "mean_logit_error": float(diff.mean()),
                     "agreement": float((logits.argmax(-1) == ref.argmax(-1)).float().mean()),
                     "perplexity": _perplexity(logits, tokens)}
    return out


def layer_keys(model: GPT, tokens: torch.Tensor, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values ``(B, H_kv, T, d)`` that ``model`` caches in ``layer`` for ``tokens``."""
    cfg = model.config
    cache = DynamicCache(cfg.n_layer, cfg.n_kv_head, cfg.head_dim)
    with torch.no_grad():
        model(tokens, cache)
    return cache.keys[layer], cache.values[layer]


def group_errors(keys: torch.Tensor, values: torch.Tensor, group_size: int) -> dict[str, float]:
    """Relative int4 error ``|x - x~| / |x|`` (Frobenius) of keys and values, per channel and per token.

    Per channel: groups of ``group_size`` tokens along axis 2; per token: ``group_size`` channels
    along axis 3. ``keys`` and ``values`` ``(B, H_kv, T, d)``; ``T`` and ``d`` multiples of the group.
    """
    out = {}
    for name, x in (("keys", keys), ("values", values)):
        for how, dim in (("per_channel", 2), ("per_token", 3)):
            err = dequantize_groups(quantize_groups(x, 4, group_size, dim=dim)) - x
            out[f"{name}_{how}"] = float(err.norm() / x.norm())
    return out


def windowed_perplexity(model: GPT, tokens: torch.Tensor, window: int, num_sinks: int = 4,
                        start: int | None = None, scored: torch.Tensor | None = None) -> dict[str, float]:
    """Perplexity of the positions beyond ``window + num_sinks`` with three caches of the same budget or more.

    ``full``: every position; ``window``: a ``SlidingWindowCache`` of ``window + num_sinks``
    positions; ``sinks``: a ``SinkCache`` of ``num_sinks`` first positions and the last ``window``.
    ``scored (B, T - 1)``: count only the targets where it is True.
    """
    cfg = model.config
    shape = (cfg.n_layer, cfg.n_kv_head, cfg.head_dim)
    start = window + num_sinks if start is None else start
    caches = {"full": DynamicCache(*shape),
              "window": SlidingWindowCache(*shape, batch_size=tokens.shape[0], window=window + num_sinks),
              "sinks": SinkCache(*shape, num_sinks=num_sinks, window=window)}
    return {name: _perplexity(teacher_forced(model, tokens, c), tokens, start, scored) for name, c in caches.items()}


# --------------------------------------------------------------------------- a language that needs a sink

RECALL_VOCAB = ("<bos>", "?", "a", "b", "c", "d", "e", "f", "g", "h")
"""Token ids of the recall language: ``0 <bos>``, ``1 ?``, letters ``2 .. 9``."""


def recall_batch(batch: int, length: int = 64, p_query: float = 0.1, seed: int | torch.Generator = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of the recall language and where the answers are: ``(tokens (B, T), answer (B, T))``.

    ``<bos>``, then uniformly random letters; with probability ``p_query`` a position (from 2 on,
    never two in a row) is ``?``, and the token after ``?`` is the letter at position 1. Every
    other token is unpredictable: a head that reads the past has nothing to do there.
    """
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    x = torch.randint(2, len(RECALL_VOCAB), (batch, length), generator=g)
    query = torch.rand(batch, length, generator=g) < p_query
    query[:, :2] = False
    query[:, -1] = False
    query[:, 1:] &= ~query[:, :-1].clone()  # no '?' right after a '?'
    x[query] = 1
    answer = torch.zeros_like(query)
    answer[:, 1:] = query[:, :-1]
    x = torch.where(answer, x[:, 1:2].expand(-1, length), x)
    x[:, 0] = 0
    return x, answer


def recall_config(length: int = 64) -> GPTConfig:
    """A 1-layer, 2-head GPT, 32 wide, for the recall language."""
    return GPTConfig(vocab_size=len(RECALL_VOCAB), context_length=length, n_layer=1, n_head=2, n_embd=32)


def _train_recall(model: GPT, steps: int, seed: int, progress: bool) -> TrainHistory:
    length = model.config.context_length
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    if steps >= 20:
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=steps, pct_start=0.1)
    else:  # too few steps for a warm-up phase
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    g = torch.Generator().manual_seed(seed)

    def loss_for_step(i: int) -> torch.Tensor:
        x, _ = recall_batch(16, length, seed=g)  # a fresh batch every step
        return F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())

    begin = time.perf_counter()
    losses = run_steps(model, loss_for_step, optimizer, schedule, steps, grad_clip=1.0, progress=progress,
                       desc=f"recall GPT, seed {seed}", postfix_every=20)
    return TrainHistory(losses=losses, seconds=time.perf_counter() - begin)


def train_recall_lm(steps: int = 200, length: int = 64, seed: int = 0, progress: bool = True) -> tuple[GPT, TrainHistory]:
    """A ``recall_config`` GPT trained with full attention on fresh recall batches (seeded by ``seed``)."""
    torch.manual_seed(seed)
    model = GPT(recall_config(length))
    history = _train_recall(model, steps, seed, progress)
    return model.eval(), history


def train_recall_seeds(seeds, steps: int = 200, length: int = 64, workers: int = 2,
                       progress: bool = True) -> dict[int, GPT]:
    """``train_recall_lm`` for each seed, ``workers`` at a time (``labs.training.train_side_by_side``); same models."""
    from functools import partial

    from attn_course.labs.training import train_side_by_side

    models = {}
    for seed in seeds:
        torch.manual_seed(seed)
        models[seed] = GPT(recall_config(length))
    jobs = {seed: (m, partial(_train_recall, m, steps, seed, progress)) for seed, m in models.items()}
    train_side_by_side(jobs, workers=workers, progress=progress)
    return {seed: m.eval() for seed, m in models.items()}


# --------------------------------------------------------------------------- figures


def plot_group_size(fig: Figure, group_size: float, errors: dict[int, dict[str, float]]) -> Figure:
    """Slider frame: Llama-3-8B's int4 bytes per token against G, and the measured int4 errors against G."""
    G = int(group_size)
    fig.clear()
    left, right = fig.subplots(1, 2)
    s = PUBLISHED_SHAPES["llama3-8b"]
    sizes = sorted(errors)
    grid = [g for g in (4, 8, 16, 32, 64, 128) if g <= s.head_dim]
    kib = [quantized_bytes_per_token(s.num_layers, s.num_kv_heads, s.head_dim, "int4", g) / 1024 for g in grid]
    left.plot(grid, kib, "o-", color=COLORS["value"], label="int4 (KIVI)")
    left.axhline(kv_cache_bytes(s.num_layers, s.num_kv_heads, s.head_dim, 1) / 1024, color=MUTED, ls=":",
                 label="float16")
    left.axhline(quantized_bytes_per_token(s.num_layers, s.num_kv_heads, s.head_dim, "int8") / 1024,
                 color=COLORS["key"], ls="--", label="int8")
    g_here = min(max(G, grid[0]), grid[-1])
    left.plot([g_here], [quantized_bytes_per_token(s.num_layers, s.num_kv_heads, s.head_dim, "int4", g_here) / 1024],
              "o", ms=12, mfc="none", mec=COLORS["context"], mew=2)
    left.set(xscale="log", xlabel="group size G", ylabel="KiB per token", ylim=(0, 140),
             title="Llama-3-8B: cache per token")
    left.set_xticks(grid, [str(g) for g in grid])
    left.minorticks_off()
    left.legend(fontsize=8)
    for key, color, name in (("keys_per_channel", COLORS["key"], "keys, per channel"),
                             ("values_per_token", COLORS["value"], "values, per token"),
                             ("keys_per_token", COLORS["key"], "keys, per token")):
        right.plot(sizes, [errors[g][key] for g in sizes], "o-" if "channel" in key or "values" in key else "s:",
                   color=color, label=name)
    right.axvline(G, color=COLORS["context"], lw=2)
    right.set(xscale="log", xlabel="group size G", ylabel="relative error |x - x~| / |x|",
              title=f"int4 error of our model's cache (G = {G})")
    right.set_xticks(sizes, [str(g) for g in sizes])
    right.minorticks_off()
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    return fig


def draw_latent_attention() -> Figure:
    """MLA: x -> c_kv (cached) -> up-projections (explicit) or absorbed into the query and the output."""
    fig, ax = canvas(10.4, 4.4, ALT["draw_latent_attention"])
    box(ax, 0.8, 2.2, 0.9, 0.5, "x (D)", COLORS["state"])
    box(ax, 2.6, 2.9, 1.4, 0.55, "c_kv (d_c)\ncached", COLORS["context"], lw=2.2)
    box(ax, 2.6, 1.5, 1.4, 0.55, "k_rope (d_r)\ncached, shared", COLORS["key"], lw=2.2)
    arrow(ax, (1.25, 2.3), (1.9, 2.85))
    arrow(ax, (1.25, 2.1), (1.9, 1.55))
    label(ax, 1.5, 2.9, "W_dkv", size=8)
    label(ax, 1.5, 1.5, "W_kr, RoPE", size=8)
    # explicit
    label(ax, 5.2, 4.15, "explicit: rebuild every head's K and V", color=INK, size=10)
    for i, (name, color) in enumerate((("K: H x d", COLORS["key"]), ("V: H x d", COLORS["value"]))):
        box(ax, 5.0 + 1.5 * i, 3.45, 1.2, 0.45, name, color)
        arrow(ax, (3.3, 3.0), (5.0 + 1.5 * i, 3.225), MUTED, lw=1.0)
    label(ax, 5.75, 2.95, "W_uk, W_uv: d_c -> H d, for every cached token, every step", size=8)
    # absorbed
    label(ax, 5.2, 2.2, "absorbed: fold W_uk into q, W_uv into W_o", color=INK, size=10)
    box(ax, 4.4, 1.55, 1.2, 0.5, "q W_uk\n(H x d_c)", COLORS["query"])
    box(ax, 6.55, 1.55, 2.3, 0.5, "P = softmax(q W_uk c^T + rope)\nP c  (H x d_c)", COLORS["weights"])
    box(ax, 8.95, 1.55, 1.5, 0.5, "(P c) W_uv W_o", COLORS["state"])
    arrow(ax, (5.0, 1.55), (5.4, 1.55))
    arrow(ax, (7.7, 1.55), (8.2, 1.55))
    arrow(ax, (3.3, 2.75), (6.55, 1.8), COLORS["context"], lw=1.0, rad=0.1)
    arrow(ax, (3.3, 1.4), (5.4, 1.4), COLORS["key"], lw=1.0)
    label(ax, 5.2, 0.55, "per token cached: d_c + d_r numbers (DeepSeek-V2: 512 + 64 = 576; MHA: 2 H d = 32,768)",
          size=9, color=INK)
    return fig


def draw_quant_groups(tokens: int = 8, channels: int = 8, group: int = 4) -> Figure:
    """Key groups (channel strips over G tokens) and value groups (G channels of a token), residual in full precision."""
    fig, ax = canvas(10.0, 4.6, ALT["draw_quant_groups"], y0=-0.4)
    c = 0.32
    for panel, (title, color, x0) in enumerate((("keys: per channel, G tokens a group", COLORS["key"], 0.9),
                                                ("values: per token, G channels a group", COLORS["value"], 5.6))):
        label(ax, x0 + channels * c / 2, 3.9, title, color=INK, size=10)
        for t in range(tokens + 2):
            for ch in range(channels):
                residual = t >= tokens
                if residual:
                    shade = 0.95
                elif panel == 0:
                    shade = 0.55 if (t // group + ch) % 2 else 0.8
                else:
                    shade = 0.55 if (ch // group + t) % 2 else 0.8
                rect(ax, x0 + ch * c, 3.4 - (t + 1) * c, c, c, MUTED if residual else color, amount=shade,
                     hatch="//" if residual and panel == 0 else None)
        label(ax, x0 - 0.15, 3.4 - (tokens / 2) * c, "tokens", ha="right", size=8)
        label(ax, x0 + channels * c / 2, 3.55, "channels (d)", size=8)
    label(ax, 0.9 + channels * c + 0.1, 3.4 - (tokens + 1) * c, "residual: < G newest tokens\nkept in full precision",
          ha="left", size=8)
    label(ax, 5.0, -0.2, "each shade block = one group: G numbers share a scale and a zero point (int4: 16 levels)",
          size=9, color=INK)
    return fig


def draw_sink_cache(length: int = 20, window: int = 6, sinks: int = 2) -> Figure:
    """Which positions a sliding window and a sink cache keep when the next token is ``length``."""
    fig, ax = canvas(11.0, 2.6, ALT["draw_sink_cache"])
    w = 0.4
    for row, (name, keep) in enumerate((("sliding window", lambda p: p >= length - window - sinks),
                                        ("sinks + window", lambda p: p < sinks or p >= length - window))):
        y = 1.7 - row * 0.9
        label(ax, 1.3, y + w / 2, name, ha="right", color=INK, size=10)
        for p in range(length):
            kept = keep(p)
            color = COLORS["context"] if kept and p < sinks else (COLORS["key"] if kept else MUTED)
            rect(ax, 1.5 + p * w, y, w * 0.92, w, color, amount=0.55 if kept else 0.92)
            if not kept:
                label(ax, 1.5 + p * w + w * 0.46, y + w / 2, "x", size=8)
        label(ax, 1.5 + length * w + 0.1, y + w / 2, f"{window + sinks} kept", ha="left", size=9)
    for p in (0, sinks, length - window, length - 1):
        label(ax, 1.5 + p * w + w * 0.46, 0.5, str(p), size=8)
    label(ax, 1.5 + sinks * w / 2, 0.25, "sinks", size=8, color=COLORS["context"])
    label(ax, 1.5 + (length - window / 2) * w, 0.25, f"window W = {window}", size=8, color=COLORS["key"])
    label(ax, 1.5 + length * w / 2, 2.45, f"the next token is position {length}: which keys are still cached?",
          color=INK, size=10)
    return fig


def attention_on_first(model: GPT, tokens: torch.Tensor, first: int = 1, from_position: int = 16) -> torch.Tensor:
    """Mean attention weight ``(n_layer, n_head)`` that queries at ``from_position`` and later put on positions ``< first``.

    Recomputed from each block's input (a forward hook) with full causal attention, as trained.
    """
    inputs = {}
    hooks = [block.attn.register_forward_hook(lambda mod, args, out, i=i: inputs.__setitem__(i, args[0]))
             for i, block in enumerate(model.h)]
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for h in hooks:
            h.remove()
    return _first_weights(model, inputs, tokens.shape[1], first, from_position)


@torch.no_grad()
def _first_weights(model: GPT, inputs: dict, T: int, first: int, from_position: int) -> torch.Tensor:
    weights = []
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i, block in enumerate(model.h):
        attn = block.attn
        H, H_kv, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
        q, k, _ = attn.qkv(inputs[i]).split([H * d, H_kv * d, H_kv * d], dim=-1)
        q = q.view(*q.shape[:2], H, d).transpose(1, 2)  # (B, H, T, d)
        k = k.view(*k.shape[:2], H_kv, d).transpose(1, 2).repeat_interleave(H // H_kv, dim=1)
        p = torch.softmax((q @ k.transpose(-1, -2) / d ** 0.5).masked_fill(~causal, float("-inf")), dim=-1)
        weights.append(p[:, :, from_position:, :first].sum(-1).mean((0, 2)))  # (H,)
    return torch.stack(weights).detach()


# --------------------------------------------------------------------------- MLA in a GPT, for training


class _LatentAttention(nn.Module):
    """``MultiHeadLatentAttention`` behind the GPT block's attention call (training: causal, no cache)."""

    def __init__(self, d_model: int, n_head: int, latent_dim: int) -> None:
        super().__init__()
        self.mla = MultiHeadLatentAttention(d_model, n_head, d_model // n_head, latent_dim, rope_dim=0)

    def forward(self, x, mask=None, is_causal=False, cache=None, layer=0):
        if cache is not None or mask is not None:
            raise ValueError("this adapter trains and scores full sequences; decode with MultiHeadLatentAttention")
        return self.mla(x)


def latent_gpt(config: GPTConfig, latent_dim: int) -> GPT:
    """A ``GPT`` whose every attention layer is MLA with a latent of ``latent_dim`` (no rotary part:
    GPT adds learned positions to its inputs)."""
    model = GPT(config)
    for block in model.h:
        block.attn = _LatentAttention(config.n_embd, config.n_head, latent_dim)
    return model


def compare_attention_caches(steps: int = 150, context: int = 32, seed: int = 0, workers: int = 2,
                             progress: bool = True) -> dict[str, dict]:
    """Train MHA, MQA and MLA variants of ``draft_and_verify.target_config`` alike; held-out loss and cache size.

    ``result[name]``: ``cache_numbers`` (per token and layer), ``parameters``, ``loss`` (held-out,
    64 windows of the bracket stream the models never saw).
    """
    from functools import partial

    from attn_course.labs.training import train_side_by_side

    base = target_config(context)  # 2 layers, 2 heads of 16
    d = base.head_dim
    torch.manual_seed(seed)
    variants = {
        "MHA (2 KV heads)": (GPT(base), 2 * base.n_head * d),
        "MQA (1 KV head)": (GPT(GPTConfig(**{**base.__dict__, "n_kv_head": 1})), 2 * d),
        "MLA, d_c = 16": (latent_gpt(base, 16), 16),
        "MLA, d_c = 8": (latent_gpt(base, 8), 8),
    }
    data = bracket_stream(60_000, seed=seed)
    jobs = {name: (m, partial(train_stream_model, m, data, steps, seed=seed, progress=progress, desc=name))
            for name, (m, _) in variants.items()}
    train_side_by_side(jobs, workers=workers, progress=progress)
    test = bracket_stream(64 * (context + 1) + 1, seed=seed + 30_000)[1:].view(64, context + 1)
    out = {}
    for name, (m, numbers) in variants.items():
        m.eval()
        with torch.no_grad():
            loss = F.cross_entropy(m(test[:, :-1]).flatten(0, 1), test[:, 1:].flatten())
        out[name] = {"cache_numbers": numbers, "parameters": m.num_parameters(), "loss": float(loss)}
    return out


def compression_headline(steps: int = 150, seed: int = 0, progress: bool = False) -> dict:
    """Bytes per token by scheme for real shapes, and what int8 / int4 (G = 16) caches cost a trained model.

    Returns ``llama3_8b_bytes`` (``{"float16", "int8", "int4"}``, int4 with groups of 128),
    ``deepseek_v2_bytes`` (``{"mha", "mla"}``), and for the bracket-stream GPT of ``train_stream_lm``
    decoding 16 held-out sequences: ``agreement`` and ``perplexity_ratio`` (against float32) per scheme.
    """
    rows = {r["key"]: r for r in bytes_table(group_size=128)}
    model, _ = train_stream_lm(context=64, steps=steps, seed=seed, progress=progress)
    cfg = model.config
    shape = (cfg.n_layer, cfg.n_kv_head, cfg.head_dim)
    quality = cache_quality(model, heldout_batch(16, 64), {
        "int8": lambda: QuantizedCache(*shape, scheme="int8"),
        "int4": lambda: QuantizedCache(*shape, scheme="int4", group_size=16),
    })
    ref = quality["float32"]["perplexity"]
    return {
        "llama3_8b_bytes": {"float16": rows["llama3-8b"]["gqa"], "int8": rows["llama3-8b"]["int8"],
                            "int4": rows["llama3-8b"]["int4"]},
        "deepseek_v2_bytes": {"mha": rows["deepseek-v2"]["mha"], "mla": rows["deepseek-v2"]["mla"]},
        "agreement": {k: quality[k]["agreement"] for k in ("int8", "int4")},
        "perplexity_ratio": {k: quality[k]["perplexity"] / ref for k in ("int8", "int4")},
    }
