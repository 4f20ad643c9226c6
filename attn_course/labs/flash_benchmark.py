"""Chapter 22's experiment: the Triton FlashAttention kernel on a CPU (interpreter) and a GPU.

* ``interpreter_errors``: the kernel against the float32 reference on tiny ragged cases, under
  ``TRITON_INTERPRET=1`` (set before ``attn_course.triton_attention`` is first imported).
* ``benchmark_backends`` (GPU): TFLOP/s of the Triton kernel and of torch's
  ``scaled_dot_product_attention`` with each backend (math, efficient, flash, cuDNN) forced
  through ``torch.nn.attention.sdpa_kernel``, by N, head_dim and causal, measured in one run,
  for the forward pass or (``direction="backward"``) the backward pass: the course's one such
  loop (the benchmark scripts call it too).
* ``load_recorded`` / ``parse_recorded``: the table ``benchmarks/flash_gpu_quick.py`` printed on
  an NVIDIA H200 (shipped as package data, so a CPU-only page can show and plot it).
* ``plot_tflops``: TFLOP/s by N, one panel per (head_dim, causal), one line per implementation.
* ``kernel_tiles`` / ``kernel_block_counts`` / ``draw_program_visits``: which key blocks each
  program of the forward kernel visits, with a mask or without, and a slider frame of it;
  ``shared_memory_estimate``: what its tiles take in shared memory.
* ``ptx_instructions``: which tensor-core and copy instructions a compiled kernel uses (GPU).
* ``TinyAttention`` / ``train_with_kernel``: a one-layer attention model trained for a few steps
  with the kernel's gradients, and those gradients against autograd's through the reference.

FLOPs are ``attn_course.flash.attention_flops``: 4 B H N^2 d, halved when causal; a backward
pass counts 2.5 times that (5 matrix products instead of 2, with the recomputation of QK^T), as
FlashAttention-2's benchmarks do.
Dimension glossary: B batch, H heads, N sequence length (queries = keys), d head_dim,
T tokens and D model width (the tiny model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from attn_course._validation import require_int
from attn_course.diagrams import COLORS, INK, light
from attn_course.multihead import merge_heads, split_heads
from attn_course.plotting import finish_axes

__all__ = [
    "RECORDED_H200",
    "Recorded",
    "parse_recorded",
    "load_recorded",
    "kernel_tiles",
    "kernel_block_counts",
    "shared_memory_estimate",
    "PROGRAM_VISITS_ALT",
    "draw_program_visits",
    "interpreter_errors",
    "benchmark_backends",
    "BACKWARD_FLOP_FACTOR",
    "ptx_instructions",
    "plot_tflops",
    "TinyAttention",
    "KernelTraining",
    "train_with_kernel",
]

RECORDED_H200 = "flash_gpu_h200.txt"
BACKENDS = ("math", "efficient", "flash", "cudnn")
BACKWARD_FLOP_FACTOR = 2.5  # backward FLOPs / forward FLOPs: 5 matrix products instead of 2


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


def parse_recorded(text: str, direction: str = "forward") -> Recorded:
    """Read the output of ``benchmarks/flash_gpu_quick.py``: device line, table title, header, rows.

    The forward table's title starts with ``TFLOP/s,``, the backward's with ``backward TFLOP/s,``;
    ``direction`` picks one.
    """
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    lines = text.splitlines()
    if not lines:
        raise ValueError("empty benchmark record")
    device, _, version = lines[0].partition(" torch ")
    wanted = "TFLOP/s," if direction == "forward" else "backward TFLOP/s,"
    rec, header, active = None, None, False
    for line in lines[1:]:
        if line.startswith(("TFLOP/s,", "backward TFLOP/s,")):  # a table's title
            active = line.startswith(wanted) and rec is None  # the first table of that direction
            if active:
                parts = [p.strip() for p in line.split(",")]
                rec = Recorded(device.strip(), version.strip(), parts[1], int(parts[2].split("=")[1]),
                               int(parts[3].split("=")[1]))
        elif active and line.split()[:3] == ["d", "causal", "N"]:
            header = line.split()[3:]
        elif (active and header and len(line.split()) == 3 + len(header) and line.split()[0].isdigit()
              and line.split()[1] in ("True", "False")):
            d, causal, N, *vals = line.split()
            row = {name: float(v) for name, v in zip(header, vals) if name != "tri/flash"}
            rec.rows[(int(d), causal == "True", int(N))] = row
    if rec is None or not rec.rows:
        raise ValueError(f"no TFLOP/s table ({direction}) found in the benchmark record")
    return rec


def load_recorded(name: str = RECORDED_H200, direction: str = "forward") -> Recorded:
    """A recorded table shipped with the package (``attn_course/labs/data/<name>``)."""
    text = resources.files("attn_course.labs").joinpath("data", name).read_text(encoding="utf-8")
    return parse_recorded(text, direction)


def kernel_tiles(N_q: int, N_kv: int, block_m: int, block_n: int, causal: bool) -> list[tuple[list[int], list[int]]]:
    """For each query block, the key blocks the forward kernel visits: ``(mask-free, masked)`` index lists.

    The same bounds as ``_attn_fwd``: keys ``[0, full_end)`` need no mask, ``[full_end, end)`` do;
    every loop starts at key block 0 (which holds key 0, visible to every query).
    """
    N_q, N_kv = require_int(N_q, "N_q"), require_int(N_kv, "N_kv")
    block_m, block_n = require_int(block_m, "block_m"), require_int(block_n, "block_n")
    tiles = []
    for start_m in range(math.ceil(N_q / block_m)):
        if causal:
            end = min((start_m + 1) * block_m, N_kv)
            full_end = (min(start_m * block_m, N_kv) // block_n) * block_n
        else:
            end, full_end = N_kv, (N_kv // block_n) * block_n
        full = list(range(full_end // block_n))
        tiles.append((full, list(range(len(full), len(full) + math.ceil(max(end - full_end, 0) / block_n)))))
    return tiles


def kernel_block_counts(N_q: int, N_kv: int, block_m: int, block_n: int, causal: bool) -> dict[str, int]:
    """How many key blocks the kernel visits without a mask and with one, summed over query blocks."""
    tiles = kernel_tiles(N_q, N_kv, block_m, block_n, causal)
    full = sum(len(f) for f, _ in tiles)
    masked = sum(len(m) for _, m in tiles)
    return {"full": full, "masked": masked, "visited": full + masked,
            "all": math.ceil(N_q / block_m) * math.ceil(N_kv / block_n)}


def shared_memory_estimate(block_m: int, block_n: int, d: int, stages: int, dtype_bytes: int = 2) -> int:
    """Bytes of shared memory a forward program's tiles take, roughly: its query block plus
    ``stages`` buffers of one K and one V block (Triton's allocator decides the exact layout)."""
    block_m, block_n, d = require_int(block_m, "block_m"), require_int(block_n, "block_n"), require_int(d, "d")
    stages, dtype_bytes = require_int(stages, "stages"), require_int(dtype_bytes, "dtype_bytes")
    return (block_m * d + stages * 2 * block_n * d) * dtype_bytes


PROGRAM_VISITS_ALT = (
    "The causal score matrix of 1024 queries and keys cut into tiles of 128 queries by 64 keys, and a "
    "bar chart of the key blocks each program visits. As the slider moves from program 0 to program 7, "
    "the tiles of that program's query block light up: mask-free tiles left of the diagonal in solid "
    "purple, the two tiles that cross the diagonal hatched (masked), the tiles above it never visited. "
    "Program 0 takes the last query block, the longest row of tiles, and program 7 the first, the shortest."
)


def draw_program_visits(fig: Figure, program: int, N: int = 1024, block_m: int = 128, block_n: int = 64) -> None:
    """One slider frame: the tiles program ``program`` of the causal forward kernel visits (on ``fig``).

    Programs are launched in the kernel's causal order, the longest rows first: program ``p``
    takes query block ``T - 1 - p`` of ``T``. Left: the score matrix in tiles (solid: mask-free,
    hatched: masked, pale: visited by the programs before, white: never visited); right: the key
    blocks each program visits, this one highlighted.
    """
    tiles = kernel_tiles(N, N, block_m, block_n, causal=True)
    T, nk = len(tiles), math.ceil(N / block_n)
    program = require_int(program, "program", minimum=0, maximum=T - 1)
    qb = T - 1 - program  # the causal launch order of _attn_fwd
    ax, bars = fig.subplots(1, 2, width_ratios=[1.15, 1])
    ax.set_xlim(0, N)
    ax.set_ylim(N, 0)  # query 0 at the top
    ax.set_aspect("equal")
    weights = COLORS["weights"]
    for i, (full, masked) in enumerate(tiles):
        done = T - 1 - i < program  # a program launched before this one
        for j in full + masked:
            x, y = j * block_n, i * block_m
            if i == qb:
                ax.add_patch(Rectangle((x, y), block_n, block_m, facecolor=light(weights, 0.35 if j in full else 0.7),
                                       edgecolor=weights, hatch="///" if j in masked else None, lw=1.2, zorder=3))
            elif done:
                ax.add_patch(Rectangle((x, y), block_n, block_m, facecolor=light(weights, 0.88),
                                       edgecolor="#cccccc", lw=0.5, zorder=2))
    ax.plot([0, N], [0, N], color=INK, lw=1.0, ls="--", zorder=4)  # the diagonal: key j <= query i
    ax.set_xticks([j * block_n for j in range(0, nk + 1, 4)])
    ax.set_yticks([i * block_m for i in range(T + 1)])
    ax.grid(True, color="#dddddd", lw=0.5)
    full, masked = tiles[qb]
    ax.set(xlabel=f"keys (blocks of {block_n})", ylabel=f"queries (blocks of {block_m})")
    ax.set_title(f"program {program} -> query block {qb}: {len(full)} mask-free\n+ {len(masked)} masked "
                 f"(hatched) of {nk} key blocks; white: never visited", fontsize=10)
    visited = [len(f) + len(m) for f, m in reversed(tiles)]  # by program id
    bars.bar(range(T), visited, color=[weights if p == program else light(weights, 0.7) for p in range(T)])
    bars.set(xlabel="program id (launch order)", ylabel="key blocks visited", ylim=(0, nk + 1))
    bars.set_title("work per program:\nthe longest rows are launched first", fontsize=10)
    bars.grid(alpha=0.3, axis="y")


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


def _timed_call(direction: str, forward: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...],
                g: torch.Generator) -> Callable[[], object]:
    """What one timing runs: the forward call itself, or (``"backward"``) the gradient of its output.

    For the backward the forward runs once, here, outside the timing; its graph is kept
    (``retain_graph``) so that the timer can repeat the backward alone.
    """
    if direction == "forward":
        return forward
    out = forward()
    grad_out = torch.randn(out.shape, generator=g, device=out.device, dtype=out.dtype)  # (B, H, N, d)
    return lambda: torch.autograd.grad(out, inputs, grad_out, retain_graph=True)


def benchmark_backends(lengths: Sequence[int] = (512, 1024, 2048, 4096), head_dims: Sequence[int] = (64, 128),
                       causals: Sequence[bool] = (False, True), dtype: torch.dtype | None = None,
                       batch: int = 2, heads: int = 8, backends: Sequence[str] = BACKENDS,
                       math_memory_fraction: float = 0.3, warmup: int = 25, rep: int = 100,
                       device: str = "cuda", milliseconds: Callable[[Callable[[], object]], float] | None = None,
                       progress: Callable[[tuple[int, bool, int], dict[str, float]], None] | None = None,
                       direction: str = "forward") -> Recorded:
    """TFLOP/s of the Triton kernel and of SDPA with each of ``backends`` forced, measured in one run.

    The one Triton-vs-SDPA measurement of the course: chapter 22, ``benchmarks/flash_gpu_quick.py``
    and ``benchmarks/attention.py`` all call it. On a GPU each call is timed with
    ``triton.testing.do_bench(warmup, rep)`` (milliseconds); ``milliseconds`` replaces that timer
    (e.g. on a CPU, where the kernel runs under ``TRITON_INTERPRET=1``, for testing this loop).

    ``direction="backward"`` times the backward pass instead (dQ, dK, dV from a random dO, the
    forward run once outside the timing; SDPA's backward is the one of the backend that ran its
    forward), counting ``BACKWARD_FLOP_FACTOR`` (2.5) times the forward's FLOPs.

    ``dtype`` defaults to bfloat16 where supported (compute capability >= 8.0), else float16 (T4).
    A backend that cannot run a case (not built for this GPU or dtype, out of memory) gets NaN;
    the math backend is skipped (NaN) when its N x N scores would take more than
    ``math_memory_fraction`` of the free GPU memory. ``progress(key, row)`` is called after each row.
    """
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    from attn_course.flash import attention_flops
    from attn_course.triton_attention import flash_attention

    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
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
    grad = direction == "backward"
    factor = BACKWARD_FLOP_FACTOR if grad else 1.0
    for d in head_dims:
        for causal in causals:
            for N in lengths:
                q, k, v = (torch.randn(batch, heads, N, d, device=device, dtype=dtype, generator=g).requires_grad_(grad)
                           for _ in range(3))  # (B, H, N, d)
                tflop = factor * attention_flops(batch, heads, N, N, d, causal) / 1e12
                ours = _timed_call(direction, lambda q=q, k=k, v=v, c=causal: flash_attention(q, k, v, c), (q, k, v), g)
                row = {"triton": tflop / (milliseconds(ours) * 1e-3)}
                del ours  # frees the kept graph (backward) before the next implementation runs
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
                        row[backend_name] = tflop / (milliseconds(_timed_call(direction, run, (q, k, v), g)) * 1e-3)
                    except RuntimeError:  # this backend does not support the device / dtype / size
                        row[backend_name] = math.nan
                    if on_gpu:
                        torch.cuda.empty_cache()
                rec.rows[(d, causal, N)] = row
                if progress is not None:
                    progress((d, causal, N), row)
    return rec


def ptx_instructions(kernel: object, names: Sequence[str] = ("wgmma.mma_async", "mma.sync", "cp.async.bulk.tensor",
                                                            "cp.async")) -> dict[str, bool]:
    """Which of ``names`` appear in the PTX of the compiled versions of a Triton kernel (GPU only).

    ``wgmma.mma_async`` is Hopper's warpgroup tensor-core instruction, ``mma.sync`` the warp-level
    one of Ampere, ``cp.async.bulk.tensor`` a TMA copy, ``cp.async`` an asynchronous copy to shared
    memory. ``kernel`` is a ``@triton.jit`` function or its autotuner, called at least once on a GPU
    (under the interpreter nothing is compiled: ``ValueError``).
    """
    fn = kernel
    while not hasattr(fn, "device_caches") and hasattr(fn, "fn"):  # autotuner -> jit function
        fn = fn.fn
    caches = getattr(fn, "device_caches", None)
    compiled = [k for cache in (caches or {}).values() for k in cache[0].values()] if caches else []
    ptx = "\n".join(getattr(k, "asm", {}).get("ptx", "") for k in compiled)
    if not ptx:
        raise ValueError(f"{getattr(fn, '__name__', fn)!r} has no compiled PTX: call it on a GPU first "
                         "(the interpreter compiles nothing)")
    return {n: n in ptx for n in names}


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


# --------------------------------------------------------------------------- a tiny model trained with the kernel


class TinyAttention(nn.Module):
    """One causal self-attention layer ``(B, T, D) -> (B, T, D)`` whose attention is a given function.

    ``attention(q, k, v, causal=True)`` takes ``(B, H, T, d)`` tensors: ``flash_attention`` (the
    Triton kernels) or ``reference_attention`` (autograd through the naive attention).
    """

    def __init__(self, d_model: int, heads: int, attention: Callable[..., torch.Tensor]):
        super().__init__()
        self.heads = require_int(heads, "heads")
        self.qkv = nn.Linear(require_int(d_model, "d_model"), 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, T, D)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))  # (B, H, T, d)
        return self.proj(merge_heads(self.attention(q, k, v, causal=True)))  # (B, T, D)


@dataclass
class KernelTraining:
    """What ``train_with_kernel`` returns."""

    losses: list[float]  # training loss at each step (the kernel's model)
    grad_difference: float  # largest |kernel gradient - reference gradient| over all parameters, step 0
    grad_scale: float  # largest |reference gradient|, for scale
    seconds: float


def train_with_kernel(attention: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor],
                      steps: int = 8, batch: int = 2, tokens: int = 24, d_model: int = 32, heads: int = 2,
                      lr: float = 2e-2, seed: int = 0, device: str = "cpu") -> KernelTraining:
    """Fit a ``TinyAttention`` using ``attention`` to a fixed random teacher (the same layer using
    ``reference``) on one fixed batch of random inputs, by mean squared error and full-batch Adam.

    Before the first step, the student's gradients with ``attention`` are compared with those of
    an identical copy using ``reference`` on the same batch (``grad_difference``).
    """
    import copy
    import time

    from attn_course.labs.training import run_steps

    steps = require_int(steps, "steps")
    torch.manual_seed(seed)
    teacher = TinyAttention(d_model, heads, reference).requires_grad_(False).to(device)
    student = TinyAttention(d_model, heads, attention).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, tokens, d_model, generator=g).to(device)  # (B, T, D): the training batch
    y = teacher(x)  # (B, T, D): the targets
    twin = copy.deepcopy(student)
    twin.attention = reference
    grads = []
    for model in (student, twin):
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    difference = max((a - b).abs().max().item() for a, b in zip(*grads))
    scale = max(b.abs().max().item() for b in grads[1])

    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)

    def loss_for_step(i: int) -> torch.Tensor:
        return nn.functional.mse_loss(student(x), y)

    start = time.perf_counter()
    losses = run_steps(student, loss_for_step, optimizer, schedule, steps, progress=False)
    return KernelTraining(losses, difference, scale, time.perf_counter() - start)
