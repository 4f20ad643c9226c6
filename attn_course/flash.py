"""Attention without the N x N matrix: the online softmax and tiled (FlashAttention-style) attention.

Dimension glossary (see ``attn_course`` for the full one)::

    B    batch size            H    number of heads
    L    number of queries     S    number of keys (= number of values); N when L == S
    d    query/key width       d_v  value width
    Bq   queries per block     Bk   keys per block
    M    fast-memory (SRAM) size, in elements, for the I/O model of ``memory_traffic``

Shapes: ``q (B, H, L, d)``, ``k (B, H, S, d)``, ``v (B, H, S, d_v)`` -> ``out (B, H, L, d_v)``.

The idea (Milakov & Gimelshein 2018; Dao et al. 2022): softmax needs the row maximum and the
row sum, but both can be *carried along* while the keys arrive block by block. For each query
row keep three running quantities,

    m    the largest score seen so far                       (B, H, L)
    l    sum_j exp(s_j - m) over the keys seen so far        (B, H, L)
    acc  sum_j exp(s_j - m) v_j over the keys seen so far    (B, H, L, d_v)

and when a new block of scores arrives, raise ``m`` if needed and rescale ``l`` and ``acc`` by
``exp(m_old - m_new)`` (``online_softmax_update``). At the end ``out = acc / l``. Only a
``(Bq, Bk)`` block of scores is ever alive. (Keeping ``acc`` unnormalised and dividing once at
the end is FlashAttention-2's arrangement, Dao 2023; the first FlashAttention divided by ``l``
after every block.)

Stages, each tested against the one before and against ``F.scaled_dot_product_attention``:

* ``naive_attention``        materialises the (B, H, L, S) scores: memory grows as N^2.
* ``online_softmax``         the softmax of a vector computed in blocks (the recurrence alone).
* ``online_softmax_update``  one step of the recurrence with values: the heart of FlashAttention.
* ``merge_partials``         combine two partial results (used by ring attention, ``ring_attention``).
* ``blockwise_attention``    the readable loop: query blocks x key blocks x ``online_softmax_update``.
* ``tiled_attention``        the same loop made fast on a CPU (see its docstring for the tricks).
* ``tiled_attention_numpy``  the step-by-step NumPy version, every line one equation.
* ``memory_traffic``         slow-memory reads + writes of naive vs tiled (Dao et al. 2022, Thm 2).
* ``attention_flops``        FLOPs of one forward pass (the count behind every TFLOP/s figure).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from attn_course._validation import require_floating, require_int, shape_error
from attn_course.masking import causal_mask
from attn_course.scoring import default_scale
from attn_course.utils import num_threads

__all__ = [
    "check_qkv",
    "naive_attention",
    "online_softmax",
    "online_softmax_stats_update",
    "online_softmax_update",
    "block_partial",
    "merge_partials",
    "blockwise_attention",
    "tiled_attention",
    "tiled_attention_numpy",
    "MemoryTraffic",
    "memory_traffic",
    "attention_flops",
]


# --------------------------------------------------------------------------- validation


def check_qkv(q: object, k: object, v: object, names: tuple[str, str, str] = ("q", "k", "v")) -> None:
    """``q (B, H, L, d)``, ``k (B, H, S, d)``, ``v (B, H, S, d_v)``: same dtype, device, B and H.

    Shared by the efficient-attention modules (``flash``, ``sparse``, ``linear``,
    ``triton_attention``, ``ring_attention``), which all take exactly four-dimensional inputs.
    """
    qn, kn, vn = names
    for x, name, pattern in ((q, qn, "(B, H, L, d)"), (k, kn, "(B, H, S, d)"), (v, vn, "(B, H, S, d_v)")):
        require_floating(x, name)
        if x.dim() != 4:
            raise shape_error(name, x, pattern)
    B, H, L, d = q.shape
    if k.shape[0] != B or k.shape[1] != H or k.shape[3] != d:
        raise shape_error(kn, k, f"({B}, {H}, S, {d}): the B, H and d of {qn}")
    S = k.shape[2]
    if v.shape[0] != B or v.shape[1] != H or v.shape[2] != S:
        raise shape_error(vn, v, f"({B}, {H}, {S}, d_v): the B, H of {qn} and the S of {kn}")
    for x, name in ((k, kn), (v, vn)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype}; expected {qn}'s dtype {q.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device}; expected {qn}'s device {q.device}")


def _block_sizes(block_size: int | tuple[int, int]) -> tuple[int, int]:
    """``64`` -> ``(64, 64)``; ``(Bq, Bk)`` stays."""
    if isinstance(block_size, tuple):
        if len(block_size) != 2:
            raise ValueError(f"block_size must be an int or a pair (Bq, Bk), got {block_size!r}")
        return require_int(block_size[0], "block_size[0] (Bq)"), require_int(block_size[1], "block_size[1] (Bk)")
    b = require_int(block_size, "block_size")
    return b, b


# --------------------------------------------------------------------------- naive


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, scale: float | None = None
) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` with the whole ``(B, H, L, S)`` score matrix in memory.

    ``causal`` hides keys ``j > i`` (upper-left aligned, like torch's ``is_causal``).
    """
    check_qkv(q, k, v)
    L, S = q.shape[2], k.shape[2]
    scores = (q @ k.transpose(-2, -1)) * default_scale(q.shape[-1], scale)  # (B, H, L, S)
    if causal:
        hidden = ~causal_mask(L, S, device=q.device)  # (L, S): True above the diagonal
        scores = scores.masked_fill(hidden, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # (B, H, L, S) @ (B, H, S, d_v) -> (B, H, L, d_v)


# --------------------------------------------------------------------------- the online softmax


def _safe_shift(m: torch.Tensor) -> torch.Tensor:
    """The running max to subtract, with ``-inf`` (nothing seen yet / all masked) replaced by 0.

    ``exp(-inf - (-inf))`` would be NaN; with a shift of 0 a fully masked row keeps ``l = 0``.
    """
    return torch.where(torch.isneginf(m), torch.zeros_like(m), m)


def online_softmax_stats_update(
    m: torch.Tensor, l: torch.Tensor, x_block: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the online normaliser: fold a block of logits into the running max and sum.

    Args:
        m: running max ``(...)``, ``-inf`` before the first block.
        l: running ``sum exp(x - m)`` ``(...)``, ``0`` before the first block.
        x_block: the next logits ``(..., n)``.

    Returns:
        ``(m_new, l_new)`` with ``l_new = l * exp(m - m_new) + sum(exp(x_block - m_new))``.
    """
    m_new = torch.maximum(m, x_block.amax(dim=-1))  # (...)
    shift = _safe_shift(m_new)
    l_new = l * torch.exp(m - shift) + torch.exp(x_block - shift.unsqueeze(-1)).sum(dim=-1)
    return m_new, l_new


def online_softmax(x: torch.Tensor, dim: int = -1, block_size: int = 64) -> torch.Tensor:
    """``torch.softmax(x, dim)``, with the max and the sum found in ONE pass over blocks of ``dim``.

    The classic stable softmax reads ``x`` three times (max, sum of exps, normalise); the online
    version (Milakov & Gimelshein 2018) carries the max and sum together, rescaling the sum each
    time the max grows, so it reads ``x`` twice. Equal to ``torch.softmax`` to rounding.
    """
    require_floating(x, "x")
    require_int(block_size, "block_size")
    if x.dim() == 0:
        raise shape_error("x", x, "at least one dimension to take the softmax over")
    xt = x.movedim(dim, -1)  # (..., n): the softmax dimension last
    m = torch.full(xt.shape[:-1], float("-inf"), dtype=x.dtype, device=x.device)  # (...)
    l = torch.zeros_like(m)  # (...)
    for start in range(0, xt.shape[-1], block_size):
        m, l = online_softmax_stats_update(m, l, xt[..., start : start + block_size])
    out = torch.exp(xt - m.unsqueeze(-1)) / l.unsqueeze(-1)  # (..., n)
    return out.movedim(-1, dim)


def online_softmax_update(
    m: torch.Tensor,
    l: torch.Tensor,
    acc: torch.Tensor,
    scores_block: torch.Tensor,
    v_block: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold one block of keys into the running softmax-weighted sum (FlashAttention's inner step).

    Args:
        m: running row max ``(..., L)``; ``-inf`` before the first block.
        l: running row sum of ``exp(score - m)`` ``(..., L)``; ``0`` before the first block.
        acc: running ``sum exp(score - m) * v`` ``(..., L, d_v)``; ``0`` before the first block.
        scores_block: this block's (scaled, masked with ``-inf``) scores ``(..., L, Bk)``.
        v_block: this block's values ``(..., Bk, d_v)``.

    Returns:
        ``(m_new, l_new, acc_new)``. After the last block, ``acc / l`` is the attention output.
        Inputs are not modified.
    """
    m_new = torch.maximum(m, scores_block.amax(dim=-1))  # (..., L)
    shift = _safe_shift(m_new)  # a row with every score -inf so far stays at l = 0, acc = 0
    alpha = torch.exp(m - shift)  # (..., L): rescales what was summed against the old max
    p = torch.exp(scores_block - shift.unsqueeze(-1))  # (..., L, Bk)
    l_new = alpha * l + p.sum(dim=-1)
    acc_new = alpha.unsqueeze(-1) * acc + p @ v_block  # (..., L, Bk) @ (..., Bk, d_v) -> (..., L, d_v)
    return m_new, l_new, acc_new


def block_partial(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The partial result ``(m, l, acc)`` of queries ``q (..., L, d)`` against ONE block of keys.

    ``mask`` is boolean, broadcastable to ``(..., L, S)``, ``True`` = may attend. Combine partials
    with ``merge_partials``; ``acc / l`` is the output (``0/0`` where every key was masked).
    """
    scores = (q @ k.transpose(-2, -1)) * default_scale(q.shape[-1], scale)  # (..., L, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    L, d_v = q.shape[-2], v.shape[-1]
    m0 = torch.full(scores.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)  # (..., L)
    acc0 = torch.zeros(*scores.shape[:-2], L, d_v, dtype=q.dtype, device=q.device)  # (..., L, d_v)
    return online_softmax_update(m0, torch.zeros_like(m0), acc0, scores, v)


def merge_partials(
    m_a: torch.Tensor,
    l_a: torch.Tensor,
    acc_a: torch.Tensor,
    m_b: torch.Tensor,
    l_b: torch.Tensor,
    acc_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Combine the partial results of the same queries over two disjoint sets of keys.

    Each partial is ``(m (..., L), l (..., L), acc (..., L, d_v))`` as returned by
    ``block_partial`` / ``online_softmax_update``. Both are rescaled to the common max
    ``m = max(m_a, m_b)``; the merge is associative and commutative, so the key blocks can
    arrive in any order (ring attention relies on this).
    """
    m = torch.maximum(m_a, m_b)  # (..., L)
    shift = _safe_shift(m)
    alpha, beta = torch.exp(m_a - shift), torch.exp(m_b - shift)  # (..., L)
    l = alpha * l_a + beta * l_b
    acc = alpha.unsqueeze(-1) * acc_a + beta.unsqueeze(-1) * acc_b  # (..., L, d_v)
    return m, l, acc


# --------------------------------------------------------------------------- tiled attention


def _causal_hidden(i0: int, nq: int, j0: int, nk: int, device: torch.device) -> torch.Tensor:
    """``(nq, nk)`` bool, True where key ``j0 + c`` is after query ``i0 + r`` (to be hidden)."""
    rows = torch.arange(i0, i0 + nq, device=device).unsqueeze(1)  # (nq, 1)
    cols = torch.arange(j0, j0 + nk, device=device).unsqueeze(0)  # (1, nk)
    return cols > rows  # (nq, nk)


def blockwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    block_size: int | tuple[int, int] = 64,
    scale: float | None = None,
) -> torch.Tensor:
    """Tiled attention written for reading: for each query block, ``online_softmax_update`` over key blocks.

    ``block_size`` is ``Bq = Bk`` or a pair ``(Bq, Bk)``. With ``causal``, key blocks entirely
    after the query block are skipped and the diagonal block is masked.
    """
    check_qkv(q, k, v)
    bq, bk = _block_sizes(block_size)
    B, H, L, d = q.shape
    S, d_v = k.shape[2], v.shape[3]
    c = default_scale(d, scale)
    out = torch.empty(B, H, L, d_v, dtype=q.dtype, device=q.device)
    for i0 in range(0, L, bq):
        qi = q[:, :, i0 : i0 + bq]  # (B, H, nq, d)
        nq = qi.shape[2]
        m = torch.full((B, H, nq), float("-inf"), dtype=q.dtype, device=q.device)
        l = torch.zeros(B, H, nq, dtype=q.dtype, device=q.device)
        acc = torch.zeros(B, H, nq, d_v, dtype=q.dtype, device=q.device)
        stop = min(S, i0 + nq) if causal else S  # causal: keys after the block's last query are never seen
        for j0 in range(0, stop, bk):
            kj, vj = k[:, :, j0 : min(j0 + bk, stop)], v[:, :, j0 : min(j0 + bk, stop)]  # (B, H, nk, d)
            s = (qi @ kj.transpose(-2, -1)) * c  # (B, H, nq, nk): the only scores alive
            if causal and j0 + kj.shape[2] - 1 > i0:  # the block crosses the diagonal
                s = s.masked_fill(_causal_hidden(i0, nq, j0, kj.shape[2], q.device), float("-inf"))
            m, l, acc = online_softmax_update(m, l, acc, s, vj)
        out[:, :, i0 : i0 + nq] = acc / l.unsqueeze(-1)
    return out


# Lazy rescaling. FlashAttention-4 (Zadouri et al. 2026) rescales the accumulator only when the
# running max rises by more than a threshold, and keeps the old (stale) max otherwise. Here we go
# one step further: after the first key block, a block is exponentiated against the running max
# m without first finding its own max (one pass fewer over the scores). Its row sums bound every
# exp(s - m) in the row; only when one exceeds this limit (a score more than ~20 - ln(Bk) nats
# above m, or an overflow to inf) is the block redone with a raised max. Below it,
# exp(s - m) <= e^20 is harmless in float32 and the result is exact to rounding, since every term
# of a row (acc and l alike) carries the same factor exp(-m), which cancels in acc / l; m never
# exceeds the row's true max, so nothing underflows that would not in the standard algorithm.
_ROW_SUM_LIMIT = math.exp(20.0)


def tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    block_size: int | tuple[int, int] = 64,
    scale: float | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    """Attention computed block by block: never more than ``B * H * Bq * Bk`` scores in memory.

    The same recurrence as ``blockwise_attention`` (``online_softmax_update``), arranged so a CPU
    runs it near the speed of torch's fused kernel:

    * every head of a query block is handled in one batched call (``(B*H, Bq, d)`` views, no copies);
    * scores go into one preallocated buffer; ``torch.baddbmm`` computes ``scale * q k^T - m``
      in the matrix multiply itself, and ``exp_`` / ``baddbmm_`` work in place;
    * lazy rescaling: after the first key block, blocks are exponentiated against the running
      max ``m`` without computing their own max; only when a row sum shows a score far above
      ``m`` (rare) is the block redone with a raised ``m`` (see ``_ROW_SUM_LIMIT``);
    * on a CPU, query blocks are shared among ``threads`` Python threads, each running
      single-threaded torch ops (see the comment in the code);
    * causal: key blocks after the query block are skipped, only blocks crossing the diagonal
      are masked.

    Args:
        q: ``(B, H, L, d)``.  k: ``(B, H, S, d)``.  v: ``(B, H, S, d_v)``.
        causal: query ``i`` sees keys ``j <= i`` (upper-left aligned, like torch's ``is_causal``).
        block_size: ``Bq = Bk``, or a pair ``(Bq, Bk)``. Larger blocks mean fewer Python steps
            but a larger score buffer ``(B*H, Bq, Bk)`` per worker; on a CPU ``(128, 256)`` is a
            good choice at N = 4096 (1 MiB of scores per worker for 8 heads in float32).
        scale: score multiplier, default ``1 / sqrt(d)``.
        threads: CPU worker threads (default ``torch.get_num_threads()``); query blocks are
            shared among them. Leave at the default unless measuring.

    Returns:
        ``(B, H, L, d_v)``, equal to ``naive_attention`` to rounding.
    """
    check_qkv(q, k, v)
    bq, bk = _block_sizes(block_size)
    if threads is not None:
        require_int(threads, "threads")
    B, H, L, d = q.shape
    S, d_v = k.shape[2], v.shape[3]
    q3 = q.reshape(B * H, L, d)  # (BH, L, d): a view when q is contiguous
    kt3 = k.reshape(B * H, S, d).transpose(1, 2)  # (BH, d, S)
    v3 = v.reshape(B * H, S, d_v)  # (BH, S, d_v)
    out = torch.empty(B * H, L, d_v, dtype=q.dtype, device=q.device)  # (BH, L, d_v)
    starts = list(range(0, L, bq))
    n_workers = min(len(starts), torch.get_num_threads() if threads is None else threads)
    if q.device.type != "cpu" or n_workers <= 1:
        _tiled_rows(q3, kt3, v3, out, starts, causal, bq, bk, default_scale(d, scale))
        return out.view(B, H, L, d_v)
    # One Python thread per core, each running single-threaded torch ops on its own query blocks
    # (round-robin, so causal work is balanced). torch releases the GIL inside its ops. On a
    # shared machine this beats many short multi-threaded ops, each of which ends in a barrier
    # that waits for the slowest (possibly descheduled) thread.
    with num_threads(1), ThreadPoolExecutor(n_workers) as pool:
        jobs = [
            pool.submit(_tiled_rows, q3, kt3, v3, out, starts[w::n_workers], causal, bq, bk, default_scale(d, scale))
            for w in range(n_workers)
        ]
        for job in jobs:
            job.result()  # re-raises a worker's exception
    return out.view(B, H, L, d_v)


def _tiled_rows(
    q3: torch.Tensor,
    kt3: torch.Tensor,
    v3: torch.Tensor,
    out: torch.Tensor,
    starts: list[int],
    causal: bool,
    bq: int,
    bk: int,
    c: float,
) -> None:
    """``tiled_attention``'s loop for the query blocks beginning at ``starts``; writes ``out (BH, L, d_v)``.

    ``q3 (BH, L, d)``, ``kt3 (BH, d, S)`` (keys transposed), ``v3 (BH, S, d_v)``; ``c`` is the score
    scale. The recurrence of ``online_softmax_update`` with ``-m`` kept instead of ``m`` (it goes
    straight into ``baddbmm``) and lazy rescaling: a later block is exponentiated against the
    running max without looking for its own max, and redone with a raised max only when a row
    sum exceeds ``_ROW_SUM_LIMIT`` (see the comment above it).
    """
    BH, L, _ = q3.shape
    S, d_v = kt3.shape[2], v3.shape[2]
    dt, dev = q3.dtype, q3.device
    # The only buffers: one score block, the accumulator and the row statistics of a query block.
    s_buf = torch.empty(BH, min(bq, L), min(bk, S), dtype=dt, device=dev)  # (BH, Bq, Bk)
    acc_buf = torch.empty(BH, min(bq, L), d_v, dtype=dt, device=dev)  # (BH, Bq, d_v)
    hidden_cache: dict[tuple[int, int, int], torch.Tensor] = {}
    for i0 in starts:
        nq = min(bq, L - i0)
        qi = q3[:, i0 : i0 + nq]  # (BH, nq, d)
        acc = acc_buf[:, :nq]  # (BH, nq, d_v)
        neg_m = l = None
        stop = min(S, i0 + nq) if causal else S
        for j0 in range(0, stop, bk):
            nk = min(bk, stop - j0)
            s = s_buf[:, :nq, :nk]  # (BH, nq, nk)
            ktj, vj = kt3[:, :, j0 : j0 + nk], v3[:, j0 : j0 + nk]  # (BH, d, nk), (BH, nk, d_v)
            if neg_m is None:  # first block: plain scores, then the true row max
                torch.baddbmm(s, qi, ktj, beta=0.0, alpha=c, out=s)  # s = c q k^T
            else:  # later blocks: subtract the running max inside the matmul
                torch.baddbmm(neg_m.unsqueeze(-1), qi, ktj, alpha=c, out=s)  # s = c q k^T - m
            if causal and j0 + nk - 1 > i0:  # the block crosses the diagonal
                key = (j0 - i0, nq, nk)
                if key not in hidden_cache:
                    hidden_cache[key] = _causal_hidden(i0, nq, j0, nk, dev)
                s.masked_fill_(hidden_cache[key], float("-inf"))
            if neg_m is None:
                m = s.amax(dim=-1)  # (BH, nq): finite, key 0 is visible to every query
                neg_m = -m
                s.sub_(m.unsqueeze(-1)).exp_()  # p = exp(s - m)
                l = s.sum(dim=-1)  # (BH, nq)
                torch.bmm(s, vj, out=acc)  # (BH, nq, nk) @ (BH, nk, d_v)
                continue
            # Optimistic: exponentiate against the current m without looking for the block's max.
            s.exp_()  # p = exp(s - m), in place
            row_sum = s.sum(dim=-1)  # (BH, nq); >= exp(block max - m), so it bounds every p
            if not float(row_sum.max()) <= _ROW_SUM_LIMIT:  # (rare; also catches inf) redo with a new max
                torch.baddbmm(neg_m.unsqueeze(-1), qi, ktj, alpha=c, out=s)  # the scores again
                if causal and j0 + nk - 1 > i0:
                    s.masked_fill_(hidden_cache[(j0 - i0, nq, nk)], float("-inf"))
                shift = s.amax(dim=-1).clamp_(min=0.0)  # (BH, nq): raise m only where the block beats it
                s.sub_(shift.unsqueeze(-1)).exp_()
                alpha = torch.exp(-shift)  # (BH, nq): rescales what was summed against the old m
                l.mul_(alpha)
                acc.mul_(alpha.unsqueeze(-1))
                neg_m.sub_(shift)
                row_sum = s.sum(dim=-1)
            l.add_(row_sum)
            acc.baddbmm_(s, vj)  # acc += p @ v_j
        torch.div(acc, l.unsqueeze(-1), out=out[:, i0 : i0 + nq])


# --------------------------------------------------------------------------- NumPy, step by step


def tiled_attention_numpy(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal: bool = False,
    block_size: int = 64,
    scale: float | None = None,
) -> np.ndarray:
    """FlashAttention's forward pass in plain NumPy, one line per equation: Dao et al. 2022, Alg. 1,
    with FlashAttention-2's two changes (Dao 2023): queries in the outer loop, and ``acc`` kept
    unnormalised and divided by ``l`` once at the end.

    Takes and returns arrays ``(B, H, L, d)``, ``(B, H, S, d)``, ``(B, H, S, d_v)`` ->
    ``(B, H, L, d_v)``, computed in the inputs' dtype.
    """
    arrays = []
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (B, H, L or S, d)")
        arrays.append(x)
    q, k, v = arrays
    if k.shape[:2] != q.shape[:2] or v.shape[:3] != k.shape[:3] or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; expected (B, H, L, d), (B, H, S, d), (B, H, S, d_v)"
        )
    bs = require_int(block_size, "block_size")
    B, H, L, d = q.shape
    S, d_v = k.shape[2], v.shape[3]
    c = default_scale(d, scale)
    out = np.empty((B, H, L, d_v), dtype=q.dtype)
    for i0 in range(0, L, bs):
        Qi = q[:, :, i0 : i0 + bs]  # (B, H, nq, d)      load a query block
        nq = Qi.shape[2]
        m = np.full((B, H, nq), -np.inf, dtype=q.dtype)  # running max
        l = np.zeros((B, H, nq), dtype=q.dtype)  # running sum of exp
        acc = np.zeros((B, H, nq, d_v), dtype=q.dtype)  # running weighted sum of values
        for j0 in range(0, S, bs):
            if causal and j0 > i0 + nq - 1:
                break  # every key of this block (and of the later ones) is in the future
            Kj, Vj = k[:, :, j0 : j0 + bs], v[:, :, j0 : j0 + bs]  # (B, H, nk, d)  load a key block
            Sij = c * Qi @ np.swapaxes(Kj, -1, -2)  # (B, H, nq, nk)  scores of this tile
            if causal:
                rows = np.arange(i0, i0 + nq)[:, None]
                cols = np.arange(j0, j0 + Kj.shape[2])[None, :]
                Sij = np.where(cols > rows, -np.inf, Sij)  # hide the future
            m_new = np.maximum(m, Sij.max(axis=-1))  # new running max (finite: key 0 is always seen)
            P = np.exp(Sij - m_new[..., None])  # (B, H, nq, nk)  unnormalised probabilities
            alpha = np.exp(m - m_new)  # how much the old sums shrink
            l = alpha * l + P.sum(axis=-1)
            acc = alpha[..., None] * acc + P @ Vj  # (B, H, nq, d_v)
            m = m_new
        out[:, :, i0 : i0 + nq] = acc / l[..., None]  # normalise once, at the end
    return out


# --------------------------------------------------------------------------- I/O model


@dataclass(frozen=True)
class MemoryTraffic:
    """Slow-memory (HBM) traffic of one attention forward pass, in elements and in bytes."""

    naive_elements: int  # reads + writes of standard attention (S and P go through slow memory)
    flash_elements: int  # reads + writes of FlashAttention, Algorithm 1
    block_rows: int  # B_r = min(ceil(M / 4d), d): query rows per block
    block_cols: int  # B_c = ceil(M / 4d): key columns per block
    dtype_bytes: int

    @property
    def naive_bytes(self) -> int:
        return self.naive_elements * self.dtype_bytes

    @property
    def flash_bytes(self) -> int:
        return self.flash_elements * self.dtype_bytes

    @property
    def ratio(self) -> float:
        """How many times less traffic the tiled algorithm needs."""
        return self.naive_elements / self.flash_elements


def memory_traffic(
    N: int, head_dim: int, sram_bytes: int, dtype_bytes: int = 2, batch_heads: int = 1
) -> MemoryTraffic:
    """Count the slow-memory reads and writes of naive vs tiled attention (Dao et al. 2022, Theorem 2).

    Standard attention (their Algorithm 0), per head, in elements::

        read Q, K (2Nd), write S (N^2); read S, write P (2 N^2); read P, V, write O (N^2 + 2Nd)
        total 4 N d + 4 N^2                                   = Theta(N d + N^2)

    FlashAttention (Algorithm 1) with ``M = sram_bytes / dtype_bytes`` elements of SRAM, blocks
    ``B_c = ceil(M / 4d)``, ``B_r = min(B_c, d)`` and ``T_c = ceil(N / B_c)`` key blocks: K and V
    are read once; for every key block, all of Q and O and the statistics (l, m) are read and
    O, l, m written::

        total 2 N d + T_c (3 N d + 4 N)  ~  12 N^2 d^2 / M        = Theta(N^2 d^2 / M)

    Args:
        N: sequence length (queries = keys).  head_dim: d.
        sram_bytes: fast memory per streaming multiprocessor (e.g. 192 KiB on an A100, 228 KiB on H100).
        dtype_bytes: bytes per element (2 for float16/bfloat16, 4 for float32).
        batch_heads: ``B * H``; traffic is per head times this.
    """
    for value, name in ((N, "N"), (head_dim, "head_dim"), (sram_bytes, "sram_bytes"),
                        (dtype_bytes, "dtype_bytes"), (batch_heads, "batch_heads")):
        require_int(value, name)
    M = sram_bytes // dtype_bytes
    if M < 4 * head_dim:
        raise ValueError(
            f"sram_bytes={sram_bytes} holds {M} elements; expected at least 4 * head_dim = {4 * head_dim} "
            "(one row each of Q, K, V and O)"
        )
    block_cols = math.ceil(M / (4 * head_dim))
    block_rows = min(block_cols, head_dim)
    t_c = math.ceil(N / block_cols)
    naive = 4 * N * head_dim + 4 * N * N
    flash = 2 * N * head_dim + t_c * (3 * N * head_dim + 4 * N)
    return MemoryTraffic(naive * batch_heads, flash * batch_heads, block_rows, block_cols, dtype_bytes)


def attention_flops(B: int, H: int, L: int, S: int, d: int, causal: bool = False) -> float:
    """FLOPs of one forward pass: two matmuls of ``2 * L * S * d`` each per head, halved when causal.

    ``4 * B * H * L * S * d`` (a multiply-add counts as 2); with ``causal`` only about half the
    score matrix is computed, and the convention (FlashAttention, Triton's tutorial) halves it.
    """
    flops = 4.0 * B * H * L * S * d
    return flops / 2 if causal else flops
