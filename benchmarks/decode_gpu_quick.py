"""A short GPU check of the Triton decode kernels (split-K + reduce, paged) against torch's SDPA.

1. Correctness, float16 and bfloat16 against float32 SDPA: split-K with 1, 3 and the automatic
   number of splits, the paged kernel with 1 and 4 splits, on ragged lengths and GQA groups of
   1, 4 and 8 (MHA, GQA, and an odd group of 3).
2. Milliseconds of one decode step (``attn_course.labs.decode_kernels.time_decode_kernels_gpu``,
   ``triton.testing.do_bench`` medians), bf16, Llama-3-8B's attention shape (32 query heads, 8 KV
   heads, d = 128), batch 1, 8 and 64, caches of 4k and 32k tokens: SDPA, split-K by number of
   splits, paged, gather-then-attend; and the effective bandwidth of each (K and V bytes / time).
3. Ratios measured in this run: split-K (auto) / split-K (n=1), paged / SDPA, gather-then-attend /
   paged.

Usage (GPU only; skips without CUDA; not yet run on a GPU: expect a minute or two, mostly compiling):
    python benchmarks/decode_gpu_quick.py
Exit status 1 if a correctness check failed.
"""

import math
import sys
import time

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    print("decode_gpu_quick: no CUDA GPU here, skipped (the kernels are tested on CPU by "
          "tests/library/test_triton_decode.py under TRITON_INTERPRET=1)")
    sys.exit(0)

import attn_course.triton_decode as td  # noqa: E402
from attn_course.labs.decode_kernels import time_decode_kernels_gpu  # noqa: E402

t0 = time.time()
dev = "cuda"
print(torch.cuda.get_device_name(), "torch", torch.__version__,
      f"{torch.cuda.get_device_properties(0).multi_processor_count} SMs", flush=True)
g = torch.Generator(device=dev).manual_seed(0)

# 1. correctness
failures, worst = [], 0.0
for dtype in (torch.float16, torch.bfloat16):
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    for H, H_kv in ((8, 8), (32, 8), (12, 4), (8, 1)):
        B, S, d, P = 3, 1000, 128, 16
        q = torch.randn(B, H, 1, d, device=dev, dtype=dtype, generator=g)
        k = torch.randn(B, H_kv, S, d, device=dev, dtype=dtype, generator=g)
        v = torch.randn(B, H_kv, S, d, device=dev, dtype=dtype, generator=g)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
        for n in (1, 3, None):
            err = (td.split_k_decode_triton(q, k, v, num_splits=n).float() - ref).abs().max().item()
            worst = max(worst, err / tol)
            if err >= tol:
                failures.append(("split_k", str(dtype), H, H_kv, n, f"{err:.2e}"))
        # paged: ragged lengths, blocks shuffled through the pool
        lens = torch.tensor([S, 517, 1], device=dev)
        T = math.ceil(S / P)
        table = torch.randperm(B * T, device=dev, generator=g).view(B, T)
        k_pad = F.pad(k, (0, 0, 0, T * P - S)).transpose(1, 2).reshape(B * T, P, H_kv, d)
        v_pad = F.pad(v, (0, 0, 0, T * P - S)).transpose(1, 2).reshape(B * T, P, H_kv, d)
        k_pool, v_pool = torch.empty_like(k_pad), torch.empty_like(v_pad)
        k_pool[table.reshape(-1)] = k_pad
        v_pool[table.reshape(-1)] = v_pad
        for n in (1, 4):
            out = td.paged_decode_triton(q, k_pool, v_pool, table, lens, num_splits=n).float()
            for b in range(B):
                n_b = int(lens[b])
                want = F.scaled_dot_product_attention(q[b : b + 1].float(), k[b : b + 1, :, :n_b].float(),
                                                      v[b : b + 1, :, :n_b].float(), enable_gqa=True)
                err = (out[b : b + 1] - want).abs().max().item()
                worst = max(worst, err / tol)
                if err >= tol:
                    failures.append(("paged", str(dtype), H, H_kv, n, b, f"{err:.2e}"))
print(f"1. correctness: worst error / tolerance {worst:.2f}; failures: {failures or 'none'}", flush=True)

# 2. timings
print("2. milliseconds per decode step (bf16, H=32, H_kv=8, d=128), effective K/V bandwidth in TB/s")
rows = {}
for B in (1, 8, 64):
    for S in (4096, 32768):
        r = time_decode_kernels_gpu(batch=B, heads=32, kv_heads=8, num_keys=S, head_dim=128)
        rows[(B, S)] = r
        kv_bytes = 2 * B * 8 * S * 128 * 2
        cells = "  ".join(f"{name} {ms:.4f} ({kv_bytes / (ms * 1e-3) / 1e12:.2f})"
                          for name, ms in r.items() if name != "max_error")
        print(f"B={B:>2} S={S:>5}: {cells}  max_error {r['max_error']:.1e}", flush=True)

# 3. ratios
print("3. ratios measured in this run")
for (B, S), r in rows.items():
    auto = next(name for name in r if name.startswith("split_k n=auto"))
    paged_auto = [name for name in r if name.startswith("paged n=") and name != "paged n=1"][0]
    print(f"B={B:>2} S={S:>5}: split-K auto / n=1 speed-up {r['split_k n=1'] / r[auto]:.2f}; "
          f"paged n=1 / SDPA {r['paged n=1'] / r['sdpa']:.2f}; paged {paged_auto} / SDPA {r[paged_auto] / r['sdpa']:.2f}; "
          f"gather-then-attend / paged {r['gather_then_attend'] / r[paged_auto]:.2f}")
print(f"total {time.time() - t0:.0f} s")
sys.exit(1 if failures else 0)
