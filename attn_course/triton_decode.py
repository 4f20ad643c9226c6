"""Decode-phase attention kernels in Triton: split-K (FlashDecoding) and paged attention.

The torch versions, and the reasons for both, are in ``attn_course.decode_attention``; this
module writes them as kernels, in the order of Triton's tutorials: kernels -> Python wrappers
-> (tests against the torch versions and ``F.scaled_dot_product_attention``:
``tests/library/test_triton_decode.py``; GPU timings: ``benchmarks/decode_gpu_quick.py``).

Dimension glossary (see ``attn_course`` for the full one)::

    B      batch size          H     query heads        H_kv  key/value heads, n_rep = H // H_kv
    S      keys in the cache   d     head_dim (queries, keys and values: d_v == d here)
    n      number of splits    P     block (page) size  T     block-table width
    GROUP  n_rep rounded up to a power of two (at least 2): the query rows of one program
    BLOCK_N  keys per inner-loop step of the split-K kernel

Shapes: ``q (B, H, 1, d)`` (one new token per sequence); a contiguous cache ``k, v (B, H_kv, S, d)``;
a paged cache ``k_pool, v_pool (N_blk, P, H_kv, d)`` with ``block_table (B, T)`` and
``seq_lens (B,)`` (``attn_course.kv_cache.PagedCache``'s layout).

Three kernels, and one layout of partial results between them: ``m, l (B, H, n)`` and
``acc (B, H, n, d)`` in float32 (chapter 21's running max, sum and unnormalised output, per
split; ``m`` in natural-log units):

* ``_split_k_kernel``  program ``(b, kv head, split)``: the group's ``n_rep`` queries against
  the keys ``[split * chunk, (split + 1) * chunk)`` of one KV head, in steps of ``BLOCK_N``.
* ``_paged_kernel``    program ``(b, kv head, split)``: the same loop, but step ``j`` loads block
  ``block_table[b, j]`` of the pool (one block = one step), masking slots past ``seq_lens[b]``;
  a split takes a run of logical blocks (one split: PagedAttention v1; several: v2).
* ``_reduce_kernel``   program ``(b, head)``: merges the ``n`` partials of one row, all at once:
  ``out = sum_i e^{m_i - M} acc_i / sum_i e^{m_i - M} l_i`` with ``M = max_i m_i`` (the n-ary form
  of ``attn_course.flash.merge_partials``; an empty split has ``m = -inf`` and weighs 0).

A decode step is a matrix-vector product per head, so the programs do not use ``tl.dot`` (its
tiles need at least 16 rows; a group has ``n_rep``, often 1 to 8): scores are an elementwise
product summed over ``d``. The grouped layout still pays: each program loads a K/V tile **once**
for all ``n_rep`` query heads of its group (grouped-query attention's saving, realised in the
kernel). Exponentials are base 2 (``exp2``), as in ``attn_course.triton_attention``.

Runs on CUDA tensors (float16, bfloat16, float32) and, for testing, on CPU tensors under
Triton's interpreter: set ``TRITON_INTERPRET=1`` **before** importing this module (or triton).
Importing never fails; the wrappers say what is missing.
"""

from __future__ import annotations

import math
import os

import torch

from attn_course._validation import require_int, shape_error
from attn_course.decode_attention import check_decode_qkv, check_paged, choose_num_splits
from attn_course.scoring import default_scale

try:  # triton is optional: the kernels below only exist when it is installed
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = [
    "TRITON_AVAILABLE",
    "INTERPRETED",
    "split_k_partials_triton",
    "split_k_decode_triton",
    "paged_decode_triton",
]

TRITON_AVAILABLE = triton is not None
# Triton decides when a kernel is decorated (here, at import) whether it is compiled or interpreted.
INTERPRETED = TRITON_AVAILABLE and os.environ.get("TRITON_INTERPRET", "0") == "1"
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


# --------------------------------------------------------------------------- kernels

if TRITON_AVAILABLE:

    @triton.jit
    def _fold_block(acc, l_i, m_i, q, k, v, keep, qk_scale):
        """Fold one tile of keys into the group's running (acc, l_i, m_i): the online softmax, base 2.

        ``q (GROUP, d)``, ``k, v (BLOCK, d)`` float32, ``keep (BLOCK,)``. Every tile a program
        visits holds at least one kept key, so the running max is finite after the first tile and
        a masked score (-inf) gives exactly ``exp2(-inf) = 0``.
        """
        s = tl.sum(q[:, None, :] * k[None, :, :], 2) * qk_scale  # (GROUP, BLOCK) scores, base-2 units
        s = tl.where(keep[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # (GROUP,)
        alpha = tl.math.exp2(m_i - m_new)  # rescales what was summed against the old max
        p = tl.math.exp2(s - m_new[:, None])  # (GROUP, BLOCK)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], 1)  # (GROUP, d)
        return acc, l_i, m_new

    @triton.jit
    def _store_partial(M, Lsum, Acc, acc, l_i, m_i, b, heads, row_ok, split, H, NUM_SPLITS, HEAD_DIM: tl.constexpr):
        """Write one split's partial of the group's rows into ``m, l (B, H, n)``, ``acc (B, H, n, d)``."""
        offs_d = tl.arange(0, HEAD_DIM)
        row = (b * H + heads).to(tl.int64) * NUM_SPLITS + split  # (GROUP,) flat index into (B, H, n)
        tl.store(M + row, m_i * 0.6931471805599453, mask=row_ok)  # base-2 max -> natural log units
        tl.store(Lsum + row, l_i, mask=row_ok)
        tl.store(Acc + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=row_ok[:, None])

    @triton.jit
    def _split_k_kernel(
        Q, K, V, M, Lsum, Acc, sm_scale,  #
        stride_qb, stride_qh, stride_qd,  #
        stride_kb, stride_kh, stride_kn, stride_kd,  #
        stride_vb, stride_vh, stride_vn, stride_vd,  #
        H_KV, N_REP, N_KV, CHUNK, NUM_SPLITS,  #
        HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """Program (batch x KV head, split): the group's queries against keys [split*CHUNK, +CHUNK)."""
        pid = tl.program_id(0)
        split = tl.program_id(1)
        b = pid // H_KV
        kvh = pid % H_KV
        rows = tl.arange(0, GROUP)
        row_ok = rows < N_REP  # GROUP is n_rep rounded up: the extra rows are never stored
        heads = kvh * N_REP + rows  # (GROUP,) the query heads of this KV head's group
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd,
                    mask=row_ok[:, None], other=0.0).to(tl.float32)  # (GROUP, d), loaded once
        k_base = K + b.to(tl.int64) * stride_kb + kvh.to(tl.int64) * stride_kh
        v_base = V + b.to(tl.int64) * stride_vb + kvh.to(tl.int64) * stride_vh

        m_i = tl.zeros([GROUP], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([GROUP], dtype=tl.float32)
        acc = tl.zeros([GROUP, HEAD_DIM], dtype=tl.float32)
        qk_scale = sm_scale * 1.4426950408889634  # the score scale and log2(e) in one multiplier
        start = split * CHUNK
        end = tl.minimum(start + CHUNK, N_KV)  # start >= end: an empty split, the loop never runs
        for n0 in range(start, end, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,) key positions
            keep = cols < end
            k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                        mask=keep[:, None], other=0.0).to(tl.float32)  # (BLOCK_N, d)
            v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                        mask=keep[:, None], other=0.0).to(tl.float32)
            acc, l_i, m_i = _fold_block(acc, l_i, m_i, q, k, v, keep, qk_scale)
        _store_partial(M, Lsum, Acc, acc, l_i, m_i, b, heads, row_ok, split, H_KV * N_REP, NUM_SPLITS, HEAD_DIM)

    @triton.jit
    def _paged_kernel(
        Q, K_pool, V_pool, Table, Lens, M, Lsum, Acc, sm_scale,  #
        stride_qb, stride_qh, stride_qd,  #
        stride_kblk, stride_kp, stride_kh, stride_kd,  #
        stride_vblk, stride_vp, stride_vh, stride_vd,  #
        stride_tb, stride_tj,  #
        H_KV, N_REP, BLOCKS_PER_SPLIT, NUM_SPLITS,  #
        HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, P: tl.constexpr,
    ):
        """Program (batch x KV head, split): logical blocks [split*BPS, +BPS) of one sequence, read in place."""
        pid = tl.program_id(0)
        split = tl.program_id(1)
        b = pid // H_KV
        kvh = pid % H_KV
        rows = tl.arange(0, GROUP)
        row_ok = rows < N_REP
        heads = kvh * N_REP + rows
        offs_d = tl.arange(0, HEAD_DIM)
        offs_p = tl.arange(0, P)  # slots of a block
        q = tl.load(Q + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd,
                    mask=row_ok[:, None], other=0.0).to(tl.float32)  # (GROUP, d)
        seq_len = tl.load(Lens + b)
        n_blocks = (seq_len + P - 1) // P  # blocks this sequence uses
        j_start = split * BLOCKS_PER_SPLIT
        j_end = tl.minimum(j_start + BLOCKS_PER_SPLIT, n_blocks)

        m_i = tl.zeros([GROUP], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([GROUP], dtype=tl.float32)
        acc = tl.zeros([GROUP, HEAD_DIM], dtype=tl.float32)
        qk_scale = sm_scale * 1.4426950408889634
        for j in range(j_start, j_end):
            # the indirection: logical block j of sequence b is physical block Table[b, j]
            blk = tl.load(Table + b.to(tl.int64) * stride_tb + j * stride_tj).to(tl.int64)
            keep = j * P + offs_p < seq_len  # (P,): slots that hold a position
            k = tl.load(K_pool + blk * stride_kblk + kvh * stride_kh + offs_p[:, None] * stride_kp
                        + offs_d[None, :] * stride_kd, mask=keep[:, None], other=0.0).to(tl.float32)  # (P, d)
            v = tl.load(V_pool + blk * stride_vblk + kvh * stride_vh + offs_p[:, None] * stride_vp
                        + offs_d[None, :] * stride_vd, mask=keep[:, None], other=0.0).to(tl.float32)
            acc, l_i, m_i = _fold_block(acc, l_i, m_i, q, k, v, keep, qk_scale)
        _store_partial(M, Lsum, Acc, acc, l_i, m_i, b, heads, row_ok, split, H_KV * N_REP, NUM_SPLITS, HEAD_DIM)

    @triton.jit
    def _reduce_kernel(
        M, Lsum, Acc, Out,  #
        stride_ob, stride_oh, stride_od,  #
        H, NUM_SPLITS,  #
        HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr,
    ):
        """Program (batch x head): merge the row's NUM_SPLITS partials and normalise, once."""
        row = tl.program_id(0)
        b = row // H
        h = row % H
        offs_s = tl.arange(0, SPLITS)  # SPLITS: NUM_SPLITS rounded up to a power of two
        ok = offs_s < NUM_SPLITS
        offs_d = tl.arange(0, HEAD_DIM)
        base = row.to(tl.int64) * NUM_SPLITS
        m = tl.load(M + base + offs_s, mask=ok, other=float("-inf"))  # (SPLITS,)
        lsum = tl.load(Lsum + base + offs_s, mask=ok, other=0.0)
        acc = tl.load(Acc + (base + offs_s)[:, None] * HEAD_DIM + offs_d[None, :], mask=ok[:, None], other=0.0)
        m_all = tl.max(m, 0)  # finite: at least one split saw a key
        w = tl.exp(m - m_all)  # (SPLITS,) each split's rescaling; exp(-inf) = 0 for empty splits
        out = tl.sum(w[:, None] * acc, 0) / tl.sum(w * lsum, 0)  # (d,)
        tl.store(Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_d * stride_od,
                 out.to(Out.dtype.element_ty))


# --------------------------------------------------------------------------- Python wrappers


def _require_runnable(q: torch.Tensor, fn: str) -> None:
    """A clear error when triton, or a device that can run the kernels, is missing."""
    if not TRITON_AVAILABLE:
        raise ModuleNotFoundError(f"{fn} needs the `triton` package, which is not installed: `pip install triton` "
                                  "(Linux; or `pip install 'attn-course[triton]'`)")
    if q.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(f"{fn} got CPU tensors, but the Triton kernels were compiled for a GPU: set "
                           "TRITON_INTERPRET=1 before importing attn_course.triton_decode (or triton) to run "
                           "them on a CPU, or pass CUDA tensors")
    if q.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"{fn} runs on CUDA tensors (or CPU with TRITON_INTERPRET=1), got {q.device}")


def _check_kernel_shapes(q: torch.Tensor, d_v: int, fn: str) -> None:
    """One query per sequence, a power-of-two head width shared by values, a supported dtype."""
    B, H, L, d = q.shape
    if L != 1:
        raise shape_error("q", q, f"({B}, {H}, 1, {d}): one query per sequence (a decode step); "
                          "attn_course.decode_attention handles several")
    if d < 2 or d & (d - 1):
        raise ValueError(f"q has head_dim d = {d}; {fn} needs a power of two (16, 32, 64, 128, ...)")
    if d_v != d:
        raise ValueError(f"the values have width d_v = {d_v}; {fn} needs d_v == d = {d}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"q has dtype {q.dtype}; expected float16, bfloat16 or float32")
    _require_runnable(q, fn)


def _group(n_rep: int) -> int:
    """Query rows per program: ``n_rep`` rounded up to a power of two, at least 2."""
    return max(2, 1 << (n_rep - 1).bit_length())


def _num_sms(q: torch.Tensor) -> int:
    """The GPU's SM count (what ``num_splits=None`` fills); 8 in the interpreter (any small number)."""
    if q.device.type == "cuda":
        return torch.cuda.get_device_properties(q.device).multi_processor_count
    return 8


def _partials(B: int, H: int, n: int, d: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Empty float32 partials ``m, l (B, H, n)``, ``acc (B, H, n, d)``, contiguous."""
    return (torch.empty(B, H, n, device=device), torch.empty(B, H, n, device=device),
            torch.empty(B, H, n, d, device=device))


def _reduce(q: torch.Tensor, m: torch.Tensor, lsum: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Launch the reduce kernel: ``(B, H, 1, d)`` in ``q``'s dtype."""
    B, H, _, d = q.shape
    n = m.shape[2]
    out = torch.empty(B, H, 1, d, dtype=q.dtype, device=q.device)
    _reduce_kernel[(B * H,)](
        m, lsum, acc, out, out.stride(0), out.stride(1), out.stride(3), H, n,
        HEAD_DIM=d, SPLITS=max(2, triton.next_power_of_2(n)),
    )
    return out


def _resolve_splits(num_splits: int | None, q: torch.Tensor, programs: int, num_keys: int) -> int:
    if num_splits is None:
        return choose_num_splits(programs, num_keys, _num_sms(q))
    return require_int(num_splits, "num_splits")


def split_k_partials_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_splits: int, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The split-K kernel alone: the partials ``m, l (B, H, n)``, ``acc (B, H, n, d)``, float32.

    Split ``i`` covers the keys ``attn_course.decode_attention.split_bounds(S, n)[i]``; the
    partials equal ``split_k_partials``'s (moved to its ``(n, B, H, 1)`` layout) to rounding.
    """
    n_rep = check_decode_qkv(q, k, v)
    _check_kernel_shapes(q, v.shape[3], "split_k_partials_triton")
    n = require_int(num_splits, "num_splits")
    B, H, _, d = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    chunk = math.ceil(S / n)
    m, lsum, acc = _partials(B, H, n, d, q.device)
    block_n = 16 if INTERPRETED else max(16, min(128, triton.next_power_of_2(max(1, 8192 // (_group(n_rep) * d)))))
    _split_k_kernel[(B * H_kv, n)](
        q, k, v, m, lsum, acc, default_scale(d, scale),  #
        q.stride(0), q.stride(1), q.stride(3),  #
        *k.stride(), *v.stride(),  #
        H_kv, n_rep, S, chunk, n,  #
        HEAD_DIM=d, GROUP=_group(n_rep), BLOCK_N=block_n,
    )
    return m, lsum, acc


def split_k_decode_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_splits: int | None = None, scale: float | None = None
) -> torch.Tensor:
    """FlashDecoding in Triton: the split-K kernel, then the reduce kernel.

    Args:
        q: ``(B, H, 1, d)``, ``d`` a power of two; float16/bfloat16/float32 on CUDA, float32 on
            CPU with ``TRITON_INTERPRET=1``.
        k, v: ``(B, H_kv, S, d)``, ``H_kv`` dividing ``H``.
        num_splits: chunks of keys per (sequence, KV head); ``None`` picks enough to fill the GPU
            (``attn_course.decode_attention.choose_num_splits``).
        scale: score multiplier, default ``1 / sqrt(d)``.

    Returns:
        ``(B, H, 1, d)`` in ``q``'s dtype; ``B * H_kv * n`` programs, then ``B * H`` for the reduce.
    """
    check_decode_qkv(q, k, v)
    _check_kernel_shapes(q, v.shape[3], "split_k_decode_triton")
    n = _resolve_splits(num_splits, q, q.shape[0] * k.shape[1], k.shape[2])
    m, lsum, acc = split_k_partials_triton(q, k, v, n, scale)
    return _reduce(q, m, lsum, acc)


def paged_decode_triton(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    block_size: int | None = None,
    num_splits: int = 1,
    scale: float | None = None,
    check_values: bool = True,
) -> torch.Tensor:
    """Paged attention in Triton: K/V blocks read in place through the block table.

    Args:
        q: ``(B, H, 1, d)``, ``d`` a power of two.
        k_pool, v_pool: ``(N_blk, P, H_kv, d)``, ``P`` a power of two (``PagedCache``'s pools).
        block_table: ``(B, T)`` integer block ids; seq_lens: ``(B,)``, ``1 <= seq_lens[b] <= T * P``.
        block_size: ``P``, optional (read from the pool; checked when given).
        num_splits: splits of each sequence's blocks (1: one program per (sequence, KV head),
            PagedAttention v1; more: v2, the split-K idea on a paged cache).
        scale: score multiplier, default ``1 / sqrt(d)``.
        check_values: validate the block ids and lengths (``check_paged``); ``False`` skips these
            reads of the table, each a wait for the GPU, when timing steps over a trusted table.

    Returns:
        ``(B, H, 1, d)`` in ``q``'s dtype, equal to ``attn_course.decode_attention.paged_decode``.
        Nothing is copied: the only tensors written are the partials and the output.
    """
    n_rep, P = check_paged(q, k_pool, v_pool, block_table, seq_lens, block_size, check_values)
    _check_kernel_shapes(q, v_pool.shape[3], "paged_decode_triton")
    if P & (P - 1):
        raise ValueError(f"k_pool has blocks of P = {P} slots; paged_decode_triton needs a power of two (8, 16, 32, ...)")
    n = require_int(num_splits, "num_splits")
    B, H, _, d = q.shape
    H_kv = k_pool.shape[2]
    blocks_per_split = math.ceil(block_table.shape[1] / n)
    m, lsum, acc = _partials(B, H, n, d, q.device)
    lens = seq_lens.to(torch.int32).contiguous()
    _paged_kernel[(B * H_kv, n)](
        q, k_pool, v_pool, block_table, lens, m, lsum, acc, default_scale(d, scale),  #
        q.stride(0), q.stride(1), q.stride(3),  #
        *k_pool.stride(), *v_pool.stride(),  #
        block_table.stride(0), block_table.stride(1),  #
        H_kv, n_rep, blocks_per_split, n,  #
        HEAD_DIM=d, GROUP=_group(n_rep), P=P,
    )
    return _reduce(q, m, lsum, acc)
