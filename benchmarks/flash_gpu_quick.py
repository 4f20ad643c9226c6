"""A short GPU check of the Triton FlashAttention forward against torch's SDPA backends.

Correctness at a few ragged sizes (float16 and bfloat16 against float32 SDPA), then TFLOP/s
(FLOPs = 4*B*H*N^2*d, halved when causal) of the Triton kernel and each SDPA backend for
head_dim 64 and 128, causal and not, N in 1024, 4096, 16384, and the two targets:
Triton >= 0.9x SDPA's flash backend at N=4096, d=128, bf16; causal >= 0.85x non-causal.
Usage (GPU only): python benchmarks/flash_gpu_quick.py
"""

import time

import torch
import torch.nn.functional as F

from attn_course.labs.flash_benchmark import benchmark_backends
from attn_course.triton_attention import flash_attention

t0 = time.time()
dev = "cuda"
print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
g = torch.Generator(device=dev).manual_seed(0)

# correctness: ragged sizes, L != S, both dtypes, causal and not
worst = 0.0
for dtype in (torch.float16, torch.bfloat16):
    for d in (64, 128):
        for L, S in ((1000, 1000), (300, 1100)):
            for causal in (False, True):
                if causal and L != S:
                    continue
                q = torch.randn(2, 3, L, d, device=dev, dtype=dtype, generator=g)
                k = torch.randn(2, 3, S, d, device=dev, dtype=dtype, generator=g)
                v = torch.randn(2, 3, S, d, device=dev, dtype=dtype, generator=g)
                ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
                err = (flash_attention(q, k, v, causal).float() - ref).abs().max().item()
                tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
                worst = max(worst, err / tol)
                assert err < tol, (dtype, d, L, S, causal, err)
print(f"correctness: all cases within tolerance (worst err/tol = {worst:.2f}); {time.time() - t0:.0f} s", flush=True)

B, H, dtype = 4, 32, torch.bfloat16
backends = ("flash", "cudnn", "efficient")
print(f"\nTFLOP/s, {dtype}, B={B}, H={H}")
print(f"{'d':>4} {'causal':>6} {'N':>6} {'triton':>7} " + " ".join(f"{n:>9}" for n in backends) + f" {'tri/flash':>9}")


def show(key, tf):
    d, causal, N = key
    print(f"{d:>4} {causal!s:>6} {N:>6} {tf['triton']:>7.0f} " + " ".join(f"{tf[n]:>9.0f}" for n in backends)
          + f" {tf['triton'] / tf['flash']:>9.2f}", flush=True)


rows = benchmark_backends(lengths=(1024, 4096, 16384), head_dims=(128, 64), dtype=dtype, batch=B, heads=H,
                          backends=backends, warmup=10, rep=40, progress=show).rows
nc, c = rows[(128, False, 4096)], rows[(128, True, 4096)]
print(f"\ntarget 1: triton / SDPA flash at N=4096, d=128, bf16 = {nc['triton'] / nc['flash']:.2f} (>= 0.90)")
print(f"target 2: causal / non-causal triton TFLOP/s at N=4096, d=128 = {c['triton'] / nc['triton']:.2f} (>= 0.85)")
print(f"total {time.time() - t0:.0f} s")
