"""Attention for the decode phase: one new query per sequence against a long KV cache.

Dimension glossary (see ``attn_course`` for the full one)::

    B      batch size (sequences)           H     query heads
    H_kv   key/value heads (divides H)      n_rep = H // H_kv, query heads per KV head (GQA)
    L      queries per sequence (1 when decoding one token)
    S      keys in the cache                d     head_dim (queries, keys)   d_v  value width
    n      number of splits (key chunks)    P     block (page) size
    N_blk  blocks in the pool               T     block-table width (blocks per sequence, at most)

Shapes: ``q (B, H, L, d)``, a contiguous cache ``k (B, H_kv, S, d)``, ``v (B, H_kv, S, d_v)``;
a paged cache is a pool ``k_pool (N_blk, P, H_kv, d)``, ``v_pool (N_blk, P, H_kv, d_v)`` (the
layout of ``attn_course.kv_cache.PagedCache``), a ``block_table (B, T)`` of block ids and
``seq_lens (B,)``: sequence ``b``'s position ``p`` lives in block ``block_table[b, p // P]``
at offset ``p % P``. Every query sees every key of its sequence (a decode step: the cache holds
only the past and the token itself).

Decoding is a matrix-*vector* product per head: each step reads the whole cache to do two
multiply-adds per number read. Two things follow, and each has a mechanism here:

* **Split-K (FlashDecoding, Dao et al. 2023).** A FlashAttention kernel gives one program to each
  (batch, head, block of queries). With one query per sequence and a small batch that is only
  ``B * H`` programs, too few to fill a GPU. Split the *keys* into ``n`` chunks instead: each
  chunk gives a partial result ``(m, l, acc)`` (chapter 21's online softmax), and the partials
  are merged with ``attn_course.flash.merge_partials``, exactly, in any order.
* **Paged attention (vLLM, Kwon et al. 2023).** A paged cache scatters a sequence over blocks of a
  shared pool. ``gather_then_attend`` first copies the blocks into a contiguous tensor (the
  whole cache written once more and read again); ``paged_decode`` reads the blocks where they
  are, through the block table, folding each block into the online softmax as it goes.

Stages, each tested against ``torch.nn.functional.scaled_dot_product_attention``:

* ``decode_reference``      softmax(q k^T * scale) v with GQA, in float32: the reference.
* ``split_bounds``          the key range ``[start, end)`` of each split.
* ``choose_num_splits``     as many splits as fit in one wave of programs, none shorter than a minimum.
* ``split_k_partials``      the ``(m, l, acc)`` of every split, stacked.
* ``merge_splits``          the partials merged with ``merge_partials`` and normalised.
* ``split_k_decode``        the two together: FlashDecoding in torch.
* ``check_paged``           the block table and lengths checked against the pool (clear errors).
* ``gather_kv``             a paged cache copied into contiguous ``(B, H_kv, S_max, d)`` tensors.
* ``gather_then_attend``    the naive baseline: gather, then attend with a length mask.
* ``paged_decode``          block by block through the block table, in place.

The Triton versions (a split-K kernel with its reduce kernel, a paged kernel) are in
``attn_course.triton_decode``.
"""

from __future__ import annotations

import math

import torch

from attn_course._validation import fmt_shape, require_floating, require_int, require_tensor, shape_error
from attn_course.flash import block_partial, merge_partials, online_softmax_update
from attn_course.scoring import default_scale

__all__ = [
    "check_decode_qkv",
    "decode_reference",
    "split_bounds",
    "choose_num_splits",
    "split_k_partials",
    "merge_splits",
    "split_k_decode",
    "check_paged",
    "gather_kv",
    "gather_then_attend",
    "paged_decode",
]


# --------------------------------------------------------------------------- validation


def _require_gqa_heads(q: torch.Tensor, k: torch.Tensor, k_name: str, k_pattern: str, kv_axis: int) -> int:
    """The number of query heads per KV head, ``H // H_kv``; a clear error unless H_kv divides H."""
    H, H_kv = q.shape[1], k.shape[kv_axis]
    if H_kv == 0 or H % H_kv:
        raise shape_error(k_name, k, f"{k_pattern} with H_kv dividing q's {H} query heads")
    return H // H_kv


def check_decode_qkv(q: object, k: object, v: object) -> int:
    """``q (B, H, L, d)``, ``k (B, H_kv, S, d)``, ``v (B, H_kv, S, d_v)``; returns ``n_rep = H // H_kv``."""
    for x, name, pattern in ((q, "q", "(B, H, L, d)"), (k, "k", "(B, H_kv, S, d)"), (v, "v", "(B, H_kv, S, d_v)")):
        require_floating(x, name)
        if x.dim() != 4:
            raise shape_error(name, x, pattern)
    B, H, L, d = q.shape
    if k.shape[0] != B or k.shape[3] != d:
        raise shape_error("k", k, f"({B}, H_kv, S, {d}): the B and d of q")
    n_rep = _require_gqa_heads(q, k, "k", f"({B}, H_kv, S, {d})", 1)
    if tuple(v.shape[:3]) != tuple(k.shape[:3]):
        raise shape_error("v", v, f"({B}, {k.shape[1]}, {k.shape[2]}, d_v): the B, H_kv and S of k")
    if k.shape[2] == 0:
        raise shape_error("k", k, f"({B}, {k.shape[1]}, S, {d}) with at least one key (S >= 1)")
    for x, name in ((k, "k"), (v, "v")):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype}; expected q's dtype {q.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device}; expected q's device {q.device}")
    return n_rep


def _grouped(q: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, H, L, d) -> (B, H_kv, n_rep * L, d)``: the queries of a group side by side, one KV head each.

    Query head ``h`` belongs to group ``h // n_rep`` (as in ``attn_course.gqa.repeat_kv``), so a
    view suffices: no key or value is copied, each KV head is read once for its whole group.
    """
    B, H, L, d = q.shape
    return q.reshape(B, H // n_rep, n_rep * L, d)


def _ungrouped(x: torch.Tensor, H: int) -> torch.Tensor:
    """``(B, H_kv, n_rep * L, ...) -> (B, H, L, ...)``: the inverse of ``_grouped``."""
    B, H_kv, rows = x.shape[:3]
    return x.reshape(B, H, rows * H_kv // H, *x.shape[3:])


# --------------------------------------------------------------------------- reference


def decode_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` over every key, GQA-aware, computed in float32, in ``q``'s dtype.

    The whole ``(B, H, L, S)`` score matrix in memory: the naive twin of every function below.
    """
    n_rep = check_decode_qkv(q, k, v)
    qg = _grouped(q.float(), n_rep)  # (B, H_kv, n_rep L, d)
    scores = qg @ k.float().transpose(-2, -1) * default_scale(q.shape[-1], scale)  # (B, H_kv, n_rep L, S)
    out = torch.softmax(scores, dim=-1) @ v.float()  # (B, H_kv, n_rep L, d_v)
    return _ungrouped(out, q.shape[1]).to(q.dtype)  # (B, H, L, d_v)


# --------------------------------------------------------------------------- split-K (FlashDecoding)


def split_bounds(num_keys: int, num_splits: int) -> list[tuple[int, int]]:
    """The key range ``[start, end)`` of each of ``num_splits`` splits of ``num_keys`` keys.

    Every split but the last has ``ceil(S / n)`` keys (what a kernel with a fixed chunk size
    does); when ``n`` does not divide ``S`` well, the last splits can be short or **empty**
    (``start == end``): an empty split's partial is ``m = -inf, l = 0, acc = 0``, which the merge
    ignores.
    """
    S = require_int(num_keys, "num_keys")
    n = require_int(num_splits, "num_splits")
    chunk = math.ceil(S / n)
    return [(min(i * chunk, S), min((i + 1) * chunk, S)) for i in range(n)]


def choose_num_splits(programs: int, num_keys: int, num_sms: int, min_keys: int = 256) -> int:
    """How many splits a split-K launch uses: the most that still fit ``programs * n`` in one wave.

    ``programs`` is what one split per row gives (``B * H_kv``: one program per sequence and KV
    head). ``n = num_sms // programs`` gives every SM a program without starting a second, nearly
    empty, wave; a split shorter than ``min_keys`` keys costs more in launch and merge than it
    saves. So ``n = max(1, min(num_sms // programs, num_keys // min_keys))``. (FlashAttention's own
    heuristic weighs the fullness of every wave; the idea is the same.)
    """
    P = require_int(programs, "programs")
    S = require_int(num_keys, "num_keys")
    sms = require_int(num_sms, "num_sms")
    require_int(min_keys, "min_keys")
    return max(1, min(sms // P, S // min_keys))


def split_k_partials(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_splits: int, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each split's partial result, as the programs of a split-K kernel compute them independently.

    Returns ``m (n, B, H, L)``, ``l (n, B, H, L)``, ``acc (n, B, H, L, d_v)``: split ``i``'s
    running max, sum of ``exp(score - m)`` and unnormalised weighted sum of values over its keys
    ``split_bounds(S, n)[i]`` (``attn_course.flash.block_partial``), in float32.
    """
    n_rep = check_decode_qkv(q, k, v)
    B, H, L, _ = q.shape
    sc = default_scale(q.shape[-1], scale)
    qg = _grouped(q.float(), n_rep)  # (B, H_kv, n_rep L, d)
    ms, ls, accs = [], [], []
    for start, end in split_bounds(k.shape[2], num_splits):
        if start == end:  # an empty split: nothing seen, the merge's identity
            m = torch.full(qg.shape[:3], float("-inf"), device=q.device)  # (B, H_kv, n_rep L)
            lsum, acc = torch.zeros_like(m), torch.zeros(*qg.shape[:3], v.shape[3], device=q.device)
        else:
            kc = k[:, :, start:end].float()  # (B, H_kv, chunk, d): this split's keys only
            vc = v[:, :, start:end].float()  # (B, H_kv, chunk, d_v)
            m, lsum, acc = block_partial(qg, kc, vc, scale=sc)  # (B, H_kv, n_rep L), ..., (B, H_kv, n_rep L, d_v)
        ms.append(_ungrouped(m, H))
        ls.append(_ungrouped(lsum, H))
        accs.append(_ungrouped(acc, H))
    return torch.stack(ms), torch.stack(ls), torch.stack(accs)  # (n, B, H, L), (n, B, H, L), (n, B, H, L, d_v)


def merge_splits(m: torch.Tensor, lsum: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Merge the stacked partials of ``split_k_partials`` and normalise: ``(B, H, L, d_v)`` in float32.

    The reduce step of FlashDecoding: ``merge_partials`` (chapter 21, the rule ring attention
    uses too) folds the splits in one by one; the result is ``acc / l`` (``lsum`` here) of the merged partial.
    """
    for x, name, pattern in ((m, "m", "(n, B, H, L)"), (lsum, "lsum", "(n, B, H, L)"), (acc, "acc", "(n, B, H, L, d_v)")):
        require_tensor(x, name)
        if x.dim() != len(pattern.split(",")):
            raise shape_error(name, x, pattern)
    if m.shape != lsum.shape or tuple(acc.shape[:-1]) != tuple(m.shape) or m.shape[0] == 0:
        raise shape_error("acc", acc, f"{fmt_shape(m.shape)} + (d_v,), with m and lsum of the same shape {fmt_shape(m.shape)}")
    state = (m[0], lsum[0], acc[0])
    for i in range(1, m.shape[0]):
        state = merge_partials(*state, m[i], lsum[i], acc[i])
    return state[2] / state[1].unsqueeze(-1)  # (B, H, L, d_v)


def split_k_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_splits: int, scale: float | None = None
) -> torch.Tensor:
    """Attention by split-K (FlashDecoding): ``num_splits`` independent partials, then one merge.

    Args:
        q: ``(B, H, L, d)`` (``L = 1`` for a decode step; any ``L`` works, every query seeing every key).
        k: ``(B, H_kv, S, d)``, ``H_kv`` dividing ``H`` (grouped-query attention).
        v: ``(B, H_kv, S, d_v)``.
        num_splits: how many chunks the keys are cut into (``split_bounds``).
        scale: score multiplier, default ``1 / sqrt(d)``.

    Returns:
        ``(B, H, L, d_v)`` in ``q``'s dtype, equal to ``decode_reference`` to rounding for every
        ``num_splits``.
    """
    m, lsum, acc = split_k_partials(q, k, v, num_splits, scale)
    return merge_splits(m, lsum, acc).to(q.dtype)


# --------------------------------------------------------------------------- paged


def check_paged(
    q: object,
    k_pool: object,
    v_pool: object,
    block_table: object,
    seq_lens: object,
    block_size: int | None = None,
    check_values: bool = True,
) -> tuple[int, int]:
    """Check a paged decode's inputs; return ``(n_rep, P)``.

    ``q (B, H, L, d)``, ``k_pool (N_blk, P, H_kv, d)``, ``v_pool (N_blk, P, H_kv, d_v)``,
    ``block_table (B, T)`` integer, ``seq_lens (B,)`` integer in ``[1, T * P]``; every block id that
    a sequence uses (the first ``ceil(seq_lens[b] / P)`` entries of its row) must lie in
    ``[0, N_blk)``. Entries past a sequence's last block are never read (use any value, e.g. -1).
    ``check_values=False`` checks shapes, dtypes and devices only: the value checks read the
    tensors, which on a GPU waits for the device (a timing loop over a trusted table skips them).
    """
    require_floating(q, "q")
    if q.dim() != 4:
        raise shape_error("q", q, "(B, H, L, d)")
    B, H, L, d = q.shape
    for x, name, pattern in ((k_pool, "k_pool", "(N_blk, P, H_kv, d)"), (v_pool, "v_pool", "(N_blk, P, H_kv, d_v)")):
        require_floating(x, name)
        if x.dim() != 4:
            raise shape_error(name, x, pattern)
        if x.dtype != q.dtype or x.device != q.device:
            raise TypeError(f"{name} is {x.dtype} on {x.device}; expected q's {q.dtype} on {q.device}")
    if k_pool.shape[3] != d:
        raise shape_error("k_pool", k_pool, f"(N_blk, P, H_kv, {d}): the head_dim d of q")
    n_rep = _require_gqa_heads(q, k_pool, "k_pool", f"(N_blk, P, H_kv, {d})", 2)
    if tuple(v_pool.shape[:3]) != tuple(k_pool.shape[:3]):
        raise shape_error("v_pool", v_pool, f"({k_pool.shape[0]}, {k_pool.shape[1]}, {k_pool.shape[2]}, d_v): "
                          "the N_blk, P and H_kv of k_pool")
    num_blocks, P = k_pool.shape[0], k_pool.shape[1]
    if block_size is not None and require_int(block_size, "block_size") != P:
        raise ValueError(f"block_size = {block_size} but k_pool has shape {fmt_shape(k_pool.shape)}: "
                         f"its blocks hold P = {P} positions")
    if num_blocks == 0 or P == 0:
        raise shape_error("k_pool", k_pool, "(N_blk, P, H_kv, d) with at least one block of at least one slot")
    for x, name, ndim, pattern in ((block_table, "block_table", 2, f"({B}, T)"), (seq_lens, "seq_lens", 1, f"({B},)")):
        require_tensor(x, name)
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got dtype {x.dtype}")
        if x.dim() != ndim or x.shape[0] != B:
            raise shape_error(name, x, f"{pattern}: one row per sequence of q")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device}; expected q's device {q.device}")
    if not check_values:
        return n_rep, P
    T = block_table.shape[1]
    # the values, all sequences at once (each check below is one synchronisation on a GPU)
    short, long = seq_lens < 1, seq_lens > T * P  # (B,)
    if short.any():
        b = int(short.nonzero()[0, 0])
        raise ValueError(f"seq_lens[{b}] = {int(seq_lens[b])}: every sequence needs at least one cached position")
    if long.any():
        b = int(long.nonzero()[0, 0])
        raise ValueError(f"seq_lens[{b}] = {int(seq_lens[b])} but block_table has shape {fmt_shape(block_table.shape)}: "
                         f"{T} blocks of P = {P} cover at most {T * P} positions")
    used = torch.arange(T, device=q.device)[None, :] < ((seq_lens + P - 1) // P)[:, None]  # (B, T) entries read
    bad = used & ((block_table < 0) | (block_table >= num_blocks))  # (B, T)
    if bad.any():
        b, j = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"block_table[{b}, {j}] = {int(block_table[b, j])} points outside the pool: k_pool has "
                         f"{num_blocks} blocks (ids 0 .. {num_blocks - 1})")
    return n_rep, P


def gather_kv(
    k_pool: torch.Tensor, v_pool: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy each sequence's blocks into contiguous ``(B, H_kv, T * P, d)`` tensors (checked inputs).

    Positions past ``seq_lens[b]`` hold whatever their block holds (or block 0's content where
    the table has no block): the caller masks them. This is the copy a paged kernel avoids.
    """
    B, T = block_table.shape
    N_blk, P, H_kv, d = k_pool.shape
    n_used = (seq_lens + P - 1) // P  # (B,) blocks each sequence uses
    used = torch.arange(T, device=block_table.device)[None, :] < n_used[:, None]  # (B, T)
    ids = torch.where(used, block_table, torch.zeros_like(block_table)).long()  # unused entries -> block 0
    k = k_pool[ids]  # (B, T, P, H_kv, d): a fresh copy of every block
    v = v_pool[ids]  # (B, T, P, H_kv, d_v)
    k = k.reshape(B, T * P, H_kv, d).transpose(1, 2)  # (B, H_kv, T P, d)
    v = v.reshape(B, T * P, H_kv, v_pool.shape[3]).transpose(1, 2)  # (B, H_kv, T P, d_v)
    return k, v


def gather_then_attend(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    block_size: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The naive paged decode: gather the blocks into a contiguous cache, then attend (length-masked).

    Same arguments and result as ``paged_decode``; what ``PagedCache.update`` does before the
    model attends. Costs a copy of the whole cache (written, then read again by the attention).
    """
    n_rep, _ = check_paged(q, k_pool, v_pool, block_table, seq_lens, block_size)
    k, v = gather_kv(k_pool, v_pool, block_table, seq_lens)  # (B, H_kv, T P, d), (B, H_kv, T P, d_v)
    H = q.shape[1]
    qg = _grouped(q, n_rep)  # (B, H_kv, n_rep L, d)
    keep = torch.arange(k.shape[2], device=q.device)[None, :] < seq_lens[:, None]  # (B, T P)
    mask = keep[:, None, None, :]  # (B, 1, 1, T P), True = may attend
    out = torch.nn.functional.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
    return _ungrouped(out, H)  # (B, H, L, d_v)


def paged_decode(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    block_size: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Decode attention that reads a paged cache in place, one block at a time (PagedAttention).

    Args:
        q: ``(B, H, L, d)``, every query of sequence ``b`` seeing its ``seq_lens[b]`` positions.
        k_pool: ``(N_blk, P, H_kv, d)``, ``H_kv`` dividing ``H``.  v_pool: ``(N_blk, P, H_kv, d_v)``.
        block_table: ``(B, T)`` integer block ids; row ``b``'s first ``ceil(seq_lens[b] / P)`` are used.
        seq_lens: ``(B,)`` integer lengths, ``1 <= seq_lens[b] <= T * P``.
        block_size: ``P``, optional (read from the pool; checked when given).
        scale: score multiplier, default ``1 / sqrt(d)``.

    Returns:
        ``(B, H, L, d_v)`` in ``q``'s dtype. Step ``j`` reads block ``block_table[b, j]`` of every
        sequence (a ``(B, P, H_kv, d)`` tile: what a kernel's program loads into fast memory),
        masks the slots past ``seq_lens[b]`` and folds the block into the running ``(m, l, acc)``
        with ``attn_course.flash.online_softmax_update``. No contiguous copy of the cache exists.
    """
    n_rep, P = check_paged(q, k_pool, v_pool, block_table, seq_lens, block_size)
    B, H, L, d = q.shape
    sc = default_scale(d, scale)
    qg = _grouped(q.float(), n_rep)  # (B, H_kv, R = n_rep L, d)
    R = qg.shape[2]
    m = torch.full((B, H // n_rep, R), float("-inf"), device=q.device)  # (B, H_kv, R)
    lsum = torch.zeros_like(m)
    acc = torch.zeros(B, H // n_rep, R, v_pool.shape[3], device=q.device)  # (B, H_kv, R, d_v)
    n_used = (seq_lens.long() + P - 1) // P  # (B,) blocks each sequence uses
    offsets = torch.arange(P, device=q.device)  # (P,)
    for j in range(int(n_used.max())):
        live = j < n_used  # (B,) sequences that still have a block here
        ids = torch.where(live, block_table[:, j].long(), 0)  # (B,) physical block of each sequence
        kb = k_pool[ids].float().permute(0, 2, 3, 1)  # (B, P, H_kv, d) -> (B, H_kv, d, P)
        vb = v_pool[ids].float().transpose(1, 2)  # (B, P, H_kv, d_v) -> (B, H_kv, P, d_v)
        scores = (qg @ kb) * sc  # (B, H_kv, R, d) @ (B, H_kv, d, P) -> (B, H_kv, R, P)
        keep = (j * P + offsets)[None, :] < seq_lens[:, None]  # (B, P): slots holding a position
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        m, lsum, acc = online_softmax_update(m, lsum, acc, scores, vb)
    return _ungrouped(acc / lsum.unsqueeze(-1), H).to(q.dtype)  # (B, H, L, d_v)
