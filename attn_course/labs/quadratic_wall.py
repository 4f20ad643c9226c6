"""Chapter 18's experiment: time, memory and FLOPs of naive attention as the sequence grows.

The mechanism is :func:`attn_course.flash.naive_attention` (the whole ``(B, H, N, N)`` score
matrix in memory); :func:`attn_course.flash.tiled_attention` is the contrast that keeps only a
block of it. Everything here is *measured* on the running code:

* ``count_flops``        floating-point operations, counted by ``torch.utils.flop_counter``;
* ``peak_tensor_bytes``  the largest total size of the tensors a call has alive at once,
                         counted op by op (deterministic: the same on every machine);
* wall time             best of a few runs (``attn_course.utils.best_seconds``; noisy on a
                         shared machine).

``scaling_table`` runs the three for a list of lengths, ``fit_slope`` fits the exponent of
``y ~ N^slope`` on a log-log scale, ``plot_scaling`` draws it. ``memory_pass_ns`` explains why
the fitted time slope of naive attention comes out above 2 on a CPU: one pass over an ``N x N``
matrix (no arithmetic to speak of) costs more per score once the matrix leaves the caches, and
more again when its output is a fresh tensor.

``long_context_budget`` turns the formulas into numbers for a 128k-token context on an H200,
from the stated hardware numbers in ``H200`` (NVIDIA's datasheet) and the kernel throughput
measured on one (``H200_MEASURED_TFLOPS``, from ``benchmarks/results/flash_gpu_h200.txt``).

Dimension glossary: B batch, H heads, N sequence length (queries = keys), d head width.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.axes import Axes
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from attn_course._validation import require_int
from attn_course.kv_cache import ModelShape
from attn_course.plotting import finish_axes, new_axes
from attn_course.utils import best_seconds, flop_counter, num_threads

__all__ = [
    "count_flops",
    "peak_tensor_bytes",
    "scaling_table",
    "memory_pass_ns",
    "fit_slope",
    "plot_scaling",
    "Hardware",
    "H200",
    "H200_MEASURED_TFLOPS",
    "long_context_budget",
]


# --------------------------------------------------------------------------- measuring


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` as torch's ``FlopCounterMode`` counts them (matmuls: 2 per multiply-add).

    Only matrix multiplications are counted (softmax, exp, masking are O(N^2) too, but cheap
    next to the ``O(N^2 d)`` matmuls), in place or not (``utils.flop_counter``). The mode is per
    thread: run multi-threaded code with one.
    """
    counter = flop_counter()
    with counter:
        fn()
    return int(counter.get_total_flops())


class _LiveTensorBytes(TorchDispatchMode):
    """Track every storage an op allocates while the mode is on; record the peak of their total."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}  # data_ptr -> (weak ref, bytes)
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        for key in [key for key, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sweep()  # tensors freed since the last op (Python frees them at once)
        out = func(*args, **(kwargs or {}))
        seen = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in seen or key in self.live:
                continue  # a view of an input, an in-place result, or already counted
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def peak_tensor_bytes(fn: Callable[[], object]) -> int:
    """The largest total size, in bytes, of the tensors ``fn()`` creates that are alive at once.

    Counted op by op (a ``TorchDispatchMode`` sees each op's outputs; a tensor counts until
    Python frees it), so it is exact and machine-independent; the inputs do not count, the
    output does. Buffers an op uses internally are not seen. Run single-threaded code (the mode
    is per thread).
    """
    mode = _LiveTensorBytes()
    with mode:
        result = fn()
    del result
    return mode.peak


def scaling_table(
    methods: Mapping[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]],
    lengths: Sequence[int],
    B: int = 1,
    H: int = 4,
    d: int = 32,
    repeats: int = 3,
    threads: int = 1,
    seed: int = 0,
    min_seconds: float = 0.0,
) -> list[dict]:
    """Seconds, peak tensor bytes and counted FLOPs of each method at each ``N`` in ``lengths``.

    ``methods = {"naive": lambda q, k, v: naive_attention(q, k, v), ...}``. Runs with
    ``threads`` torch threads (one: steadier timings on a shared machine, and the counting
    modes see everything). Time: the best of at least ``repeats`` runs, and of as many more as
    add up to ``min_seconds`` (short calls are the noisiest). Returns one dict per (method, N):
    ``method, N, seconds, peak_bytes, flops``.
    """
    rows = []
    g = torch.Generator().manual_seed(seed)
    with num_threads(threads), torch.no_grad():
        for N in lengths:
            q, k, v = (torch.randn(B, H, N, d, generator=g) for _ in range(3))  # (B, H, N, d)
            for name, fn in methods.items():
                call = (lambda fn=fn, q=q, k=k, v=v: fn(q, k, v))
                rows.append(dict(method=name, N=N, seconds=best_seconds(call, repeats, min_seconds=min_seconds),
                                 peak_bytes=peak_tensor_bytes(call), flops=count_flops(call)))
    return rows


def memory_pass_ns(lengths: Sequence[int], B: int = 1, H: int = 2, repeats: int = 5, threads: int = 1,
                   seed: int = 0, min_seconds: float = 0.05) -> list[dict]:
    """Nanoseconds per score of one scaling pass (``x * 0.125``) over a ``(B, H, N, N)`` float32 matrix.

    The pass ``naive_attention`` makes before its softmax, and the simplest there is: one multiply
    per score, so its cost is the cost of moving the matrix (an ``exp`` would add arithmetic,
    which on some processors costs as much as the memory traffic and hides it). Two versions for
    each ``N`` in ``lengths``: ``reused_ns`` writes into a preallocated buffer (the cost of
    streaming the matrix through the memory hierarchy), ``fresh_ns`` returns a new tensor, as
    ``naive_attention`` does for every ``N x N`` intermediate (add the cost of memory the
    allocator must get from the operating system, page by page, when the tensor is large).
    Best of at least ``repeats`` runs and ``min_seconds`` of them (a pass over a small matrix takes
    microseconds: one run says little), ``threads`` torch threads. Rows: ``N, matrix_bytes,
    reused_ns, fresh_ns``.
    """
    rows = []
    g = torch.Generator().manual_seed(seed)
    with num_threads(threads), torch.no_grad():
        for N in lengths:
            x = torch.randn(B, H, N, N, generator=g)  # (B, H, N, N): a score matrix
            buffer = torch.empty_like(x)
            per_score = 1e9 / x.numel()
            rows.append(dict(N=N, matrix_bytes=x.numel() * x.element_size(),
                             reused_ns=best_seconds(lambda x=x, b=buffer: torch.mul(x, 0.125, out=b), repeats,
                                                    min_seconds=min_seconds) * per_score,
                             fresh_ns=best_seconds(lambda x=x: torch.mul(x, 0.125), repeats,
                                                  min_seconds=min_seconds) * per_score))
            del x, buffer
    return rows


def fit_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """The exponent ``p`` of the least-squares fit ``y = c * x^p`` (a line on log-log axes)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.size < 2 or (x <= 0).any() or (y <= 0).any():
        raise ValueError("fit_slope needs two equally long sequences of at least 2 positive numbers")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def plot_scaling(
    rows: Sequence[dict],
    value: str,
    ax: Axes | None = None,
    *,
    ylabel: str,
    title: str,
    scale: float = 1.0,
) -> Axes:
    """``value`` (a key of the rows) against N on log-log axes, one line per method, its fitted
    slope in the legend; ``scale`` multiplies the values (e.g. ``1e3`` for milliseconds)."""
    ax = new_axes(ax)
    for name in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == name]
        xs, ys = [r["N"] for r in rs], [r[value] * scale for r in rs]
        ax.plot(xs, ys, marker="o", label=f"{name} (slope {fit_slope(xs, ys):.2f})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    return finish_axes(ax, xlabel="sequence length N (log scale)", ylabel=ylabel, title=title,
                       grid_which="both")


# --------------------------------------------------------------------------- a 128k context


@dataclass(frozen=True)
class Hardware:
    """The numbers of an accelerator that the estimates use (stated, not measured here)."""

    name: str
    dense_bf16_tflops: float  # peak dense bf16 tensor-core throughput, TFLOP/s
    memory_gb: float  # on-chip HBM capacity, GB (10^9 bytes)
    bandwidth_tb_s: float  # HBM bandwidth, TB/s
    source: str


# NVIDIA H200 SXM datasheet: 1,979 TFLOPS bf16 "with sparsity" (half of it dense), 141 GB HBM3e,
# 4.8 TB/s.
H200 = Hardware("NVIDIA H200 SXM", dense_bf16_tflops=1979 / 2, memory_gb=141, bandwidth_tb_s=4.8,
                source="NVIDIA H200 Tensor Core GPU datasheet (bf16 1,979 TFLOPS with 2:4 sparsity, half dense)")

# Measured on an H200 (benchmarks/results/flash_gpu_h200.txt: bf16, B=4, H=32, d=128, N=16384):
# the course's Triton FlashAttention kernel and torch SDPA's FLASH backend, TFLOP/s.
H200_MEASURED_TFLOPS = {"triton, causal": 501.0, "sdpa flash, causal": 324.0,
                        "triton, non-causal": 516.0, "sdpa flash, non-causal": 356.0}


def long_context_budget(model: ModelShape, N: int, hw: Hardware = H200, achieved_tflops: float | None = None,
                        dtype_bytes: int = 2) -> dict[str, float]:
    """What one causal forward pass over ``N`` tokens costs ``model`` on ``hw`` (estimates).

    Returns a dict of:

    * ``scores_bytes_head``   one head's ``N x N`` score matrix, one layer (``N^2 * dtype_bytes``);
    * ``scores_bytes_layer``  all heads of one layer;
    * ``heads_that_fit``      how many heads' score matrices fit in the memory at once;
    * ``attention_flops``     attention matmuls, all layers, causal: ``4 N^2 d H / 2`` per layer;
    * ``weight_flops``        everything else, ~``2 * params * N`` (one multiply-add per weight and token);
    * ``attention_share``     attention's share of the total FLOPs;
    * ``crossover_N``         the ``N`` where the two are equal: ``params / (layers * H * d)``;
    * ``attention_seconds_peak`` / ``attention_seconds_achieved``  at the peak / at ``achieved_tflops``;
    * ``naive_traffic_seconds``  naive attention's reads and writes of the scores (``4 N^2`` per
      head and layer, as in ``flash.memory_traffic``) at the HBM bandwidth.
    """
    require_int(N, "N")
    L, H, d = model.num_layers, model.num_heads, model.head_dim
    head = N * N * dtype_bytes
    attn = L * 4.0 * N * N * d * H / 2  # causal: half the score matrix
    weights = 2.0 * model.params * N
    out = dict(
        scores_bytes_head=float(head),
        scores_bytes_layer=float(head * H),
        heads_that_fit=float(hw.memory_gb * 1e9 // head),
        attention_flops=attn,
        weight_flops=weights,
        attention_share=attn / (attn + weights),
        crossover_N=model.params / (L * H * d),
        attention_seconds_peak=attn / (hw.dense_bf16_tflops * 1e12),
        naive_traffic_seconds=L * H * 4.0 * N * N * dtype_bytes / (hw.bandwidth_tb_s * 1e12),
    )
    if achieved_tflops is not None:
        out["attention_seconds_achieved"] = attn / (achieved_tflops * 1e12)
    return out
