"""A short GPU check of the Triton FlashAttention kernels (forward and backward) against torch's SDPA.

1. Correctness at a few ragged sizes, float16 and bfloat16 against float32 SDPA: the output, then
   the gradients dQ, dK, dV (the backward kernels).
2. Forward TFLOP/s (FLOPs = 4*B*H*N^2*d, halved when causal) of the Triton kernel and each SDPA
   backend, head_dim 128 and 64, causal and not, N in 1024, 4096, 16384.
3. Backward TFLOP/s, same cases, FLOPs = 2.5x the forward's (5 matrix products instead of 2).
4. Which tensor-core and copy instructions the compiled Triton kernels use (wgmma, mma.sync, TMA).
5. The targets: forward Triton / SDPA flash >= 0.90 and causal / non-causal >= 0.85 (N=4096, d=128,
   bf16; met in the recorded run), forward Triton >= SDPA cuDNN (not met in the recorded run:
   cuDNN is 1.04-1.45x faster), backward Triton >= 0.9x SDPA flash backward (not yet measured).
Usage (GPU only; not yet run since the backward was added: expect a few minutes on an H100/H200):
    python benchmarks/flash_gpu_quick.py
Prints a record that ``attn_course.labs.flash_benchmark.parse_recorded`` reads (both tables);
exit status 1 if a correctness check failed.
"""

import sys
import time

import torch
import torch.nn.functional as F

import attn_course.triton_attention as ta
from attn_course.labs.flash_benchmark import benchmark_backends, ptx_instructions
from attn_course.triton_attention import flash_attention

t0 = time.time()
dev = "cuda"
print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
g = torch.Generator(device=dev).manual_seed(0)

# 1. correctness: ragged sizes, L != S, both dtypes, causal and not; output and gradients
worst, worst_grad, failures = 0.0, 0.0, []
for dtype in (torch.float16, torch.bfloat16):
    for d in (64, 128):
        for L, S in ((1000, 1000), (300, 1100)):
            for causal in (False, True):
                if causal and L != S:
                    continue
                q = torch.randn(2, 3, L, d, device=dev, dtype=dtype, generator=g, requires_grad=True)
                k = torch.randn(2, 3, S, d, device=dev, dtype=dtype, generator=g, requires_grad=True)
                v = torch.randn(2, 3, S, d, device=dev, dtype=dtype, generator=g, requires_grad=True)
                do = torch.randn(2, 3, L, d, device=dev, dtype=dtype, generator=g)
                q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
                ref = F.scaled_dot_product_attention(q32, k32, v32, is_causal=causal)
                ref_grads = torch.autograd.grad(ref, (q32, k32, v32), do.float())
                out = flash_attention(q, k, v, causal)
                grads = torch.autograd.grad(out, (q, k, v), do)
                err = (out.float() - ref).abs().max().item()
                tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
                worst = max(worst, err / tol)
                assert err < tol, (dtype, d, L, S, causal, err)
                # gradients: largest error relative to the largest gradient entry (16-bit P and dS)
                gtol = 5e-2 if dtype == torch.bfloat16 else 1e-2
                for name, a, b in zip(("dq", "dk", "dv"), grads, ref_grads):
                    rel = (a.float() - b).abs().max().item() / b.abs().max().item()
                    worst_grad = max(worst_grad, rel / gtol)
                    if rel >= gtol:
                        failures.append((str(dtype), d, L, S, causal, name, f"{rel:.2e}"))
print(f"correctness: outputs within tolerance (worst err/tol = {worst:.2f}); gradients: worst rel err/tol = "
      f"{worst_grad:.2f}, {len(failures)} failures {failures}; {time.time() - t0:.0f} s", flush=True)

B, H, dtype = 4, 32, torch.bfloat16
backends = ("flash", "cudnn", "efficient")
tables = {}
for direction in ("forward", "backward"):
    title = "TFLOP/s" if direction == "forward" else "backward TFLOP/s"
    print(f"\n{title}, {dtype}, B={B}, H={H}")
    print(f"{'d':>4} {'causal':>6} {'N':>6} {'triton':>7} " + " ".join(f"{n:>9}" for n in backends)
          + f" {'tri/flash':>9}")

    def show(key, tf):
        d, causal, N = key
        print(f"{d:>4} {causal!s:>6} {N:>6} {tf['triton']:>7.0f} " + " ".join(f"{tf[n]:>9.0f}" for n in backends)
              + f" {tf['triton'] / tf['flash']:>9.2f}", flush=True)

    tables[direction] = benchmark_backends(lengths=(1024, 4096, 16384), head_dims=(128, 64), dtype=dtype, batch=B,
                                           heads=H, backends=backends, warmup=10, rep=40, progress=show,
                                           direction=direction).rows

print("\ninstructions in the compiled kernels:")
for name in ("_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq"):
    try:
        print(f"  {name}: {ptx_instructions(getattr(ta, name))}")
    except Exception as err:  # a Triton version that keeps its caches elsewhere: say so, go on
        print(f"  {name}: could not read the PTX ({type(err).__name__}: {err})")

fw, bw = tables["forward"], tables["backward"]
nc, c = fw[(128, False, 4096)], fw[(128, True, 4096)]
print(f"\ntarget 1: triton / SDPA flash at N=4096, d=128, bf16 = {nc['triton'] / nc['flash']:.2f} (>= 0.90)")
print(f"target 2: causal / non-causal triton TFLOP/s at N=4096, d=128 = {c['triton'] / nc['triton']:.2f} (>= 0.85)")
print("target 3: forward triton / SDPA cuDNN, d=128 (>= 1.00): " + ", ".join(
    f"N={N} {'causal' if cz else 'non-causal'} {fw[(128, cz, N)]['triton'] / fw[(128, cz, N)]['cudnn']:.2f}"
    for cz in (False, True) for N in (4096, 16384)))
print("target 4: backward triton / SDPA flash backward, d=128 (>= 0.90): " + ", ".join(
    f"N={N} {'causal' if cz else 'non-causal'} {bw[(128, cz, N)]['triton'] / bw[(128, cz, N)]['flash']:.2f}"
    for cz in (False, True) for N in (4096, 16384)))
print(f"total {time.time() - t0:.0f} s")
sys.exit(1 if failures else 0)
