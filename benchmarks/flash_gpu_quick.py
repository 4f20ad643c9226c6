"""A short GPU check of the Triton FlashAttention forward against torch's SDPA backends.

Correctness at a few ragged sizes (float16 and bfloat16 against float32 SDPA), then TFLOP/s
(FLOPs = 4*B*H*N^2*d, halved when causal) of the Triton kernel and each SDPA backend for
head_dim 64 and 128, causal and not, N in 1024, 4096, 16384, and the two targets:
Triton >= 0.9x SDPA's flash backend at N=4096, d=128, bf16; causal >= 0.85x non-causal.
Usage (GPU only): python benchmarks/flash_gpu_quick.py
"""

import math
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from attn_course.flash import attention_flops
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

backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}
B, H, dtype = 4, 32, torch.bfloat16
rows = {}
print(f"\nTFLOP/s, {dtype}, B={B}, H={H}")
print(f"{'d':>4} {'causal':>6} {'N':>6} {'triton':>7} " + " ".join(f"{n:>9}" for n in backends) + f" {'tri/flash':>9}")
for d in (128, 64):
    for causal in (False, True):
        for N in (1024, 4096, 16384):
            q, k, v = (torch.randn(B, H, N, d, device=dev, dtype=dtype, generator=g) for _ in range(3))
            fl = attention_flops(B, H, N, N, d, causal)
            tf = {"triton": fl / do_bench(lambda q=q, k=k, v=v, c=causal: flash_attention(q, k, v, c), warmup=10, rep=40) / 1e9}
            for name, be in backends.items():
                def run(be=be, q=q, k=k, v=v, c=causal):
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=c)
                try:
                    tf[name] = fl / do_bench(run, warmup=10, rep=40) / 1e9
                except RuntimeError:
                    tf[name] = math.nan
            rows[(d, causal, N)] = tf
            print(f"{d:>4} {causal!s:>6} {N:>6} {tf['triton']:>7.0f} " + " ".join(f"{tf[n]:>9.0f}" for n in backends)
                  + f" {tf['triton'] / tf['flash']:>9.2f}", flush=True)
nc, c = rows[(128, False, 4096)], rows[(128, True, 4096)]
print(f"\ntarget 1: triton / SDPA flash at N=4096, d=128, bf16 = {nc['triton'] / nc['flash']:.2f} (>= 0.90)")
print(f"target 2: causal / non-causal triton TFLOP/s at N=4096, d=128 = {c['triton'] / nc['triton']:.2f} (>= 0.85)")
print(f"total {time.time() - t0:.0f} s")
