"""FlashAttention-2 in Triton, forward and backward, in the order of Triton's fused-attention
tutorial: kernels -> Python wrappers -> an autograd function -> test against a naive reference.
(The benchmark, with a stated FLOP count, is chapter 22's experiment:
``attn_course.labs.flash_benchmark.benchmark_backends``.)

Dimension glossary (see ``attn_course`` for the full one)::

    B    batch size            H    number of heads
    L    number of queries     S    number of keys (= values)
    d    head_dim (queries, keys and values), one of 16, 32, 64, 128
    BLOCK_M  queries per program        BLOCK_N  keys per inner-loop step

Shapes: ``q (B, H, L, d)``, ``k (B, H, S, d)``, ``v (B, H, S, d)`` -> ``out (B, H, L, d)`` and
``lse (B, H, L)`` (float32): the log-sum-exp of each row of scaled scores, all the backward keeps
besides ``out``.

One program handles ``BLOCK_M`` queries of one (batch, head): it loads its query block once,
loops over key blocks with the online softmax of ``attn_course.flash`` (running max ``m_i``,
sum ``l_i``, accumulator ``acc`` in float32) and writes ``acc / l_i`` and ``lse = m_i + log l_i``
once. Differences from ``flash.tiled_attention``, all for speed on a GPU:

* exponentials in base 2 (``exp2``, one instruction): ``exp(x) = exp2(x * log2(e))``, so the
  scale ``1/sqrt(d)`` and ``log2(e)`` are folded into one multiplier;
* causal: key blocks after the query block are never visited, and only the blocks that touch
  the diagonal (or the ragged end of the keys) pay for a mask; the main loop is mask-free;
* block sizes, warps and pipeline stages are autotuned per (L, S, d, causal).

The backward (``flash_attention_backward``; ``attn_course.flash_backward`` is its readable torch
version) recomputes each tile of probabilities ``P = exp(S - lse)`` from ``Q``, ``K`` and the
saved ``lse`` instead of storing the ``(L, S)`` matrix. Two kernels, so that no program ever adds
into another's output: ``_attn_bwd_dkdv`` (one program per key block: loops over query blocks,
accumulates ``dK``, ``dV``) and ``_attn_bwd_dq`` (one program per query block: loops over key
blocks, accumulates ``dQ``), with ``D = rowsum(dO * O)`` computed first.
``FlashAttentionFunction`` ties forward and backward together, so ``flash_attention`` is
differentiable.

Runs on CUDA tensors (float16, bfloat16 from compute capability 8.0, float32 via TF32) and,
for testing, on CPU tensors under Triton's interpreter: set ``TRITON_INTERPRET=1`` in the
environment **before** this module (or triton) is imported. Importing this module never fails;
``flash_attention`` says what is missing when triton or a suitable device is not there.
"""

from __future__ import annotations

import os

import torch
from torch.autograd.function import once_differentiable

from attn_course._validation import fmt_shape, require_tensor, shape_error
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
    "FORWARD_GPU_CONFIGS",
    "BACKWARD_GPU_CONFIGS",
    "flash_attention",
    "flash_attention_forward",
    "flash_attention_backward",
    "FlashAttentionFunction",
    "reference_attention",
]

TRITON_AVAILABLE = triton is not None
# Triton decides when a kernel is decorated (here, at import) whether it is compiled or interpreted.
INTERPRETED = TRITON_AVAILABLE and os.environ.get("TRITON_INTERPRET", "0") == "1"
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)


# --------------------------------------------------------------------------- kernel


# The forward's autotuning list on a GPU, (BLOCK_M, BLOCK_N, num_stages, num_warps): a short list
# (each config is compiled once per (dtype, d, causal)) around what works on A100/H100 (128 x 64
# or 128 x 128 tiles, 8 warps) plus smaller tiles for GPUs with less shared memory (T4: 64 KiB);
# configs that do not fit are skipped by the autotuner.
FORWARD_GPU_CONFIGS = (
    (128, 64, 3, 8),
    (128, 128, 3, 8),
    (128, 64, 3, 4),
    (64, 64, 3, 4),
    (64, 32, 2, 4),
)
# The backward kernels' list, (owned block, looped block, num_stages, num_warps): the block a
# program owns (its keys for dK/dV, its queries for dQ) is the large side, the block it loops
# over the small one, so the five tiles alive per step stay in registers.
BACKWARD_GPU_CONFIGS = (
    (128, 32, 3, 4),
    (128, 64, 3, 8),
    (64, 32, 3, 4),
    (64, 64, 2, 4),
)


def _autotune_configs() -> list:
    if INTERPRETED:  # the interpreter runs Python per block: one small config, no tuning
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_stages=s, num_warps=w)
            for m, n, s, w in FORWARD_GPU_CONFIGS]


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
                # A large negative number, not -inf: no inf - inf can appear. Safe because key 0
                # is visible to every row (causal is upper-left aligned) and lies in every row's
                # first block (every loop starts at key 0): the running max is a real score from
                # the first block on, so exp2 of a masked score is exactly 0. A row that saw no
                # key at all would silently attend to its masked keys (the shift is the same for
                # all of them) instead of giving NaN.
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
        Q, K, V, Out, LSE, sm_scale,  #
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
        # what the backward needs of this row: log-sum-exp of the scaled scores, natural log
        # (m_i + log2 l_i is its base-2 version: divide by log2(e))
        lse = (m_i + tl.math.log2(l_i)) / 1.4426950408889634  # (BLOCK_M,)
        tl.store(LSE + off_hz.to(tl.int64) * N_Q + offs_m, lse, mask=offs_m < N_Q)  # LSE is (B, H, L) contiguous


# --------------------------------------------------------------------------- backward kernels


def _bwd_configs(kind: str) -> list:
    """Autotuning configs of the two backward kernels (``kind``: ``"dkdv"`` or ``"dq"``)."""
    if INTERPRETED:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    shapes = BACKWARD_GPU_CONFIGS
    if kind == "dkdv":  # owns BLOCK_N keys, loops over BLOCK_M queries
        return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_stages=s, num_warps=w) for n, m, s, w in shapes]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_stages=s, num_warps=w) for m, n, s, w in shapes]


if TRITON_AVAILABLE:

    @triton.jit
    def _attn_bwd_dkdv_inner(
        dk, dv, k, v,  #
        q_base, do_base, lse_base, delta_base,  #
        stride_qm, stride_qd, stride_dom, stride_dod,  #
        lo, hi, offs_n, N_Q, qk_scale,  #
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,  #
        MASK_CAUSAL: tl.constexpr, MASK_Q: tl.constexpr,
    ):
        """Add query blocks ``[lo, hi)`` into this key block's (dk, dv); tiles kept transposed, (keys, queries)."""
        offs_d = tl.arange(0, HEAD_DIM)
        for start_m in range(lo, hi, BLOCK_M):
            start_m = tl.multiple_of(start_m, BLOCK_M)
            rows = start_m + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query positions
            q_ptrs = q_base + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd  # (BLOCK_M, d)
            do_ptrs = do_base + rows[:, None] * stride_dom + offs_d[None, :] * stride_dod  # (BLOCK_M, d)
            if MASK_Q:  # the ragged last query block: rows past L read as 0 and are masked below
                q = tl.load(q_ptrs, mask=rows[:, None] < N_Q, other=0.0)
                do = tl.load(do_ptrs, mask=rows[:, None] < N_Q, other=0.0)
                lse2 = tl.load(lse_base + rows, mask=rows < N_Q, other=0.0) * 1.4426950408889634
                delta = tl.load(delta_base + rows, mask=rows < N_Q, other=0.0)
            else:
                q = tl.load(q_ptrs)
                do = tl.load(do_ptrs)
                lse2 = tl.load(lse_base + rows) * 1.4426950408889634  # (BLOCK_M,) base-2 log-sum-exp
                delta = tl.load(delta_base + rows)  # (BLOCK_M,) D = rowsum(dO * O)
            # recompute P^T: exp of the scaled scores minus the row's lse is exactly the softmax
            qkT = tl.dot(k, tl.trans(q)) * qk_scale - lse2[None, :]  # (BLOCK_N, BLOCK_M), base 2
            if MASK_CAUSAL or MASK_Q:
                keep = rows[None, :] < N_Q  # (1, BLOCK_M)
                if MASK_CAUSAL:
                    keep = keep & (rows[None, :] >= offs_n[:, None])  # (BLOCK_N, BLOCK_M)
                qkT = tl.where(keep, qkT, float("-inf"))  # exp2(-inf) = 0; nothing is subtracted after
            pT = tl.math.exp2(qkT)  # (BLOCK_N, BLOCK_M) = P^T
            dv += tl.dot(pT.to(do.dtype), do)  # dV += P^T dO
            dpT = tl.dot(v, tl.trans(do))  # (BLOCK_N, BLOCK_M) = (dO V^T)^T
            dsT = pT * (dpT - delta[None, :])  # dS = P * (dP - D), transposed
            dk += tl.dot(dsT.to(q.dtype), q)  # dK += dS^T Q (times the scale, at the end)
        return dk, dv

    @triton.autotune(
        configs=_bwd_configs("dkdv"),
        key=["N_Q", "N_KV", "HEAD_DIM", "CAUSAL"],
        prune_configs_by={"early_config_prune": _prune_configs},
    )
    @triton.jit(do_not_specialize=["N_Q", "N_KV"])
    def _attn_bwd_dkdv(
        Q, K, V, DO, LSE, Delta, DK, DV, sm_scale,  #
        stride_qb, stride_qh, stride_qm, stride_qd,  #
        stride_kb, stride_kh, stride_kn, stride_kd,  #
        stride_vb, stride_vh, stride_vn, stride_vd,  #
        stride_dob, stride_doh, stride_dom, stride_dod,  #
        stride_gb, stride_gh, stride_gn, stride_gd,  # of DK and DV (both contiguous (B, H, S, d))
        H, N_Q, N_KV,  #
        HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,  #
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """Program (key block, batch x head): ``dK``, ``dV`` of its keys, summed over the queries that see them."""
        start_n = tl.program_id(0) * BLOCK_N
        off_hz = tl.program_id(1)
        off_b = off_hz // H
        off_h = off_hz % H
        q_base = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
        k_base = K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
        v_base = V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
        do_base = DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
        lse_base = LSE + off_hz.to(tl.int64) * N_Q  # LSE and Delta are (B, H, L) contiguous
        delta_base = Delta + off_hz.to(tl.int64) * N_Q

        offs_n = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,) key positions
        offs_d = tl.arange(0, HEAD_DIM)
        kv_mask = offs_n[:, None] < N_KV  # keys past S read as 0: their rows of dK, dV are never stored
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        qk_scale = sm_scale * 1.4426950408889634

        end_q = tl.cdiv(N_Q, BLOCK_M) * BLOCK_M  # past the last (maybe ragged) query block
        full_q = (N_Q // BLOCK_M) * BLOCK_M  # query blocks [0, full_q) are complete
        if CAUSAL:
            # queries before this key block never see it: start at the query block holding
            # query start_n; blocks starting before mid may cross the diagonal (masked).
            lo = (start_n // BLOCK_M) * BLOCK_M
            mid = tl.minimum(tl.cdiv(start_n + BLOCK_N, BLOCK_M) * BLOCK_M, end_q)
            dk, dv = _attn_bwd_dkdv_inner(
                dk, dv, k, v, q_base, do_base, lse_base, delta_base,  #
                stride_qm, stride_qd, stride_dom, stride_dod,  #
                lo, mid, offs_n, N_Q, qk_scale,  #
                HEAD_DIM, BLOCK_M, True, True,
            )
            full_hi = tl.maximum(mid, full_q)
        else:
            mid = 0
            full_hi = full_q
        dk, dv = _attn_bwd_dkdv_inner(  # complete query blocks that see every key of this block: no mask
            dk, dv, k, v, q_base, do_base, lse_base, delta_base,  #
            stride_qm, stride_qd, stride_dom, stride_dod,  #
            mid, full_hi, offs_n, N_Q, qk_scale,  #
            HEAD_DIM, BLOCK_M, False, False,
        )
        dk, dv = _attn_bwd_dkdv_inner(  # the ragged last query block, if it was not masked above
            dk, dv, k, v, q_base, do_base, lse_base, delta_base,  #
            stride_qm, stride_qd, stride_dom, stride_dod,  #
            full_hi, end_q, offs_n, N_Q, qk_scale,  #
            HEAD_DIM, BLOCK_M, False, True,
        )
        dk = dk * sm_scale  # dS was taken with respect to the scaled scores
        g_offs = off_b.to(tl.int64) * stride_gb + off_h.to(tl.int64) * stride_gh
        g_ptrs = offs_n[:, None] * stride_gn + offs_d[None, :] * stride_gd  # (BLOCK_N, d)
        tl.store(DK + g_offs + g_ptrs, dk.to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + g_offs + g_ptrs, dv.to(DV.dtype.element_ty), mask=kv_mask)

    @triton.jit
    def _attn_bwd_dq_inner(
        dq, q, do, lse2, delta,  #
        k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,  #
        lo, hi, offs_m, N_KV, qk_scale,  #
        HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,  #
        MASK_CAUSAL: tl.constexpr, MASK_KV: tl.constexpr,
    ):
        """Add key blocks ``[lo, hi)`` into this query block's dq."""
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            cols = start_n + offs_n  # (BLOCK_N,) key positions
            k_ptrs = k_base + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd  # (BLOCK_N, d)
            v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd  # (BLOCK_N, d)
            if MASK_KV:
                k = tl.load(k_ptrs, mask=cols[:, None] < N_KV, other=0.0)
                v = tl.load(v_ptrs, mask=cols[:, None] < N_KV, other=0.0)
            else:
                k = tl.load(k_ptrs)
                v = tl.load(v_ptrs)
            qk = tl.dot(q, tl.trans(k)) * qk_scale - lse2[:, None]  # (BLOCK_M, BLOCK_N), base 2
            if MASK_CAUSAL or MASK_KV:
                keep = cols[None, :] < N_KV  # (1, BLOCK_N)
                if MASK_CAUSAL:
                    keep = keep & (offs_m[:, None] >= cols[None, :])  # (BLOCK_M, BLOCK_N)
                qk = tl.where(keep, qk, float("-inf"))
            p = tl.math.exp2(qk)  # (BLOCK_M, BLOCK_N): P recomputed
            dp = tl.dot(do, tl.trans(v))  # (BLOCK_M, BLOCK_N) = dO V^T
            ds = p * (dp - delta[:, None])  # dS = P * (dP - D)
            dq += tl.dot(ds.to(k.dtype), k)  # dQ += dS K (times the scale, at the end)
        return dq

    @triton.autotune(
        configs=_bwd_configs("dq"),
        key=["N_Q", "N_KV", "HEAD_DIM", "CAUSAL"],
        prune_configs_by={"early_config_prune": _prune_configs},
    )
    @triton.jit(do_not_specialize=["N_Q", "N_KV"])
    def _attn_bwd_dq(
        Q, K, V, DO, LSE, Delta, DQ, sm_scale,  #
        stride_qb, stride_qh, stride_qm, stride_qd,  #
        stride_kb, stride_kh, stride_kn, stride_kd,  #
        stride_vb, stride_vh, stride_vn, stride_vd,  #
        stride_dob, stride_doh, stride_dom, stride_dod,  #
        stride_gb, stride_gh, stride_gm, stride_gd,  # of DQ (contiguous (B, H, L, d))
        H, N_Q, N_KV,  #
        HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,  #
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """Program (query block, batch x head): ``dQ`` of its queries; the key loop of the forward, again."""
        start_m = tl.program_id(0)
        off_hz = tl.program_id(1)
        off_b = off_hz // H
        off_h = off_hz % H
        q_base = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
        k_base = K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
        v_base = V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
        do_base = DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh

        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query positions
        offs_d = tl.arange(0, HEAD_DIM)
        row_mask = offs_m < N_Q  # rows past L read as 0 and are never stored
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                    mask=row_mask[:, None], other=0.0)  # (BLOCK_M, d), loaded once
        do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
                     mask=row_mask[:, None], other=0.0)  # (BLOCK_M, d)
        lse2 = tl.load(LSE + off_hz.to(tl.int64) * N_Q + offs_m, mask=row_mask, other=0.0) * 1.4426950408889634
        delta = tl.load(Delta + off_hz.to(tl.int64) * N_Q + offs_m, mask=row_mask, other=0.0)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        qk_scale = sm_scale * 1.4426950408889634

        if CAUSAL:  # the forward's bounds: [0, full_end) mask-free, [full_end, end) masked
            end = tl.minimum((start_m + 1) * BLOCK_M, N_KV)
            full_end = (tl.minimum(start_m * BLOCK_M, N_KV) // BLOCK_N) * BLOCK_N
        else:
            end = N_KV
            full_end = (N_KV // BLOCK_N) * BLOCK_N
        dq = _attn_bwd_dq_inner(
            dq, q, do, lse2, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,  #
            0, full_end, offs_m, N_KV, qk_scale,  #
            HEAD_DIM, BLOCK_N, False, False,
        )
        dq = _attn_bwd_dq_inner(
            dq, q, do, lse2, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,  #
            full_end, end, offs_m, N_KV, qk_scale,  #
            HEAD_DIM, BLOCK_N, CAUSAL, True,
        )
        dq = dq * sm_scale
        dq_base = DQ + off_b.to(tl.int64) * stride_gb + off_h.to(tl.int64) * stride_gh
        tl.store(dq_base + offs_m[:, None] * stride_gm + offs_d[None, :] * stride_gd,
                 dq.to(DQ.dtype.element_ty), mask=row_mask[:, None])


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


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """What every wrapper checks: shapes, head width, dtype, a device that can run the kernel."""
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


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, sm_scale: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel on checked inputs: ``out (B, H, L, d)``, ``lse (B, H, L)`` float32."""
    B, H, L, d = q.shape
    S = k.shape[2]
    out = torch.empty(B, H, L, d, dtype=q.dtype, device=q.device)  # (B, H, L, d)
    lse = torch.empty(B, H, L, dtype=torch.float32, device=q.device)  # (B, H, L), contiguous
    grid = lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), B * H)  # (query blocks, batch x heads)
    _attn_fwd[grid](
        q, k, v, out, lse, sm_scale,  #
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),  #
        H, L, S,  #
        HEAD_DIM=d, CAUSAL=bool(causal),
    )
    return out, lse


def _backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
              grad_out: torch.Tensor, causal: bool, sm_scale: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernels on checked inputs: ``(dq, dk, dv)`` in the inputs' dtype."""
    B, H, L, d = q.shape
    S = k.shape[2]
    # D_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij: one number per query, O(L d) work, in float32
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()  # (B, H, L)
    lse = lse.contiguous()  # (B, H, L)
    dq = torch.empty(B, H, L, d, dtype=q.dtype, device=q.device)  # contiguous (B, H, L, d)
    dk = torch.empty(B, H, S, d, dtype=k.dtype, device=q.device)  # contiguous (B, H, S, d)
    dv = torch.empty(B, H, S, d, dtype=v.dtype, device=q.device)
    strides = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())
    grid_kv = lambda meta: (triton.cdiv(S, meta["BLOCK_N"]), B * H)  # (key blocks, batch x heads)
    _attn_bwd_dkdv[grid_kv](
        q, k, v, grad_out, lse, delta, dk, dv, sm_scale, *strides, *dk.stride(),  #
        H, L, S, HEAD_DIM=d, CAUSAL=bool(causal),
    )
    grid_q = lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), B * H)  # (query blocks, batch x heads)
    _attn_bwd_dq[grid_q](
        q, k, v, grad_out, lse, delta, dq, sm_scale, *strides, *dq.stride(),  #
        H, L, S, HEAD_DIM=d, CAUSAL=bool(causal),
    )
    return dq, dk, dv


class FlashAttentionFunction(torch.autograd.Function):
    """The forward kernel, with the backward kernels as its gradient.

    The forward saves ``q, k, v``, the output and the log-sum-exp per query (``(B, H, L)``):
    O(N) memory, where autograd through the naive attention would keep the ``(L, S)`` probabilities.
    Apply it through ``flash_attention``, which checks the inputs first.
    """

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, sm_scale: float):
        out, lse = _forward(q, k, v, causal, sm_scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.sm_scale = causal, sm_scale
        return out

    @staticmethod
    @once_differentiable  # the backward kernels are not themselves differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, lse, grad_out, ctx.causal, ctx.sm_scale)
        return dq, dk, dv, None, None  # no gradient for causal and the scale


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, scale: float | None = None
) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` by the Triton FlashAttention-2 kernels; differentiable.

    Args:
        q: ``(B, H, L, d)``, ``d`` in 16, 32, 64, 128; float16/bfloat16/float32 on CUDA, float32 on
            CPU with ``TRITON_INTERPRET=1``.
        k: ``(B, H, S, d)``.  v: ``(B, H, S, d)`` (the value width equals ``d`` here).
        causal: query ``i`` sees keys ``j <= i`` (upper-left aligned, like torch's ``is_causal``).
        scale: score multiplier, default ``1 / sqrt(d)``.

    Returns:
        ``(B, H, L, d)`` in the dtype of ``q``. Gradients (``.backward()``) come from the backward
        kernels (``FlashAttentionFunction``), by recomputation from the saved log-sum-exp.
    """
    _check_inputs(q, k, v)
    return FlashAttentionFunction.apply(q, k, v, bool(causal), default_scale(q.shape[3], scale))


def flash_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel alone (no autograd): ``out (B, H, L, d)`` and ``lse (B, H, L)``, float32.

    ``lse[b, h, i] = log sum_j exp(scale * q_i . k_j)`` over the keys query ``i`` sees (natural
    log): what ``flash_attention_backward`` needs besides ``out``.
    """
    _check_inputs(q, k, v)
    return _forward(q, k, v, bool(causal), default_scale(q.shape[3], scale))


def flash_attention_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    grad_out: torch.Tensor, causal: bool = False, scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` by the backward kernels, from the forward's ``out`` and ``lse``.

    ``grad_out`` is ``dL/d out``, ``(B, H, L, d)``; ``causal`` and ``scale`` must be the forward's.
    The Triton counterpart of ``attn_course.flash_backward.flash_backward``.
    """
    _check_inputs(q, k, v)
    B, H, L, d = q.shape
    for x, name in ((out, "out"), (grad_out, "grad_out")):
        require_tensor(x, name)
        if tuple(x.shape) != (B, H, L, d):
            raise shape_error(name, x, f"({B}, {H}, {L}, {d}): the shape of q")
        if x.dtype != q.dtype or x.device != q.device:
            raise TypeError(f"{name} is {x.dtype} on {x.device}; expected q's {q.dtype} on {q.device}")
    require_tensor(lse, "lse")
    if tuple(lse.shape) != (B, H, L) or lse.dtype != torch.float32 or lse.device != q.device:
        raise ValueError(f"lse has shape {fmt_shape(lse.shape)} and dtype {lse.dtype}; expected ({B}, {H}, {L}) "
                         f"float32 on {q.device}, as flash_attention_forward returns it")
    return _backward(q, k, v, out, lse, grad_out, bool(causal), default_scale(d, scale))


# --------------------------------------------------------------------------- test against a reference


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, scale: float | None = None
) -> torch.Tensor:
    """The naive reference in float32 (``flash.naive_attention`` on float32 copies), in ``q``'s dtype."""
    check_qkv(q, k, v)  # on the inputs as given, before the float32 copies
    return naive_attention(q.float(), k.float(), v.float(), causal=causal, scale=scale).to(q.dtype)  # (B, H, L, d)
