"""FlashAttention-2 forward pass in Triton, in the order of Triton's fused-attention tutorial:
kernel -> Python wrapper -> test against a naive reference. (The benchmark, with a stated FLOP
count, is chapter 22's experiment: ``attn_course.labs.flash_benchmark.benchmark_backends``.)

Dimension glossary (see ``attn_course`` for the full one)::

    B    batch size            H    number of heads
    L    number of queries     S    number of keys (= values)
    d    head_dim (queries, keys and values), one of 16, 32, 64, 128
    BLOCK_M  queries per program        BLOCK_N  keys per inner-loop step

Shapes: ``q (B, H, L, d)``, ``k (B, H, S, d)``, ``v (B, H, S, d)`` -> ``out (B, H, L, d)``.

One program handles ``BLOCK_M`` queries of one (batch, head): it loads its query block once,
loops over key blocks with the online softmax of ``attn_course.flash`` (running max ``m_i``,
sum ``l_i``, accumulator ``acc`` in float32) and writes ``acc / l_i`` once. Differences from
``flash.tiled_attention``, all for speed on a GPU:

* exponentials in base 2 (``exp2``, one instruction): ``exp(x) = exp2(x * log2(e))``, so the
  scale ``1/sqrt(d)`` and ``log2(e)`` are folded into one multiplier;
* causal: key blocks after the query block are never visited, and only the blocks that touch
  the diagonal (or the ragged end of the keys) pay for a mask; the main loop is mask-free;
* block sizes, warps and pipeline stages are autotuned per (L, S, d, causal).

Runs on CUDA tensors (float16, bfloat16 from compute capability 8.0, float32 via TF32) and,
for testing, on CPU tensors under Triton's interpreter: set ``TRITON_INTERPRET=1`` in the
environment **before** this module (or triton) is imported. Importing this module never fails;
``flash_attention`` says what is missing when triton or a suitable device is not there.
"""

from __future__ import annotations

import os

import torch

from attn_course.flash import check_qkv, naive_attention
from attn_course.scoring import default_scale

try:  # triton is optional: the kernel below only exists when it is installed
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = [
    "TRITON_AVAILABLE",
    "INTERPRETED",
    "SUPPORTED_HEAD_DIMS",
    "flash_attention",
    "reference_attention",
]

TRITON_AVAILABLE = triton is not None
# Triton decides when a kernel is decorated (here, at import) whether it is compiled or interpreted.
INTERPRETED = TRITON_AVAILABLE and os.environ.get("TRITON_INTERPRET", "0") == "1"
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)


# --------------------------------------------------------------------------- kernel


def _autotune_configs() -> list:
    if INTERPRETED:  # the interpreter runs Python per block: one small config, no tuning
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    # A short list (each config is compiled once per (dtype, d, causal)) around what works on
    # A100/H100 (128 x 64 or 128 x 128 tiles, 8 warps) plus smaller tiles for GPUs with less
    # shared memory (T4: 64 KiB); configs that do not fit are skipped by the autotuner.
    shapes = [  # (BLOCK_M, BLOCK_N, num_stages, num_warps)
        (128, 64, 3, 8),
        (128, 128, 3, 8),
        (128, 64, 3, 4),
        (64, 64, 3, 4),
        (64, 32, 2, 4),
    ]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_stages=s, num_warps=w) for m, n, s, w in shapes]


def _prune_configs(configs: list, named_args: dict, **kwargs) -> list:
    """Small head dims (16, 32) are cheap per key: skip the 8-warp configs (fewer compilations)."""
    d = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
    if d is not None and d <= 32:
        small = [c for c in configs if c.num_warps == 4]
        return small or configs
    return configs


if TRITON_AVAILABLE:

    @triton.jit
    def _attn_fwd_inner(
        acc, l_i, m_i, q,  #
        k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,  #
        lo, hi, offs_m, N_KV, qk_scale,  #
        HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,  #
        MASK_CAUSAL: tl.constexpr, MASK_KV: tl.constexpr,
    ):
        """Fold key blocks ``[lo, hi)`` into (acc, l_i, m_i); masks only where the flags say so."""
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            cols = start_n + offs_n  # (BLOCK_N,) key positions
            k_ptrs = k_base + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd  # (BLOCK_N, d)
            v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd  # (BLOCK_N, d)
            if MASK_KV:  # the ragged last block: keys past S read as 0 and are masked below
                k = tl.load(k_ptrs, mask=cols[:, None] < N_KV, other=0.0)
            else:
                k = tl.load(k_ptrs)
            qk = tl.dot(q, tl.trans(k))  # (BLOCK_M, BLOCK_N) float32 scores
            if MASK_CAUSAL or MASK_KV:
                keep = cols[None, :] < N_KV  # (1, BLOCK_N)
                if MASK_CAUSAL:
                    keep = keep & (offs_m[:, None] >= cols[None, :])  # (BLOCK_M, BLOCK_N)
                # a large negative number, not -inf: exp2 gives 0 and no inf - inf appears
                qk = qk * qk_scale + tl.where(keep, 0.0, -1.0e6)
                m_ij = tl.maximum(m_i, tl.max(qk, 1))
                qk = qk - m_ij[:, None]
            else:
                m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
                qk = qk * qk_scale - m_ij[:, None]  # one fused multiply-add per score
            p = tl.math.exp2(qk)  # (BLOCK_M, BLOCK_N) unnormalised probabilities
            alpha = tl.math.exp2(m_i - m_ij)  # rescales what was summed against the old max
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            if MASK_KV:
                v = tl.load(v_ptrs, mask=cols[:, None] < N_KV, other=0.0)
            else:
                v = tl.load(v_ptrs)
            acc += tl.dot(p.to(v.dtype), v)  # half-precision operands, float32 accumulator
            m_i = m_ij
        return acc, l_i, m_i

    # Tuned per (L, S, d, causal). The lengths are not specialised on (no recompilation for
    # each new length's divisibility): only the ragged last block depends on them.
    @triton.autotune(
        configs=_autotune_configs(),
        key=["N_Q", "N_KV", "HEAD_DIM", "CAUSAL"],
        prune_configs_by={"early_config_prune": _prune_configs},
    )
    @triton.jit(do_not_specialize=["N_Q", "N_KV"])
    def _attn_fwd(
        Q, K, V, Out, sm_scale,  #
        stride_qb, stride_qh, stride_qm, stride_qd,  #
        stride_kb, stride_kh, stride_kn, stride_kd,  #
        stride_vb, stride_vh, stride_vn, stride_vd,  #
        stride_ob, stride_oh, stride_om, stride_od,  #
        H, N_Q, N_KV,  #
        HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,  #
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """Program (query block, batch x head): ``Out[b, h, block] = softmax(Q K^T * scale) V``."""
        if CAUSAL:  # the longest rows first, so the short ones fill the tail of the launch
            start_m = tl.num_programs(0) - 1 - tl.program_id(0)
        else:
            start_m = tl.program_id(0)
        off_hz = tl.program_id(1)
        off_b = off_hz // H
        off_h = off_hz % H
        q_base = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
        k_base = K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
        v_base = V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
        o_base = Out + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh

        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query positions
        offs_d = tl.arange(0, HEAD_DIM)
        q_ptrs = q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
        q = tl.load(q_ptrs, mask=offs_m[:, None] < N_Q, other=0.0)  # (BLOCK_M, d), loaded once

        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")  # running max (base-2 units)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)  # running weighted sum of values
        qk_scale = sm_scale * 1.4426950408889634  # scale and log2(e) in one multiplier

        if CAUSAL:
            # keys [0, full_end) are visible to every query of the block: no mask at all;
            # keys [full_end, end) cross the diagonal or the ragged end: masked.
            end = tl.minimum((start_m + 1) * BLOCK_M, N_KV)
            full_end = (tl.minimum(start_m * BLOCK_M, N_KV) // BLOCK_N) * BLOCK_N
        else:
            end = N_KV
            full_end = (N_KV // BLOCK_N) * BLOCK_N
        acc, l_i, m_i = _attn_fwd_inner(
            acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,  #
            0, full_end, offs_m, N_KV, qk_scale,  #
            HEAD_DIM, BLOCK_N, False, False,
        )
        acc, l_i, m_i = _attn_fwd_inner(
            acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,  #
            full_end, end, offs_m, N_KV, qk_scale,  #
            HEAD_DIM, BLOCK_N, CAUSAL, True,
        )
        acc = acc / l_i[:, None]  # normalise once, at the end
        o_ptrs = o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=offs_m[:, None] < N_Q)


# --------------------------------------------------------------------------- Python wrapper


def _check_runnable(q: torch.Tensor) -> None:
    """Raise a clear error when triton or a device that can run the kernel is missing."""
    if not TRITON_AVAILABLE:
        raise ModuleNotFoundError(
            "flash_attention needs the `triton` package, which is not installed: "
            "`pip install triton` (Linux; or `pip install 'attn-course[triton]'`)"
        )
    if q.device.type == "cpu":
        if not INTERPRETED:
            raise RuntimeError(
                "flash_attention got CPU tensors, but the Triton kernel was compiled for a GPU: to run it "
                "on a CPU, set the environment variable TRITON_INTERPRET=1 before importing "
                "attn_course.triton_attention (or triton), or pass CUDA tensors"
            )
        return
    if q.device.type != "cuda":
        raise RuntimeError(f"flash_attention runs on CUDA tensors (or CPU with TRITON_INTERPRET=1), got {q.device}")
    if INTERPRETED:
        return
    major, minor = torch.cuda.get_device_capability(q.device)
    if major < 7 or (major == 7 and minor < 5):
        raise RuntimeError(
            f"flash_attention needs a GPU of compute capability >= 7.5 (Triton's minimum), "
            f"this one ({torch.cuda.get_device_name(q.device)}) is {major}.{minor}"
        )
    if q.dtype == torch.bfloat16 and major < 8:
        raise TypeError(
            f"bfloat16 needs compute capability >= 8.0, this GPU ({torch.cuda.get_device_name(q.device)}) "
            f"is {major}.{minor}: use float16"
        )


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, scale: float | None = None
) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` by the Triton FlashAttention-2 forward kernel.

    Args:
        q: ``(B, H, L, d)``, ``d`` in 16, 32, 64, 128; float16/bfloat16/float32 on CUDA, float32 on
            CPU with ``TRITON_INTERPRET=1``.
        k: ``(B, H, S, d)``.  v: ``(B, H, S, d)`` (the value width equals ``d`` here).
        causal: query ``i`` sees keys ``j <= i`` (upper-left aligned, like torch's ``is_causal``).
        scale: score multiplier, default ``1 / sqrt(d)``.

    Returns:
        ``(B, H, L, d)`` in the dtype of ``q``.
    """
    check_qkv(q, k, v)
    B, H, L, d = q.shape
    S = k.shape[2]
    if v.shape[3] != d:
        raise ValueError(f"v has shape {tuple(v.shape)}; expected ({B}, {H}, {S}, {d}): this kernel needs d_v == d")
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"q has head_dim d = {d}; expected one of {SUPPORTED_HEAD_DIMS}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"q has dtype {q.dtype}; expected float16, bfloat16 or float32")
    _check_runnable(q)
    if L == 0 or S == 0 or B * H == 0:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must have at least one query and one key")
    sm_scale = default_scale(d, scale)
    out = torch.empty(B, H, L, d, dtype=q.dtype, device=q.device)  # (B, H, L, d)
    grid = lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), B * H)  # (query blocks, batch x heads)
    _attn_fwd[grid](
        q, k, v, out, sm_scale,  #
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),  #
        H, L, S,  #
        HEAD_DIM=d, CAUSAL=bool(causal),
    )
    return out


# --------------------------------------------------------------------------- test against a reference


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, scale: float | None = None
) -> torch.Tensor:
    """The naive reference in float32 (``flash.naive_attention`` on float32 copies), in ``q``'s dtype."""
    check_qkv(q, k, v)  # on the inputs as given, before the float32 copies
    return naive_attention(q.float(), k.float(), v.float(), causal=causal, scale=scale).to(q.dtype)  # (B, H, L, d)
