"""Exercise 8: decoding with a KV cache (practises chapters 14, 15 and 16).

Tasks:
    top_p_filter(logits, p)                  nucleus filtering: logits (..., V), the rest -> -inf
    offset_causal_mask(T, S_cached)          (T, S_cached + T) bool, True = may attend: T new queries
                                             after S_cached cached positions
    cached_attention_step(x, cache_k, cache_v, w_q, w_k, w_v) -> (out (T, d), cache_k, cache_v (S + T, d))
                                             one attention layer, one chunk of T new positions;
                                             graded by feeding a sequence in chunks (driver
                                             ``chunked_attention``): it must equal recomputation
    class RingCache(window, head_dim)        ``update(k, v) -> (keys, values, key_positions)``: a ring
                                             buffer of the last ``window`` positions, position p in
                                             slot p % window; graded by generating with it
                                             (driver ``ring_generate``)
    class PagedCache(block_size, num_blocks, head_dim)   ``update(seq, k, v)`` through block tables,
                                             copy-on-write after ``fork``; graded by generating two
                                             continuations of one prompt (driver ``paged_generate``)

References: ``attn_course.decoding.top_p_filter``, ``attn_course.masking.causal_mask`` (lower
right), ``attn_course.kv_cache.SlidingWindowCache`` (``RingCacheReference`` wraps it) and
``attn_course.kv_cache.PagedCache`` (``PagedCacheReference`` is its per-sequence version; the
tests check both against recomputation without a cache).

Dimension glossary: T new positions, S cached positions (S_cached), D model width, d head_dim,
V vocabulary, W window, P block size.
"""

from __future__ import annotations

import math

import torch

from ..decoding import top_p_filter
from ..grading.tasks import Case, Exercise, Task, randn
from ..kv_cache import SlidingWindowCache
from ..masking import causal_mask

_ATTENTIONS = ("attn_course.attention.scaled_dot_product_attention", "attn_course.attention.attention_weights_unchecked",
               "attn_course.gqa.grouped_query_attention",
               "torch.nn.functional.scaled_dot_product_attention",
               "torch.nn.functional.multi_head_attention_forward")


# --------------------------------------------------------------------------- references


def _top_p_reference(logits: torch.Tensor, p: float) -> torch.Tensor:
    return top_p_filter(logits, p)


def offset_causal_mask_reference(T: int, S_cached: int) -> torch.Tensor:
    """The new queries are the last T of S_cached + T positions: the diagonal ends bottom right."""
    return causal_mask(T, S_cached + T, align="lower_right")  # (T, S_cached + T)


def cached_attention_step_reference(x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
                                    w_q: torch.Tensor, w_k: torch.Tensor,
                                    w_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One causal attention layer over T new positions after S cached ones; returns the grown cache."""
    q = x @ w_q  # (T, d)
    keys = torch.cat([cache_k, x @ w_k])  # (S + T, d): the new keys after the cached ones
    values = torch.cat([cache_v, x @ w_v])
    T, S = x.shape[0], cache_k.shape[0]
    scores = q @ keys.T / math.sqrt(q.shape[-1])  # (T, S + T)
    scores = scores.masked_fill(~offset_causal_mask_reference(T, S), float("-inf"))
    return scores.softmax(dim=-1) @ values, keys, values  # (T, d), (S + T, d), (S + T, d)


class RingCacheReference:
    """``SlidingWindowCache`` for one layer, one head, one sequence: ``update(k (T, d), v (T, d))``."""

    def __init__(self, window: int, head_dim: int) -> None:
        self._cache = SlidingWindowCache(1, 1, head_dim, batch_size=1, window=window)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        positions = self._cache.key_positions(k.shape[0])  # (S,), asked before the update moves seq_len
        keys, values = self._cache.update(0, k[None, None], v[None, None])  # (1, 1, S, d) each
        return keys[0, 0], values[0, 0], positions


class PagedCacheReference:
    """``PagedCache``'s block tables for one layer, one head, with sequences of their own lengths.

    Position ``p`` of a sequence lives in row ``table[p // P] * P + p % P`` of the flat pool
    ``(num_blocks * P, d)``. ``fork`` shares every block; appending into a shared, partly filled
    block copies it first (copy-on-write); full shared blocks are never written, so stay shared.
    """

    def __init__(self, block_size: int, num_blocks: int, head_dim: int) -> None:
        self.block_size = block_size
        self.key_pool = torch.zeros(num_blocks * block_size, head_dim)  # (num_blocks * P, d)
        self.value_pool = torch.zeros(num_blocks * block_size, head_dim)
        self.free_blocks = list(range(num_blocks - 1, -1, -1))  # a stack: block 0 first
        self.ref_counts = [0] * num_blocks
        self.block_tables: list[list[int]] = []
        self.lengths: list[int] = []

    def _allocate(self) -> int:
        if not self.free_blocks:
            raise RuntimeError("out of blocks")
        block = self.free_blocks.pop()
        self.ref_counts[block] = 1
        return block

    def new_sequence(self) -> int:
        self.block_tables.append([])
        self.lengths.append(0)
        return len(self.block_tables) - 1

    def fork(self, seq: int) -> int:
        for block in self.block_tables[seq]:
            self.ref_counts[block] += 1
        self.block_tables.append(list(self.block_tables[seq]))
        self.lengths.append(self.lengths[seq])
        return len(self.block_tables) - 1

    def _rows(self, seq: int, start: int, end: int) -> torch.Tensor:
        P = self.block_size
        pos = torch.arange(start, end)  # (n,)
        return torch.tensor(self.block_tables[seq], dtype=torch.long)[pos // P] * P + pos % P  # (n,)

    def update(self, seq: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        P, table = self.block_size, self.block_tables[seq]
        start, end = self.lengths[seq], self.lengths[seq] + k.shape[0]
        if start % P and self.ref_counts[table[-1]] > 1:  # appending into a shared, partly filled block
            old, new = table[-1], self._allocate()
            for pool in (self.key_pool, self.value_pool):
                pool[new * P:(new + 1) * P] = pool[old * P:(old + 1) * P]
            self.ref_counts[old] -= 1
            table[-1] = new
        while len(table) * P < end:  # ceil(end / P) blocks
            table.append(self._allocate())
        rows = self._rows(seq, start, end)
        self.key_pool[rows] = k
        self.value_pool[rows] = v
        self.lengths[seq] = end
        read = self._rows(seq, 0, end)  # (S,)
        return self.key_pool[read], self.value_pool[read], torch.arange(end)


# --------------------------------------------------------------------------- cases


def _top_p_cases(g: torch.Generator) -> list[Case]:
    peaked = torch.tensor([[4.0, 1.0, 0.5, 0.0, -1.0, -2.0]])  # one token holds most of the mass
    flat = torch.tensor([[0.0, 0.0, 0.0, 0.0]])  # mass 0.25 each: p = 0.5 keeps exactly two
    return [
        Case("a batch of rows, p = 0.9", (randn(g, 3, 10, scale=2.0), 0.9)),
        Case("p = 0.5", (randn(g, 2, 7, scale=2.0), 0.5)),
        Case("one token already above p", (peaked, 0.8),
             hint="Here the most likely token alone holds more than p: it must be kept, and only it."),
        Case("p = 1 keeps every token", (randn(g, 2, 5), 1.0),
             hint="With p = 1 no token may be dropped."),
        Case("four equal tokens, p = 0.5", (flat, 0.5),
             hint="Each token holds 0.25: the first two reach p = 0.5 exactly, so the other two go."),
        Case("tokens not in sorted order, batch and heads", (randn(g, 2, 3, 9, scale=3.0), 0.7),
             hint="The logits are not sorted here: each kept or dropped token must be the same vocabulary "
                  "entry as in your sorted view."),
    ]


def _mask_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("prefill: nothing cached", (5, 0), hint="S_cached = 0: the plain causal mask."),
        Case("decode: one query after 6 cached", (1, 6),
             hint="One new query, the newest position: it sees every cached key and itself."),
        Case("a chunk of 3 after 4 cached", (3, 4),
             hint="The new queries are positions S_cached .. S_cached + T - 1; the keys are positions "
                  "0 .. S_cached + T - 1."),
        Case("a chunk longer than the cache", (6, 2)),
        Case("one query, nothing cached", (1, 0)),
    ]


def _step_cases(g: torch.Generator) -> list[Case]:
    def case(N, D, d, chunks):
        return (randn(g, N, D), randn(g, D, d, scale=D ** -0.5), randn(g, D, d, scale=D ** -0.5),
                randn(g, D, d, scale=D ** -0.5), list(chunks))

    return [
        Case("the whole sequence at once (empty cache)", case(6, 8, 4, [6]),
             hint="One call with an empty cache (S = 0): a causal attention over the chunk."),
        Case("prefill then one token at a time", case(7, 8, 4, [3, 1, 1, 1, 1])),
        Case("one token at a time from the start", case(5, 6, 3, [1, 1, 1, 1, 1]),
             hint="The first call gets a cache with 0 positions; each later one gets what the previous returned."),
        Case("chunks after a cache", case(10, 8, 4, [4, 3, 2, 1]),
             hint="A chunk of several new queries after cached positions: a query sees every cached key, "
                  "the chunk's keys up to its own position, and none after it."),
        Case("head_dim differs from the width", case(9, 12, 5, [2, 5, 1, 1])),
    ]


def _tiny_lm(g: torch.Generator, V: int, D: int, d: int, L: int) -> tuple[torch.Tensor, ...]:
    """Weights of ``drivers``' tiny model: (wte, wpe, w_q, w_k, w_v, w_o, w_u)."""
    return (randn(g, V, D), randn(g, L, D), randn(g, D, d, scale=D ** -0.5), randn(g, D, d, scale=D ** -0.5),
            randn(g, D, d, scale=D ** -0.5), randn(g, d, D, scale=d ** -0.5), randn(g, D, V, scale=2 * D ** -0.5))


def _tokens(g: torch.Generator, V: int, n: int) -> list[int]:
    return torch.randint(0, V, (n,), generator=g).tolist()


def _ring_cases(g: torch.Generator) -> list[Case]:
    V, D, d = 11, 16, 4

    def case(window, chunks, steps, slope=0.3):
        L = sum(chunks) + steps
        return (_tiny_lm(g, V, D, d, L), slope, window, [_tokens(g, V, n) for n in chunks], steps)

    return [
        Case("window larger than the sequence", case(16, [5], 6),
             hint="The ring never fills here: it works as a growing cache."),
        Case("window 4, prompt 6, 5 steps", case(4, [6], 5),
             hint="The prompt is longer than the window: its first queries need keys that the ring "
                  "cannot keep afterwards."),
        Case("window equal to the prompt", case(5, [5], 4),
             hint="The ring is exactly full after the prompt: the first decoded position goes to slot 0."),
        Case("wrapping several times", case(3, [2], 12),
             hint="The positions wrap around the ring several times: each key must be reported with the "
                  "position it holds, which the slot alone does not tell."),
        Case("a prompt in chunks across the wrap", case(5, [3, 4], 5),
             hint="The second chunk of the prompt (several new positions) arrives when the ring is partly "
                  "full and does not fit in what is left."),
        Case("window 1", case(1, [3], 4)),
    ]


def _paged_cases(g: torch.Generator) -> list[Case]:
    V, D, d = 11, 16, 4

    def case(block_size, num_blocks, program, L=32, slope=0.2):
        return (_tiny_lm(g, V, D, d, L), slope, block_size, num_blocks, program)

    def two() -> tuple[list[int], list[int]]:  # two different first tokens: the branches write different keys
        a, shift = _tokens(g, V, 1)[0], _tokens(g, V - 1, 1)[0] + 1
        return [a], [(a + shift) % V]

    b1, b2 = two()
    c1, c2 = two()
    e1, e2 = two()
    f1, f2 = two()
    return [
        Case("one sequence, block 4, prompt 6", case(4, 8, [("feed", 0, _tokens(g, V, 6)), ("decode", 0, 7)]),
             hint="One sequence: the lengths (6, then up to 13) are not multiples of the block size."),
        Case("fork inside a block", case(4, 8, [("feed", 0, _tokens(g, V, 6)), ("fork", 0), ("feed", 1, b2),
                                                ("feed", 0, b1), ("decode", 0, 3), ("decode", 1, 3)]),
             hint="The fork happens after 6 positions with blocks of 4: both sequences then write into the "
                  "block they share."),
        Case("fork at a block boundary", case(3, 8, [("feed", 0, _tokens(g, V, 6)), ("fork", 0), ("feed", 0, c1),
                                                     ("feed", 1, c2), ("decode", 1, 2), ("decode", 0, 2)]),
             hint="The fork happens after 6 positions with blocks of 3: every shared block is full."),
        Case("a chunk after the fork", case(5, 10, [("feed", 0, _tokens(g, V, 7)), ("fork", 0),
                                                    ("feed", 1, e2 + _tokens(g, V, 6)), ("feed", 0, e1),
                                                    ("decode", 0, 4), ("decode", 1, 2)]),
             hint="After the fork one sequence appends 7 positions in one call, across blocks."),
        Case("a fork of a fork", case(2, 24, [("feed", 0, _tokens(g, V, 5)), ("fork", 0), ("feed", 1, f2),
                                              ("fork", 1), ("feed", 2, _tokens(g, V, 3)), ("feed", 0, f1),
                                              ("decode", 1, 2), ("decode", 2, 2), ("decode", 0, 2)]),
             hint="Three sequences: some blocks are shared by all three, some by two."),
    ]


EXERCISE = Exercise(
    id="ex08_kv_cache",
    title="Decoding with a KV cache",
    tasks=(
        Task("top_p_filter", _top_p_reference, _top_p_cases, points=2, arg_names=("logits", "p"),
             forbidden=("attn_course.decoding.top_p_filter", "attn_course.decoding.sampling_distribution"),
             hint="Work on the tokens ranked by probability (torch.sort gives the ranking and where each "
                  "token came from). For each ranked token, what matters is the probability of the tokens "
                  "ranked *above* it: a cumulative sum gives it."),
        Task("offset_causal_mask", offset_causal_mask_reference, _mask_cases, points=1,
             arg_names=("T", "S_cached"),
             forbidden=("attn_course.masking.causal_mask", "torch.nn.attention.bias.causal_lower_right"),
             hint="Write the absolute position of each new query (a column vector) and of each key (a row "
                  "vector); the mask compares the two."),
        Task("cached_attention_step", cached_attention_step_reference, _step_cases, points=2,
             arg_names=("x", "w_q", "w_k", "w_v", "chunks"), forbidden=_ATTENTIONS, driver="chunked_attention",
             hint="Only the new positions need projecting. Append their keys and values to the cache before "
                  "attending (a query sees itself), and mask with the mask of offset_causal_mask."),
        Task("RingCache", RingCacheReference, _ring_cases, points=3,
             arg_names=("weights", "slope", "window", "prompt_chunks", "steps"),
             forbidden=("attn_course.kv_cache.SlidingWindowCache", "attn_course.kv_cache.StaticCache"),
             driver="ring_generate",  # its memory rule: drivers.ring_generate counts what the cache holds
             hint="Keep two (window, head_dim) buffers and the number of positions seen. For one new token "
                  "with a full ring, the oldest slot is the one to overwrite; the position a slot holds "
                  "follows from the newest position and the slot. A chunk that does not fit: attend over "
                  "what the ring held (oldest first) plus the whole chunk, then keep the chunk's last "
                  "`window` positions."),
        Task("PagedCache", PagedCacheReference, _paged_cases, points=3,
             arg_names=("weights", "slope", "block_size", "num_blocks", "program"),
             forbidden=("attn_course.kv_cache.PagedCache",), driver="paged_generate",
             hint="Before writing, two things: if the sequence's last block is partly filled and another "
                  "sequence still uses it (its reference count), give this sequence its own copy; then add "
                  "blocks until the table covers the new length. Then turn each position into a row of the "
                  "pool through the block table."),
    ),
)
