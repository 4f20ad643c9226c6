"""Time the three attention paths on this machine and print ratios against torch's SDPA.

    .venv/bin/python benchmarks/attention_paths.py [--seq 64 256 1024] [--repeat 20]

Paths: ``attention_loop`` (one query at a time, the readable reference), our vectorised
``scaled_dot_product_attention``, and ``torch.nn.functional.scaled_dot_product_attention``.
FLOPs per call: 4 * B * H * L * S * d (two matmuls, a multiply-add counted as 2).
"""

from __future__ import annotations

import argparse
import platform

import torch
import torch.nn.functional as F

from attn_course.attention import attention_loop, scaled_dot_product_attention
from attn_course.utils import best_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'T':>6} {'sdpa ms':>9} {'ours ms':>9} {'loop ms':>9} {'ours/sdpa':>10} {'loop/sdpa':>10} {'sdpa GFLOP/s':>13}")
    g = torch.Generator(device="cpu").manual_seed(0)
    for T in args.seq:
        q, k, v = (torch.randn(args.batch, args.heads, T, args.dim, generator=g).to(device) for _ in range(3))
        t_sdpa = best_seconds(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), args.repeat)
        t_ours = best_seconds(lambda q=q, k=k, v=v: scaled_dot_product_attention(q, k, v), args.repeat)
        t_loop = best_seconds(lambda q=q, k=k, v=v: attention_loop(q, k, v), max(1, args.repeat // 5)) if T <= 256 else float("nan")
        flops = 4 * args.batch * args.heads * T * T * args.dim
        print(f"{T:>6} {t_sdpa * 1e3:>9.2f} {t_ours * 1e3:>9.2f} {t_loop * 1e3:>9.2f} "
              f"{t_ours / t_sdpa:>10.2f} {t_loop / t_sdpa:>10.1f} {flops / t_sdpa / 1e9:>13.1f}")


if __name__ == "__main__":
    main()
