"""Chapter 22's experiment: the Triton FlashAttention kernel on a CPU (interpreter) and a GPU.

* ``interpreter_errors``: the kernel against the float32 reference on tiny ragged cases, under
  ``TRITON_INTERPRET=1`` (set before ``attn_course.triton_attention`` is first imported).
* ``benchmark_backends`` (GPU): TFLOP/s of the Triton kernel and of torch's
  ``scaled_dot_product_attention`` with each backend (math, efficient, flash, cuDNN) forced
  through ``torch.nn.attention.sdpa_kernel``, by N, head_dim and causal, measured in one run:
  the course's one such loop (the benchmark scripts call it too).
* ``load_recorded`` / ``parse_recorded``: the table ``benchmarks/flash_gpu_quick.py`` printed on
  an NVIDIA H200 (shipped as package data, so a CPU-only page can show and plot it).
* ``plot_tflops``: TFLOP/s by N, one panel per (head_dim, causal), one line per implementation.

FLOPs are ``attn_course.flash.attention_flops``: 4 B H N^2 d, halved when causal.
Dimension glossary: B batch, H heads, N sequence length (queries = keys), d head_dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from attn_course.plotting import finish_axes

__all__ = [
    "RECORDED_H200",
    "Recorded",
    "parse_recorded",
    "load_recorded",
    "kernel_block_counts",
    "interpreter_errors",
    "benchmark_backends",
    "plot_tflops",
]

RECORDED_H200 = "flash_gpu_h200.txt"
BACKENDS = ("math", "efficient", "flash", "cudnn")


@dataclass
class Recorded:
    """A TFLOP/s table: ``rows[(d, causal, N)] = {"triton": ..., "flash": ..., ...}``."""

    device: str
    torch_version: str
    dtype: str
    batch: int
    heads: int
    rows: dict[tuple[int, bool, int], dict[str, float]] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return list(next(iter(self.rows.values())).keys()) if self.rows else []


def parse_recorded(text: str) -> Recorded:
    """Read the output of ``benchmarks/flash_gpu_quick.py``: device line, table header, rows."""
    lines = text.splitlines()
    if not lines:
        raise ValueError("empty benchmark record")
    device, _, version = lines[0].partition(" torch ")
    rec, header = None, None
    for line in lines[1:]:
        if line.startswith("TFLOP/s,"):
            parts = [p.strip() for p in line.split(",")]
            rec = Recorded(device.strip(), version.strip(), parts[1], int(parts[2].split("=")[1]),
                           int(parts[3].split("=")[1]))
        elif rec is not None and line.split()[:3] == ["d", "causal", "N"]:
            header = line.split()[3:]
        elif rec is not None and header and len(line.split()) == 3 + len(header):
            d, causal, N, *vals = line.split()
            row = {name: float(v) for name, v in zip(header, vals) if name != "tri/flash"}
            rec.rows[(int(d), causal == "True", int(N))] = row
    if rec is None or not rec.rows:
        raise ValueError("no TFLOP/s table found in the benchmark record")
    return rec


def load_recorded(name: str = RECORDED_H200) -> Recorded:
    """A recorded table shipped with the package (``attn_course/labs/data/<name>``)."""
    text = resources.files("attn_course.labs").joinpath("data", name).read_text(encoding="utf-8")
    return parse_recorded(text)


def kernel_block_counts(N_q: int, N_kv: int, block_m: int, block_n: int, causal: bool) -> dict[str, int]:
    """How many key blocks the kernel visits without a mask and with one, summed over query blocks.

    The same bounds as ``_attn_fwd``: keys ``[0, full_end)`` need no mask, ``[full_end, end)`` do.
    """
    full = masked = 0
    for start_m in range(math.ceil(N_q / block_m)):
        if causal:
            end = min((start_m + 1) * block_m, N_kv)
            full_end = (min(start_m * block_m, N_kv) // block_n) * block_n
        else:
            end, full_end = N_kv, (N_kv // block_n) * block_n
        full += full_end // block_n
        masked += math.ceil(max(end - full_end, 0) / block_n)
    return {"full": full, "masked": masked, "visited": full + masked,
            "all": math.ceil(N_q / block_m) * math.ceil(N_kv / block_n)}


def interpreter_errors(cases: Sequence[tuple[int, int, int, bool]], seed: int = 0) -> dict:
    """Largest |kernel - reference| for each ``(L, S, d, causal)`` case, on CPU tensors (float32).

    Needs ``TRITON_INTERPRET=1`` in the environment before ``attn_course.triton_attention`` is
    imported (the kernel raises a clear error otherwise).
    """
    from attn_course.triton_attention import flash_attention, reference_attention

    g = torch.Generator().manual_seed(seed)
    errors = {}
    for L, S, d, causal in cases:
        q, k, v = (torch.randn(1, 2, n, d, generator=g) for n in (L, S, S))  # (B, H, L or S, d)
        out = flash_attention(q, k, v, causal=causal)
        errors[(L, S, d, causal)] = (out - reference_attention(q, k, v, causal=causal)).abs().max().item()
    return errors


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return getattr(SDPBackend, {"math": "MATH", "efficient": "EFFICIENT_ATTENTION", "flash": "FLASH_ATTENTION",
                                "cudnn": "CUDNN_ATTENTION"}[name], None)


def _gpu_milliseconds(fn: Callable[[], object], warmup: int, rep: int) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup, rep=rep)


def benchmark_backends(lengths: Sequence[int] = (512, 1024, 2048, 4096), head_dims: Sequence[int] = (64, 128),
                       causals: Sequence[bool] = (False, True), dtype: torch.dtype | None = None,
                       batch: int = 2, heads: int = 8, backends: Sequence[str] = BACKENDS,
                       math_memory_fraction: float = 0.3, warmup: int = 25, rep: int = 100,
                       device: str = "cuda", milliseconds: Callable[[Callable[[], object]], float] | None = None,
                       progress: Callable[[tuple[int, bool, int], dict[str, float]], None] | None = None) -> Recorded:
    """TFLOP/s of the Triton kernel and of SDPA with each of ``backends`` forced, measured in one run.

    The one Triton-vs-SDPA measurement of the course: chapter 22, ``benchmarks/flash_gpu_quick.py``
    and ``benchmarks/attention.py`` all call it. On a GPU each call is timed with
    ``triton.testing.do_bench(warmup, rep)`` (milliseconds); ``milliseconds`` replaces that timer
    (e.g. on a CPU, where the kernel runs under ``TRITON_INTERPRET=1``, for testing this loop).

    ``dtype`` defaults to bfloat16 where supported (compute capability >= 8.0), else float16 (T4).
    A backend that cannot run a case (not built for this GPU or dtype, out of memory) gets NaN;
    the math backend is skipped (NaN) when its N x N scores would take more than
    ``math_memory_fraction`` of the free GPU memory. ``progress(key, row)`` is called after each row.
    """
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    from attn_course.flash import attention_flops
    from attn_course.triton_attention import flash_attention

    on_gpu = torch.device(device).type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        raise RuntimeError("benchmark_backends needs a CUDA GPU (or device='cpu' with a milliseconds timer)")
    if not on_gpu and milliseconds is None:
        raise ValueError("on a CPU pass milliseconds=: triton's do_bench times GPU kernels only")
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise ValueError(f"backends must be among {BACKENDS}, got {unknown}")
    if milliseconds is None:
        def milliseconds(fn):
            return _gpu_milliseconds(fn, warmup, rep)
    if dtype is None:
        dtype = torch.bfloat16 if not on_gpu or torch.cuda.get_device_capability()[0] >= 8 else torch.float16
    name = torch.cuda.get_device_name() if on_gpu else "CPU (Triton interpreter)"
    rec = Recorded(name, torch.__version__, str(dtype), batch, heads)
    g = torch.Generator(device=device).manual_seed(0)
    for d in head_dims:
        for causal in causals:
            for N in lengths:
                q, k, v = (torch.randn(batch, heads, N, d, device=device, dtype=dtype, generator=g) for _ in range(3))
                tflop = attention_flops(batch, heads, N, N, d, causal) / 1e12
                row = {"triton": tflop / (milliseconds(lambda q=q, k=k, v=v, c=causal: flash_attention(q, k, v, c)) * 1e-3)}
                for backend_name in backends:
                    backend = _sdpa_backend(backend_name)
                    scores_bytes = 3 * batch * heads * N * N * torch.finfo(dtype).bits // 8
                    if backend is None or (on_gpu and backend_name == "math" and
                                           scores_bytes > math_memory_fraction * torch.cuda.mem_get_info()[0]):
                        row[backend_name] = math.nan
                        continue

                    def run(backend=backend, q=q, k=k, v=v, c=causal):
                        with sdpa_kernel(backend):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=c)
                    try:
                        row[backend_name] = tflop / (milliseconds(run) * 1e-3)
                    except RuntimeError:  # this backend does not support the device / dtype / size
                        row[backend_name] = math.nan
                    if on_gpu:
                        torch.cuda.empty_cache()
                rec.rows[(d, causal, N)] = row
                if progress is not None:
                    progress((d, causal, N), row)
    return rec


def plot_tflops(rec: Recorded, title: str | None = None) -> Figure:
    """TFLOP/s vs N: one panel per (head_dim, causal), one line per implementation."""
    keys = sorted({(d, c) for d, c, _ in rec.rows}, key=lambda x: (-x[0], x[1]))
    ncols = min(2, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.2 * nrows + 0.4), sharey=True,
                             layout="constrained", squeeze=False)
    axes = list(grid.flat)[: len(keys)]
    styles = {"triton": ("o-", 2.4)}
    for ax, (d, causal) in zip(axes, keys):
        Ns = sorted(N for dd, c, N in rec.rows if (dd, c) == (d, causal))
        for col in rec.columns:
            vals = [rec.rows[(d, causal, N)][col] for N in Ns]
            if all(math.isnan(x) for x in vals):
                continue
            style, lw = styles.get(col, ("s--", 1.3))
            ax.semilogx(Ns, vals, style, lw=lw, base=2, label="Triton (ours)" if col == "triton" else f"SDPA {col}")
        finish_axes(ax, xlabel="sequence length N", ylabel="TFLOP/s" if ax in grid[:, 0] else "",
                    title=f"d = {d}, {'causal' if causal else 'not causal'}", legend_fontsize="small")
    fig.suptitle(title or f"{rec.device}, {rec.dtype}, B={rec.batch}, H={rec.heads}")
    return fig
