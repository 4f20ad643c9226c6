"""Time and peak extra memory of attention implementations by sequence length, with ratios
against torch's SDPA measured in the same run.

    python benchmarks/attention.py                      # CPU: N = 512 .. 8192, float32
    python benchmarks/attention.py --max-n 4096 --repeats 2 --plot attention.png
    python benchmarks/attention.py --device cuda --plot gpu.png   # GPU: N to 16384, + TFLOP/s

Methods: ``naive`` (``attn_course.flash.naive_attention``: the (B, H, N, N) scores in memory),
``tiled`` (``attn_course.flash.tiled_attention``), ``sdpa`` (``F.scaled_dot_product_attention``,
default backend; on CUDA also each backend forced with ``torch.nn.attention.sdpa_kernel``:
MATH, EFFICIENT_ATTENTION, FLASH_ATTENTION, CUDNN_ATTENTION) and, on a GPU with triton, ``triton``
(``attn_course.triton_attention.flash_attention``).

FLOPs per call: ``4 * B * H * N^2 * d`` (two matmuls, a multiply-add counted as 2), halved when
causal (``attn_course.flash.attention_flops``).

Peak EXTRA memory = memory beyond the inputs and the output, at the peak of one call:
* CUDA: ``torch.cuda.max_memory_allocated()`` minus what was allocated before the call, minus
  the output (exact, from torch's caching allocator).
* CPU: each (method, N) runs once in a fresh subprocess; extra = process RSS high-water
  (``VmHWM`` in ``/proc/self/status``, reset just before the call by writing 5 to
  ``/proc/self/clear_refs``; ``ru_maxrss`` elsewhere) minus the RSS before the call, minus the
  output. The libraries are warmed up first (a small call) so their one-off allocations are
  in the baseline. Page-granular and includes allocator slack, so small values are approximate;
  the ``theory`` column gives the bytes of the tensors the method keeps alive.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from attn_course.flash import naive_attention, tiled_attention

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SDPA_BACKENDS = ("MATH", "EFFICIENT_ATTENTION", "FLASH_ATTENTION", "CUDNN_ATTENTION")
MB = 2**20


# --------------------------------------------------------------------------- methods


def triton_available(device: str) -> bool:
    if device != "cuda":
        return False
    try:
        from attn_course import triton_attention
    except ImportError:
        return False
    return triton_attention.TRITON_AVAILABLE and not triton_attention.INTERPRETED


def methods(device: str, causal: bool, block_size: tuple[int, int]) -> dict[str, Callable]:
    """name -> fn(q, k, v) for every method this device can run."""
    fns: dict[str, Callable] = {
        "naive": lambda q, k, v: naive_attention(q, k, v, causal=causal),
        "tiled": lambda q, k, v: tiled_attention(q, k, v, causal=causal, block_size=block_size),
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
    }
    if device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for name in SDPA_BACKENDS:
            backend = getattr(SDPBackend, name, None)
            if backend is None:  # older torch
                continue

            def fn(q, k, v, backend=backend):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

            fns[f"sdpa[{name.split('_')[0].lower()}]"] = fn
        if triton_available(device):
            from attn_course.triton_attention import flash_attention

            fns["triton"] = lambda q, k, v: flash_attention(q, k, v, causal=causal)
    return fns


def theory_bytes(name: str, B: int, H: int, N: int, d: int, elem: int, block_size: tuple[int, int],
                 threads: int) -> float:
    """Bytes of the temporaries a method keeps alive at its peak (not counting inputs/output)."""
    if name == "naive" or name == "sdpa[math]":
        return 2 * B * H * N * N * elem  # the scores and the softmax of them
    if name == "tiled":
        bq, bk = min(block_size[0], N), min(block_size[1], N)
        workers = min(threads, math.ceil(N / bq))
        return workers * B * H * (bq * bk + bq * d) * elem  # one score block + accumulator per worker
    return float("nan")  # fused kernels: small per-block buffers (measured column)


def make_inputs(B: int, H: int, N: int, d: int, dtype: torch.dtype, device: str):
    g = torch.Generator(device=device).manual_seed(0)  # on the device: large inputs are made fast
    return tuple(torch.randn(B, H, N, d, generator=g, device=device, dtype=dtype) for _ in range(3))


# --------------------------------------------------------------------------- measuring


def time_methods(fns: dict[str, Callable], args: tuple, device: str, repeats: int) -> dict[str, float | str]:
    """Seconds per call of each method (or the error message if it cannot run).

    CUDA: ``triton.testing.do_bench`` (mean) when triton is there, else CUDA events. CPU: best of
    ``repeats`` after a warm-up, the methods interleaved round by round so that a change in the
    machine's load (shared machines) hits all of them alike.
    """
    out: dict[str, float | str] = {}
    for name, fn in fns.items():  # warm-up, and find what cannot run
        try:
            if device == "cuda":
                out[name] = _cuda_time(fn, args, repeats)
            else:
                fn(*args)
                out[name] = float("inf")
        except RuntimeError as e:
            out[name] = str(e).splitlines()[0] if str(e) else type(e).__name__
    if device == "cuda":
        return out
    for _ in range(repeats):
        for name, fn in fns.items():
            if isinstance(out[name], str):
                continue
            start = time.perf_counter()
            fn(*args)
            out[name] = min(out[name], time.perf_counter() - start)
    return out


def _cuda_time(fn: Callable, args: tuple, repeats: int) -> float:
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        return do_bench(lambda: fn(*args), warmup=10, rep=max(20, 20 * repeats)) * 1e-3
    fn(*args)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(repeats):
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) * 1e-3)
    return best


def cuda_extra_bytes(fn: Callable, args: tuple) -> float:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn(*args)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before - out.numel() * out.element_size()


def cpu_extra_bytes_subprocess(args: argparse.Namespace, method: str, N: int) -> float:
    """Run ``--measure-memory`` in a fresh process (a clean RSS high-water mark)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--measure-memory", method, "--n", str(N),
           "--batch", str(args.batch), "--heads", str(args.heads), "--head-dim", str(args.head_dim),
           "--dtype", args.dtype, "--block-size", *map(str, args.block_size), "--device", "cpu",
           "--threads", str(args.threads)] + (["--causal"] if args.causal else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        print(f"  (memory of {method} at N={N} failed: {result.stderr.strip().splitlines()[-1:]})")
        return float("nan")
    return json.loads(result.stdout.strip().splitlines()[-1])["extra_bytes"]


def measure_memory_here(args: argparse.Namespace) -> None:
    """The subprocess side of ``cpu_extra_bytes_subprocess``: prints ``{"extra_bytes": ...}``."""
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    fn = methods("cpu", args.causal, tuple(args.block_size))[args.measure_memory]
    fn(*make_inputs(1, 1, 256, args.head_dim, dtype, "cpu"))  # warm up the libraries (and threads)
    q, k, v = make_inputs(args.batch, args.heads, args.n, args.head_dim, dtype, "cpu")
    before = reset_rss_peak()
    out = fn(q, k, v)
    after = rss_peak()
    print(json.dumps({"extra_bytes": after - before - out.numel() * out.element_size()}))


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def reset_rss_peak() -> int:
    """Reset the RSS high-water mark (Linux: write 5 to /proc/self/clear_refs); return the current RSS.

    Without the reset, a transient peak while importing the libraries could hide the call's peak.
    Falls back to ``ru_maxrss`` (then the baseline is the old high-water mark).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS") * 1024
    except (OSError, TypeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def rss_peak() -> int:
    hwm = _status_kib("VmHWM")
    return hwm * 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------- tables


def fmt(x: float, spec: str = ".1f", width: int = 9) -> str:
    return f"{'-':>{width}}" if x != x else f"{x:>{width}{spec}}"  # NaN -> "-"


def run_table(args: argparse.Namespace, device: str, dtype: torch.dtype) -> list[dict]:
    B, H, d = args.batch, args.heads, args.head_dim
    elem = torch.tensor([], dtype=dtype).element_size()
    fns = methods(device, args.causal, tuple(args.block_size))
    rows = []
    print(f"\nB={B} H={H} d={d} {args.dtype} causal={args.causal} tiled block_size={tuple(args.block_size)}; "
          f"time = best of {args.repeats}; extra memory measured ({'allocator' if device == 'cuda' else 'RSS'}) "
          "and theory")
    print(f"{'N':>6} {'method':>12} {'ms':>9} {'/sdpa':>7} {'GFLOP/s':>9} {'extra MB':>9} {'theory MB':>10} "
          f"{'naive/this mem':>15}")
    N = args.min_n
    while N <= args.max_n:
        q, k, v = make_inputs(B, H, N, d, dtype, device)
        flops = 4 * B * H * N * N * d / (2 if args.causal else 1)
        runnable = {}
        for name, fn in fns.items():
            naive_like = name in ("naive", "sdpa[math]")
            if naive_like and 3 * B * H * N * N * elem > args.naive_max_gb * 2**30:
                continue  # would not fit (or take ages)
            if name == "tiled" and device == "cuda" and N > 8192:
                continue  # a Python loop of ~4000 small kernels: not what a GPU is for
            runnable[name] = fn
        times = time_methods(runnable, (q, k, v), device, args.repeats)
        results = {}
        for name, t in times.items():
            if isinstance(t, str):  # e.g. an SDPA backend that does not support this input
                print(f"{N:>6} {name:>12}  unavailable: {t[:70]}")
                continue
            if args.no_memory:
                mem = float("nan")
            elif device == "cuda":
                mem = cuda_extra_bytes(fns[name], (q, k, v))
            else:
                mem = cpu_extra_bytes_subprocess(args, name, N)
            results[name] = (t, mem)
        base = results.get("sdpa", (float("nan"),))[0]
        # memory ratios against naive's measured extra memory (or its B*H*N*N scores if not run)
        naive_mem = results["naive"][1] if "naive" in results and results["naive"][1] == results["naive"][1] \
            else B * H * N * N * elem
        for name, (t, mem) in results.items():
            theory = theory_bytes(name, B, H, N, d, elem, tuple(args.block_size), args.threads)
            row = dict(N=N, method=name, ms=t * 1e3, ratio=t / base, gflops=flops / t / 1e9,
                       extra_mb=mem / MB, theory_mb=theory / MB,
                       mem_ratio=naive_mem / max(mem, 1.0) if mem == mem else float("nan"))
            rows.append(row)
            print(f"{N:>6} {name:>12} {fmt(row['ms'])} {fmt(row['ratio'], '.2f', 7)} {fmt(row['gflops'], '.0f')} "
                  f"{fmt(row['extra_mb'])} {fmt(row['theory_mb'], '.1f', 10)} {fmt(row['mem_ratio'], '.0f', 15)}")
        del q, k, v
        N *= 2
    return rows


def run_tflops(args: argparse.Namespace) -> list[dict]:
    """GPU only: TFLOP/s of the Triton kernel vs SDPA's FLASH and cuDNN backends (the lab's one loop)."""
    from attn_course.labs.flash_benchmark import benchmark_backends

    dtype = torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16
    B, H = args.tflops_batch, args.tflops_heads
    print(f"\nTFLOP/s, {dtype}, B={B} H={H}, FLOPs = 4*B*H*N^2*d (halved when causal)")
    print(f"{'d':>4} {'causal':>6} {'N':>6} {'triton':>8} {'sdpa flash':>11} {'sdpa cudnn':>11} {'triton/flash':>13}")
    lengths = [args.min_n * 2 ** i for i in range(64) if args.min_n * 2 ** i <= args.max_n]

    def show(key, tf):
        d, causal, N = key
        print(f"{d:>4} {causal!s:>6} {N:>6} {fmt(tf['triton'], '.0f', 8)} {fmt(tf['flash'], '.0f', 11)} "
              f"{fmt(tf['cudnn'], '.0f', 11)} {fmt(tf['triton'] / tf['flash'], '.2f', 13)}")

    rec = benchmark_backends(lengths=lengths, head_dims=(64, 128), dtype=dtype, batch=B, heads=H,
                             backends=("flash", "cudnn"), progress=show)
    rows = [dict(d=d, causal=causal, N=N, **tf) for (d, causal, N), tf in rec.rows.items()]
    by = rec.rows
    if (128, False, 4096) in by and (128, True, 4096) in by:
        nc, c = by[(128, False, 4096)], by[(128, True, 4096)]
        print(f"\ncheck N=4096 d=128 {dtype}: triton / SDPA flash = {nc['triton'] / nc['flash']:.2f} (target >= 0.90); "
              f"causal / non-causal triton TFLOP/s = {c['triton'] / nc['triton']:.2f} (target >= 0.85)")
    return rows


def plot(path: str, rows: list[dict], tflops_rows: list[dict], device_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 3 if tflops_rows else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4.2))
    for name in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == name]
        axes[0].plot([r["N"] for r in rs], [r["ms"] for r in rs], marker="o", label=name)
        mem = [(r["N"], max(r["extra_mb"], 0.01)) for r in rs if r["extra_mb"] == r["extra_mb"]]  # log axis
        if mem:
            axes[1].plot(*zip(*mem), marker="o", label=name)
    axes[0].set(xscale="log", yscale="log", xlabel="N", ylabel="ms per call", title=f"time ({device_name})")
    axes[1].set(xscale="log", yscale="log", xlabel="N", ylabel="peak extra MB (floor 0.01)", title="peak extra memory")
    if tflops_rows:
        for d in (64, 128):
            for causal in (False, True):
                rs = [r for r in tflops_rows if r["d"] == d and r["causal"] == causal]
                for impl, style in (("triton", "-"), ("flash", "--")):
                    axes[2].plot([r["N"] for r in rs], [r[impl] for r in rs], style, marker="o",
                                 label=f"{impl} d={d}{' causal' if causal else ''}")
        axes[2].set(xscale="log", xlabel="N", ylabel="TFLOP/s", title="forward throughput")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--min-n", type=int, default=512)
    ap.add_argument("--max-n", type=int, default=None, help="default 8192 on CPU, 16384 on GPU")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", choices=list(DTYPES), default=None, help="default float32 on CPU, bfloat16 on GPU")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block-size", type=int, nargs=2, default=[128, 256], metavar=("BQ", "BK"),
                    help="tiled_attention's (Bq, Bk)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    ap.add_argument("--naive-max-gb", type=float, default=8.0, help="skip naive/math when 3 N^2 scores exceed this")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    ap.add_argument("--no-tflops", action="store_true", help="GPU: skip the TFLOP/s sweep")
    ap.add_argument("--tflops-batch", type=int, default=4)
    ap.add_argument("--tflops-heads", type=int, default=32)
    ap.add_argument("--plot", metavar="PATH", help="save a PNG of time, memory (and TFLOP/s) by N")
    ap.add_argument("--measure-memory", metavar="METHOD", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    args.dtype = args.dtype or ("float32" if device == "cpu" else "bfloat16")
    args.max_n = args.max_n or (8192 if device == "cpu" else 16384)
    torch.set_num_threads(args.threads)
    if args.measure_memory:
        measure_memory_here(args)
        return

    if device == "cuda":
        name = f"{torch.cuda.get_device_name()} (compute capability {'.'.join(map(str, torch.cuda.get_device_capability()))})"
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    print(f"device: {device}: {name}; torch {torch.__version__}; threads {torch.get_num_threads()}"
          + (f"; load average {os.getloadavg()[0]:.1f} (timings are noisy on a shared machine)" if device == "cpu" else ""))
    if device == "cuda":
        print(f"triton kernel: {'yes' if triton_available(device) else 'no (triton missing)'}")
    rows = run_table(args, device, DTYPES[args.dtype])
    tflops_rows = run_tflops(args) if device == "cuda" and not args.no_tflops and triton_available(device) else []
    if args.plot:
        plot(args.plot, rows, tflops_rows, name)


if __name__ == "__main__":
    main()
