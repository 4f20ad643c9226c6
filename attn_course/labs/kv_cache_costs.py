"""Chapter 15's experiment (the KV cache and its costs): timings, arithmetic intensity, the roofline.

Measurements the chapter makes, measured in the page that prints them:

* ``time_generation``        tokens/s of ``attn_course.decoding.generate`` with and without a cache,
                             against the number of generated tokens (best of ``repeat`` runs).
* ``time_prefill_decode``    seconds per token of the prompt's one pass vs one decode step;
                             ``decode_seconds_alternated`` compares decode set-ups taking turns.
* ``copy_bandwidth``, ``matmul_flops``   what this machine can move (GB/s) and compute (FLOP/s).
* ``decode_intensity``, ``prefill_intensity``   arithmetic intensity (FLOPs per byte read) of a
                             decode step and of a prefill, from ``generation_macs`` and the bytes
                             of the weights and the cache.
* ``decode_intensity_limit``, ``balance_batch``   where batching decode steps leads: the intensity
                             a very large batch tends to, and the batch that reaches a machine balance.
* ``roofline_points``, ``plot_roofline``   decode and prefill placed under this machine's roofline.
* ``read_bandwidth``, ``thread_speedups``   bytes/s of a plain read; how much a second thread speeds
                             up one large GEMV (a decode step's matrix-vector product) and a GEMM.
* ``weight_bytes``           bytes of a model's weights (what every decode step reads).
* ``plot_tokens_per_second`` the tokens/s figure.

Chapter 16's experiments (smaller caches, paging) are ``attn_course.labs.cache_shrinking``.
Shapes: token batches ``(B, T)``; sizes in bytes unless a name says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from attn_course._validation import require_int
from attn_course.decoding import generate, generation_macs
from attn_course.gpt import GPT, GPTConfig
from attn_course.kv_cache import kv_cache_bytes
from attn_course.utils import best_seconds, num_threads

__all__ = [
    "time_generation",
    "plot_tokens_per_second",
    "time_prefill_decode",
    "decode_seconds_alternated",
    "copy_bandwidth",
    "read_bandwidth",
    "matmul_flops",
    "thread_speedups",
    "weight_bytes",
    "decode_intensity",
    "prefill_intensity",
    "decode_intensity_limit",
    "balance_batch",
    "roofline_points",
    "plot_roofline",
]


# --------------------------------------------------------------------------- time


def time_generation(model: GPT, prompt: torch.Tensor, lengths: Sequence[int],
                    methods: Sequence[str] = ("no cache", "dynamic", "static"),
                    repeat: int = 2, uncached_repeat: int = 1, progress: bool = True) -> dict[str, dict[int, float]]:
    """Tokens/s of greedy ``generate`` for each method and number of new tokens (best of ``repeat``).

    ``methods``: ``"no cache"`` (recompute everything each step) or a cache kind of
    ``attn_course.decoding.generate``. Runs are interleaved length by length, so a change in the
    machine's load hits every method alike. The uncached runs (the slow ones) are the best of
    ``uncached_repeat``. Returns ``{method: {new_tokens: tokens per second}}``.
    """
    lengths = [require_int(n, "lengths") for n in lengths]
    out: dict[str, dict[int, float]] = {m: {} for m in methods}
    generate(model, prompt, 4, cache=None)  # warm-up
    generate(model, prompt, 4)
    jobs = [(n, m) for n in lengths for m in methods]
    for n, method in tqdm(jobs, desc="timing generation", disable=not progress, leave=False):
        cache = None if method == "no cache" else method
        seconds = best_seconds(lambda n=n, cache=cache: generate(model, prompt, n, cache=cache),
                               uncached_repeat if method == "no cache" else repeat, warmup=False)
        out[method][n] = n / seconds
    return out


def plot_tokens_per_second(results: dict[str, dict[int, float]], ax=None, title: str = "Generation speed"):
    """Tokens/s against the number of generated tokens, one line per method."""
    from attn_course.plotting import check_curves, finish_axes, new_axes

    check_curves(results, "results")
    ax = new_axes(ax)
    for method, by_len in results.items():
        ax.plot(list(by_len), list(by_len.values()), marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    return finish_axes(ax, xlabel="tokens generated", ylabel="tokens per second (whole call)", title=title)


def time_prefill_decode(model: GPT, prompt_len: int, new_tokens: int = 16, repeat: int = 3,
                        seed: int = 0, warmup: bool = True) -> tuple[float, float]:
    """Seconds per token of prefill (one pass over ``prompt_len`` tokens) and of a decode step.

    Both best of ``repeat``, after one short untimed generation if ``warmup``. Decode time =
    (generate(prompt, 1 + new_tokens) - generate(prompt, 1)) / new_tokens: only the extra decode steps.
    """
    require_int(prompt_len, "prompt_len")
    require_int(new_tokens, "new_tokens")
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=g)  # (1, T)
    if warmup:
        generate(model, prompt, 2, cache="static")
    prefill = best_seconds(lambda: generate(model, prompt, 1, cache="static"), repeat, warmup=False)
    both = best_seconds(lambda: generate(model, prompt, 1 + new_tokens, cache="static"), repeat, warmup=False)
    return prefill / prompt_len, max(both - prefill, 1e-9) / new_tokens


def decode_seconds_alternated(arms: Mapping[str, tuple[GPT, int]], prompt_len: int, new_tokens: int = 16,
                              rounds: int = 3, repeat: int = 2) -> dict[str, float]:
    """Seconds per decode step of each arm ``{name: (model, threads)}``, best over ``rounds``.

    The arms take turns, round after round (``time_prefill_decode``, best of ``repeat``, with the
    arm's torch threads), so a change in the machine's load hits all of them; each keeps its best.
    """
    best = {name: float("inf") for name in arms}
    for r in range(require_int(rounds, "rounds")):
        for name, (model, threads) in arms.items():
            with num_threads(threads):  # warmed up in the first round only: the arms stay warm
                decode = time_prefill_decode(model, prompt_len, new_tokens, repeat, warmup=r == 0)[1]
            best[name] = min(best[name], decode)
    return best


def copy_bandwidth(mbytes: int = 64, repeat: int = 5) -> float:
    """GB/s of ``dst.copy_(src)`` on ``mbytes`` MB of float32, counting the read and the write."""
    src = torch.randn(require_int(mbytes, "mbytes") * 2**20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_seconds(lambda: dst.copy_(src), repeat) / 1e9  # one warm-up copy first


def read_bandwidth(mbytes: int = 256, repeat: int = 3) -> float:
    """GB/s of summing ``mbytes`` MB of float32 (reads only), with the threads torch has now."""
    x = torch.randn(require_int(mbytes, "mbytes") * 2**20 // 4)
    return x.numel() * 4 / best_seconds(lambda: x.sum(), repeat) / 1e9  # one warm-up pass first


def matmul_flops(n: int = 512, repeat: int = 3) -> float:
    """FLOP/s of an ``n x n`` by ``n x n`` float32 matrix product (``2 n^3`` FLOPs)."""
    a, b = torch.randn(require_int(n, "n"), n), torch.randn(n, n)
    return 2 * n**3 / best_seconds(lambda: a @ b, repeat)  # one warm-up product first


def thread_speedups(threads: int = 2, gemv_mbytes: int = 128, gemm_size: int = 512,
                    repeat: int = 5) -> dict[str, float]:
    """How many times faster ``threads`` threads run one large GEMV and one GEMM than one thread.

    The GEMV is what ``nn.Linear`` runs for one token: ``F.linear(x (1, n), W (n, n))`` with a
    ``gemv_mbytes`` MB float32 weight (larger than the processor's caches, so it streams from
    memory). The GEMM (``gemm_size`` square, compute-bound) is the control: if two threads do not
    speed *it* up, the second core was busy and the GEMV's ratio says nothing about the BLAS.
    The runs alternate between thread counts, so a change in the machine's load hits both.
    Returns ``{"gemv": t_1 / t_threads, "gemm": t_1 / t_threads}`` (best of ``repeat`` each).
    """
    require_int(threads, "threads")
    n = math.isqrt(require_int(gemv_mbytes, "gemv_mbytes") * 2**20 // 4)
    w, x = torch.ones(n, n), torch.ones(1, n)  # (n, n), (1, n): values do not change the time
    a = torch.randn(require_int(gemm_size, "gemm_size"), gemm_size)
    jobs = {"gemv": lambda: torch.nn.functional.linear(x, w), "gemm": lambda: a @ a}
    best = {(name, t): float("inf") for name in jobs for t in (1, threads)}
    for name, fn in jobs.items():
        fn()  # warm-up
        for _ in range(require_int(repeat, "repeat")):
            for t in (1, threads):
                with num_threads(t):
                    best[name, t] = min(best[name, t], best_seconds(fn, 1, warmup=False))
    return {name: best[name, 1] / best[name, threads] for name in jobs}


# --------------------------------------------------------------------------- arithmetic intensity


def weight_bytes(config: GPTConfig, dtype_bytes: int = 4) -> int:
    """Bytes of the weights a forward pass reads: every parameter except the position table
    (one row per token is read), the tied embedding counted once (it is the output layer)."""
    D, N, V = config.n_embd, config.n_layer, config.vocab_size
    kv = config.n_kv_head * config.head_dim
    bias = 1 if config.bias else 0
    per_layer = (D * (D + 2 * kv) + bias * (D + 2 * kv) + D * D + bias * D  # attention projections
                 + 8 * D * D + bias * 5 * D + (2 + 2 * bias) * D)  # MLP, two LayerNorms
    return (N * per_layer + V * D + (1 + bias) * D) * dtype_bytes


def decode_intensity(config: GPTConfig, context: int, batch: int = 1, dtype_bytes: int = 4) -> float:
    """FLOPs per byte read by one decode step: ``batch`` new tokens after ``context`` cached ones.

    FLOPs: ``2 x generation_macs(context + 1, cached)`` per sequence. Bytes: all the weights (read
    once for the whole batch) plus every sequence's cache (``kv_cache_bytes``).
    """
    require_int(batch, "batch")
    flops = 2 * generation_macs(context + 1, config, cached=True) * batch
    cache = kv_cache_bytes(config.n_layer, config.n_kv_head, config.head_dim, context, batch, dtype_bytes)
    return flops / (weight_bytes(config, dtype_bytes) + cache)


def prefill_intensity(config: GPTConfig, prompt_len: int, dtype_bytes: int = 4) -> float:
    """FLOPs per byte of one prefill pass over ``prompt_len`` tokens (weights read once; the
    attention term counted causally, as in ``generation_macs``; one output row)."""
    T = require_int(prompt_len, "prompt_len")
    flops = 2 * generation_macs(T, config, cached=False)
    written = kv_cache_bytes(config.n_layer, config.n_kv_head, config.head_dim, T, 1, dtype_bytes)
    return flops / (weight_bytes(config, dtype_bytes) + written)


def _per_sequence(config: GPTConfig, context: int, dtype_bytes: int) -> tuple[int, int, int]:
    """A decode step's FLOPs per sequence, cache bytes per sequence, and the weights' bytes."""
    flops = 2 * generation_macs(context + 1, config, cached=True)
    cache = kv_cache_bytes(config.n_layer, config.n_kv_head, config.head_dim, context, 1, dtype_bytes)
    return flops, cache, weight_bytes(config, dtype_bytes)


def decode_intensity_limit(config: GPTConfig, context: int, dtype_bytes: int = 4) -> float:
    """What ``decode_intensity`` tends to as the batch grows: FLOPs per sequence / cache bytes per sequence.

    ``batch * F / (W + batch * C)`` -> ``F / C``: the weights' bytes ``W`` are shared by the batch,
    each sequence's cache ``C`` is not.
    """
    flops, cache, _ = _per_sequence(config, require_int(context, "context"), dtype_bytes)
    return flops / cache


def balance_batch(config: GPTConfig, context: int, balance: float, dtype_bytes: int = 4) -> int | None:
    """The smallest batch whose decode steps (``context`` cached tokens each) reach ``balance`` FLOP/byte.

    ``None`` when no batch does: ``decode_intensity_limit`` is below the balance, so decoding stays
    memory-bound however many sequences share a step. Solves ``b F / (W + b C) >= balance``.
    """
    if isinstance(balance, bool) or not isinstance(balance, (int, float)) or not balance > 0:
        raise ValueError(f"balance must be a number of FLOPs per byte > 0, got {balance!r}")
    flops, cache, weights = _per_sequence(config, require_int(context, "context"), dtype_bytes)
    if flops <= balance * cache:
        return None
    b = max(1, math.ceil(balance * weights / (flops - balance * cache)))
    while b > 1 and decode_intensity(config, context, b - 1, dtype_bytes) >= balance:  # float rounding
        b -= 1
    while decode_intensity(config, context, b, dtype_bytes) < balance:
        b += 1
    return b


def roofline_points(config: GPTConfig, contexts: Sequence[int] = (128, 512, 1024),
                    batches: Sequence[int] = (1, 8, 64), prompt_len: int = 512,
                    dtype_bytes: int = 4) -> dict[str, dict[str, float]]:
    """Arithmetic intensities to place under a roofline: ``{series: {point label: FLOP/byte}}``.

    One series per context length (decode steps at each batch size), and one for a prefill of
    ``prompt_len`` tokens.
    """
    series = {f"decode, {c} cached": {f"batch {b}": decode_intensity(config, c, b, dtype_bytes) for b in batches}
              for c in contexts}
    series["prefill"] = {f"{prompt_len}-token prompt": prefill_intensity(config, prompt_len, dtype_bytes)}
    return series


def plot_roofline(peak_flops: float, bandwidth: float, series: dict[str, dict[str, float]], ax=None,
                  title: str = "Roofline of this machine"):
    """Attainable FLOP/s ``min(peak_flops, intensity * bandwidth)`` against arithmetic intensity.

    ``peak_flops`` (FLOP/s) and ``bandwidth`` (bytes/s) are measurements; their ratio, the machine
    balance, is the ridge where the two roofs meet. ``series`` (``roofline_points``) are placed on
    the roof at their intensity, a colour per series and a marker per point label.
    Returns ``(ax, {series: {label: attainable FLOP/s}})``.
    """
    from attn_course.plotting import finish_axes, new_axes

    for name, value in (("peak_flops", peak_flops), ("bandwidth", bandwidth)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not series or any(not points for points in series.values()):
        raise ValueError("series must map each name to a non-empty {label: intensity} dict")
    balance = peak_flops / bandwidth
    xs = [x for points in series.values() for x in points.values()] + [balance]
    lo, hi = min(xs) / 3, max(xs) * 3
    grid = [lo * (hi / lo) ** (i / 199) for i in range(200)]
    ax = new_axes(ax)
    ax.plot(grid, [min(peak_flops, x * bandwidth) for x in grid], color="0.2", lw=2, label="attainable FLOP/s")
    ax.axvline(balance, color="0.5", ls="--", lw=1, label=f"machine balance {balance:.1f} FLOP/byte")
    markers = "os^Dv<>p"
    attained, shapes = {}, {}
    for i, (name, points) in enumerate(series.items()):
        ys = {label: min(peak_flops, x * bandwidth) for label, x in points.items()}
        attained[name] = ys
        ax.plot(list(points.values()), list(ys.values()), ls=":", color=f"C{i}", label=name)
        for j, (label, x) in enumerate(points.items()):
            ax.plot([x], [ys[label]], marker=markers[j % len(markers)], color=f"C{i}", ls="none", ms=6)
            if len(points) == 1:  # a lone point: name it where it is
                ax.annotate(label, (x, ys[label]), textcoords="offset points", xytext=(0, -13), fontsize=8,
                            color=f"C{i}", ha="center")
            else:
                shapes.setdefault(label, markers[j % len(markers)])
    for label, marker in shapes.items():  # one legend entry per marker: the points' labels (batch sizes)
        ax.plot([], [], marker=marker, color="0.3", ls="none", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.text(balance / 1.15, peak_flops * 1.3, "memory-bound", fontsize=8, color="0.35", ha="right")
    ax.text(balance * 1.15, peak_flops * 1.3, "compute-bound", fontsize=8, color="0.35", ha="left")
    ax.set_ylim(top=peak_flops * 2.2)
    finish_axes(ax, xlabel="arithmetic intensity (FLOP per byte read)", ylabel="attainable FLOP/s", title=title)
    return ax, attained
