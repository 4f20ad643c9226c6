"""Exercise 13: serving (practises chapters 24, 25 and 28, chapter 26's acceptance rule and, as a
warm-up, chapter 27's int8 cache).

Tasks:
    schedule_step(running, waiting, free_blocks, token_budget, block_size, max_num_seqs)
                                             -> (chunks [(rid, n), ...], preempted [rid, ...])
                                             one step of continuous batching with chunked prefill
                                             over a block pool; graded by serving a whole trace
                                             step by step (driver ``schedule_trace``)
    paged_decode(q, k_pool, v_pool, block_table, seq_lens) -> (B, H, d_v)
                                             decode attention through a block table, reading the
                                             blocks where they are (no gathered copy of a cache)
    speculative_table(p, q)                  -> (..., V, V): P(draft = x, emitted = y) for one
                                             drafted position under the acceptance rule
    int8_per_token(x)                        -> (q int8 (..., d), x_hat (..., d)): a warm-up (1 point) for
                                             chapter 27's smaller caches: symmetric int8 with one scale
                                             per token (row), absmax / 127, and its dequantised row
    class RadixTree()                        ``match(tokens) -> int``, ``insert(tokens) -> int``,
                                             ``edges() -> list of token tuples``: a radix tree of
                                             cached prefixes; graded by replaying a trace (driver
                                             ``radix_replay``)

References: ``schedule_step_reference`` is ``attn_course.scheduler.ContinuousScheduler.schedule``
with ``chunked_prefill=True`` on plain data (the tests check that driving it through a trace
equals ``scheduler.serve``); ``attn_course.decode_attention.paged_decode``;
``attn_course.speculative`` (``residual_distribution`` and the acceptance probability of
``emitted_distribution``: the table's columns sum to ``p``); ``attn_course.prefix_cache.RadixCache``; ``int8_per_token_reference`` is its own reference (the
chapter's library is not in this branch yet).

Rule of ``paged_decode`` (measured in the call): no tensor as large as a sequence's keys: a
gather of the blocks into a contiguous cache, or any op on the whole pool, breaks it in the
case with sequences of 1000 positions.

Dimension glossary: B sequences, H query heads, H_kv key/value heads, d head_dim, d_v value
width, P block size, N_blk blocks in the pool, T block-table width, V vocabulary.
"""

from __future__ import annotations

import torch

from ..decode_attention import paged_decode
from ..grading.tasks import Case, Exercise, Task, randn
from ..prefix_cache import RadixCache
from ..speculative import residual_distribution

_SCHEDULER = ("attn_course.scheduler.ContinuousScheduler", "attn_course.scheduler.BlockAllocator",
              "attn_course.scheduler.serve", "attn_course.scheduler.StaticScheduler")
_DECODE = tuple(f"attn_course.decode_attention.{n}" for n in (
    "paged_decode", "gather_then_attend", "gather_kv", "decode_reference", "split_k_decode")) + (
    "attn_course.flash.online_softmax_update", "attn_course.flash.merge_partials",
    "attn_course.triton_decode.paged_decode_triton",
    "torch.nn.functional.scaled_dot_product_attention")
_SPECULATIVE = ("attn_course.speculative.residual_distribution", "attn_course.speculative.emitted_distribution",
                "attn_course.speculative.verify")
_RADIX = ("attn_course.prefix_cache.RadixCache",)
_QUANT = ("attn_course.kv_quant.quantize_symmetric", "attn_course.kv_quant.quantize_groups", "torch.quantize_per_tensor", "torch.quantize_per_channel", "torch.quantize_per_tensor_dynamic",
          "torch.ao.quantization.quantize_dynamic", "torch.fake_quantize_per_channel_affine",
          "torch.fake_quantize_per_tensor_affine")


# --------------------------------------------------------------------------- ch 24: one scheduler step


def _blocks_for(positions: int, P: int) -> int:
    return -(-positions // P)  # ceil(positions / P)


def schedule_step_reference(running: list[dict], waiting: list[dict], free_blocks: int, token_budget: int,
                            block_size: int, max_num_seqs: int) -> tuple[list[tuple[int, int]], list[int]]:
    """``ContinuousScheduler.schedule`` (chunked prefill) on plain data.

    A request is ``{"rid", "tokens", "fed", "blocks"}``: tokens known (prompt + generated), tokens
    whose keys are cached, blocks it holds. ``running`` is in admission order (oldest first),
    ``waiting`` in queue order (arrived requests only). Returns the step's chunks ``(rid, n)`` in
    the order scheduled, and the preempted requests in the order preempted.
    """
    P, running = block_size, list(running)
    budget, free = token_budget, free_blocks
    chunks: list[tuple[int, int]] = []
    preempted: list[int] = []
    i = 0
    while i < len(running) and budget > 0:  # 1. running requests, oldest first
        r = running[i]
        n = min(r["tokens"] - r["fed"], budget)
        need = _blocks_for(r["fed"] + n, P) - r["blocks"]
        while need > free:  # preempt the newest until the block is found or r itself goes
            victim = running.pop()
            free += victim["blocks"]
            preempted.append(victim["rid"])
            if victim is r:
                break
        if preempted and preempted[-1] == r["rid"]:
            break
        chunks.append((r["rid"], n))
        free -= need
        budget -= n
        i += 1
    if not preempted:  # 2. admit, first come first served, while budget, slots and blocks last
        slots = max_num_seqs - len(running)
        for w in waiting:
            if budget <= 0 or slots <= 0:
                break
            n = min(w["tokens"] - w["fed"], budget)
            need = _blocks_for(w["fed"] + n, P) - w["blocks"]
            if need > free:
                break
            chunks.append((w["rid"], n))
            free -= need
            budget -= n
            slots -= 1
    return chunks, preempted


def _trace_case(name: str, requests: list[tuple[int, int, int]], num_blocks: int, block_size: int,
                token_budget: int, max_num_seqs: int, hint: str = "") -> Case:
    # enough steps for every trace here to finish, with room for a scheduler that dawdles
    steps = max(a for _, _, a in requests) + 2 * sum(p + m for p, m, _ in requests) + 4
    return Case(name, (requests, num_blocks, block_size, token_budget, max_num_seqs, steps), hint=hint)


def _schedule_cases(g: torch.Generator) -> list[Case]:
    def draw(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    return [
        _trace_case("three requests, room for all", [(draw(2, 5), draw(2, 4), 0) for _ in range(3)],
                    num_blocks=32, block_size=4, token_budget=64, max_num_seqs=8,
                    hint="Nothing is short here: every request is admitted at once and leaves with its last token."),
        _trace_case("a long prompt in chunks", [(draw(3, 5), 6, 0), (draw(20, 26), 3, 1), (4, 3, 3)],
                    num_blocks=64, block_size=4, token_budget=8, max_num_seqs=8,
                    hint="A prompt longer than the token budget: it is fed in chunks, after the running "
                         "decodes have taken their token each."),
        _trace_case("arrivals over time, two slots", [(draw(2, 6), draw(2, 5), a) for a in (0, 0, 1, 2, 4, 9)],
                    num_blocks=64, block_size=4, token_budget=16, max_num_seqs=2,
                    hint="At most two requests run at once: the others wait in arrival order for a slot."),
        _trace_case("a small pool: preemption", [(6, 9, 0), (5, 9, 0), (draw(3, 6), 7, 1)],
                    num_blocks=7, block_size=4, token_budget=32, max_num_seqs=4,
                    hint="The pool runs out as the requests grow: the most recently admitted is preempted "
                         "(its blocks freed, back to the front of the queue, to be fed again from position 0)."),
        _trace_case("a tiny pool, blocks of 2: repeated preemption",
                    [(3, 6, 0), (4, 5, 0), (2, 6, 0), (draw(2, 4), 4, 2)],
                    num_blocks=5, block_size=2, token_budget=12, max_num_seqs=4,
                    hint="Several requests are preempted, some more than once; a preempted request is readmitted "
                         "before the others that wait, and nothing is admitted in a step that preempted."),
    ]


# --------------------------------------------------------------------------- ch 25: paged decode


def paged_decode_reference(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_table: torch.Tensor,
                           seq_lens: torch.Tensor) -> torch.Tensor:
    """One query per sequence ``q (B, H, d)`` against its paged cache: ``(B, H, d_v)``."""
    return paged_decode(q[:, :, None], k_pool, v_pool, block_table, seq_lens)[:, :, 0]  # (B, H, 1, d_v) -> (B, H, d_v)


def _paged_case(name: str, g: torch.Generator, H: int, H_kv: int, d: int, d_v: int, P: int, lens: list[int],
                num_blocks: int, shuffled: bool = True, hint: str = "", max_numel: int = 0) -> Case:
    B = len(lens)
    used = [_blocks_for(n, P) for n in lens]
    T = max(used) + 1  # one spare column: entries past a sequence's blocks hold -1, never read
    order = torch.randperm(num_blocks, generator=g) if shuffled else torch.arange(num_blocks)
    table = torch.full((B, T), -1, dtype=torch.long)
    at = 0
    for b, n in enumerate(used):
        table[b, :n] = order[at:at + n]
        at += n
    return Case(name, (randn(g, B, H, d), randn(g, num_blocks, P, H_kv, d), randn(g, num_blocks, P, H_kv, d_v),
                       table, torch.tensor(lens, dtype=torch.long)), hint=hint, max_numel=max_numel)


def _paged_cases(g: torch.Generator) -> list[Case]:
    return [
        _paged_case("one sequence, blocks in order, full blocks", g, 2, 2, 8, 8, 4, [12], 4, shuffled=False),
        _paged_case("blocks scattered over the pool", g, 2, 2, 8, 8, 4, [16, 8], 10,
                    hint="The block table is not in order: a sequence's j-th block is wherever its table says, "
                         "not block j of the pool."),
        _paged_case("lengths not multiples of the block size", g, 2, 2, 8, 8, 4, [5, 9, 1], 12,
                    hint="A sequence's last block is partly filled (and the table holds -1 past its last block): "
                         "slots past seq_lens hold stale keys that must not be attended to."),
        _paged_case("grouped-query heads: 6 query heads, 2 KV heads", g, 6, 2, 8, 8, 4, [7, 10], 8,
                    hint="H = 6 query heads share H_kv = 2 KV heads: heads 0-2 read KV head 0, heads 3-5 KV head 1."),
        _paged_case("d_v differs from d, one KV head", g, 4, 1, 16, 6, 8, [19, 3], 9,
                    hint="Keys are 16 wide, values 6 wide: the scores are scaled by the key width."),
        _paged_case("long sequences: 1000 and 777 positions", g, 4, 2, 16, 16, 16, [1000, 777], 140,
                    max_numel=8192,
                    hint="Each sequence's keys are 16,000 numbers or more: one block (or one block of every "
                         "sequence) at a time is a few thousand."),
    ]


# --------------------------------------------------------------------------- ch 26: the acceptance rule


def speculative_table_reference(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``(..., V, V)``: entry ``[x, y]`` is P(the draft proposes x and the round emits y).

    The draft proposes ``x ~ q``; it is kept with probability ``min(1, p(x) / q(x))``; else ``y`` is
    drawn from the residual ``max(0, p - q)`` normalised. Summing over ``x`` gives ``p``.
    """
    accept = torch.minimum(torch.ones_like(p), p / q.clamp_min(torch.finfo(p.dtype).tiny))  # (..., V)
    kept = torch.diag_embed(q * accept)  # (..., V, V): x kept, y = x
    rejected = (q * (1 - accept))[..., :, None] * residual_distribution(p, q)[..., None, :]  # (..., V, V)
    return kept + rejected


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum(-1, keepdim=True)


def _speculative_cases(g: torch.Generator) -> list[Case]:
    def dist(*shape: int) -> torch.Tensor:
        return _normalised(torch.rand(*shape, generator=g, dtype=torch.float64) + 0.05)

    p = dist(6)
    sparse_q = dist(6) * torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    sparse_p = dist(5) * torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    one_hot = torch.zeros(5, dtype=torch.float64)
    one_hot[int(torch.randint(0, 5, (1,), generator=g))] = 1.0
    return [
        Case("a batch of two distributions, V = 6", (dist(2, 6), dist(2, 6))),
        Case("the draft equals the target", (p, p.clone()),
             hint="q = p: every draft is kept, nothing is ever resampled (and there is no residual mass "
                  "to normalise: no NaN)."),
        Case("the draft never proposes tokens the target likes", (dist(6), _normalised(sparse_q)),
             hint="q is 0 on tokens 2 and 4, where p is not: those tokens can only come from a resample."),
        Case("the target rules out tokens the draft proposes", (_normalised(sparse_p), dist(5)),
             hint="p is 0 on tokens 0 and 3, where q is not: a draft of those is always rejected, and a "
                  "resample never gives them."),
        Case("a greedy draft (one-hot q)", (dist(5), one_hot),
             hint="The draft always proposes the same token: one row of the table holds all the mass."),
        Case("batch and positions, V = 4", (dist(2, 3, 4), dist(2, 3, 4))),
    ]


# --------------------------------------------------------------------------- ch 27: int8 per token (warm-up)


def int8_per_token_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per row (token): ``scale = absmax / 127``; returns
    ``(q int8 (..., d), q * scale (..., d))``; an all-zero row quantises to zeros."""
    absmax = x.abs().amax(dim=-1, keepdim=True)  # (..., 1)
    scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))  # a zero row: any scale gives 0
    q = torch.round(x / scale).clamp(-127, 127).to(torch.int8)  # (..., d)
    return q, q.to(x.dtype) * scale


def _int8_cases(g: torch.Generator) -> list[Case]:
    f64 = torch.float64  # no rounding tie that two correct formulas could break differently
    sizes = torch.tensor([[0.01], [1.0], [30.0], [300.0]], dtype=f64)  # tokens of very different sizes
    mixed = randn(g, 4, 8, dtype=f64) * sizes
    zero = randn(g, 3, 6, dtype=f64)
    zero[1] = 0.0
    negative = randn(g, 2, 5, dtype=f64).abs()
    negative[:, 2] = -3 * negative.amax(dim=-1)  # each row's largest magnitude is negative
    return [
        Case("one token", (randn(g, 1, 16, dtype=f64),)),
        Case("tokens of very different sizes", (mixed,),
             hint="The rows differ in size by a factor of 30,000: each token has a scale of its own, else the "
                  "small ones round to 0."),
        Case("an all-zero token", (zero,),
             hint="Row 1 is all zeros: its absmax is 0, so x / (absmax / 127) is 0 / 0 there; it must "
                  "quantise to zeros (no NaN)."),
        Case("the largest magnitude is negative", (negative,),
             hint="Each row's largest magnitude is a negative value: it must become -127 exactly (symmetric)."),
        Case("batch, heads, positions", (randn(g, 2, 3, 5, 8, dtype=f64, scale=4.0),)),
    ]


# --------------------------------------------------------------------------- ch 28: a radix tree


class RadixTreeReference:
    """``RadixCache`` without payloads or eviction: ``match`` (splits an edge it ends inside),
    ``insert`` (returns the new tokens), ``edges`` (every node's run of tokens)."""

    def __init__(self) -> None:
        self._tree = RadixCache()

    def match(self, tokens: list[int]) -> int:
        return self._tree.match_prefix(tokens).length

    def insert(self, tokens: list[int]) -> int:
        return self._tree.insert(tokens)

    def edges(self) -> list[tuple[int, ...]]:
        return [n.key for n in self._tree.nodes()]


def _radix_cases(g: torch.Generator) -> list[Case]:
    def toks(n: int, V: int = 6) -> list[int]:
        return torch.randint(0, V, (n,), generator=g).tolist()

    system = toks(5)
    a, b = system + [7] + toks(3), system + [8] + toks(4)  # share the system prompt, differ after it
    c = toks(4, 5) + [9, 9]
    return [
        Case("an empty tree, then one sequence", ([("match", c), ("insert", c), ("match", c), ("match", c[:3]),
                                                  ("match", c + [1, 2])],),
             hint="A match that ends inside an edge (here after 3 of its 6 tokens) splits it: the tree then has "
                  "two edges."),
        Case("two conversations share a system prompt", ([("insert", a), ("match", b), ("insert", b),
                                                          ("match", a + [1]), ("match", system + [9])],),
             hint="The second sequence diverges inside the first one's edge: inserting it splits that edge at "
                  "the divergence, and the new tokens are those after the shared part."),
        Case("a sequence that is a prefix of a cached one", ([("insert", a), ("insert", system),
                                                              ("insert", a), ("match", system)],),
             hint="Inserting a prefix of a cached sequence adds no token, but the prefix must end on a node."),
        Case("many turns of one conversation", ([("insert", system + [7]), ("insert", system + [7, 1, 2]),
                                                 ("match", system + [7, 1, 2, 3]), ("insert", system + [7, 1, 2, 3]),
                                                 ("insert", system + [8]), ("match", system + [7, 1, 5])],),
             hint="Each turn extends the last one: an extension adds one child below the node where the match "
                  "ended."),
        Case("the first token differs", ([("insert", [1, 2, 3]), ("insert", [2, 2, 3]), ("match", [3, 2]),
                                          ("insert", [1, 2, 4]), ("match", [1, 2, 3, 4]), ("insert", [1])],),
             hint="A sequence whose first token no edge starts with matches nothing: a new child of the root."),
    ]


EXERCISE = Exercise(
    id="ex13_serving",
    title="Serving: scheduling, paged decode, speculative acceptance and prefix caching",
    tasks=(
        Task("schedule_step", schedule_step_reference, _schedule_cases, points=3,
             arg_names=("requests", "num_blocks", "block_size", "token_budget", "max_num_seqs", "steps"),
             forbidden=_SCHEDULER, driver="schedule_trace",
             hint="First the running requests, oldest first: each takes min(pending, budget left) tokens; work "
                  "out how many blocks its fed + n positions need beyond those it holds, and while the pool is "
                  "short, preempt from the end of the running list (stop if that was this request). Only if "
                  "nobody was preempted, admit from the front of the queue while slots, budget and blocks last."),
        Task("paged_decode", paged_decode_reference, _paged_cases, points=2,
             arg_names=("q", "k_pool", "v_pool", "block_table", "seq_lens"), forbidden=_DECODE,
             rule="no contiguous copy of a sequence's cache: read the blocks where they are",
             hint="Loop over the block-table columns j: block_table[:, j] names one block per sequence. Take "
                  "those blocks' keys (B, P, H_kv, d), score them against the queries (mind which KV head a "
                  "query head reads), hide the slots at positions >= seq_lens, and fold the block into a "
                  "running max, sum and weighted sum of values, as in chapter 21."),
        Task("speculative_table", speculative_table_reference, _speculative_cases, points=2,
             arg_names=("p", "q"), forbidden=_SPECULATIVE,
             hint="Two ways to emit y after drafting x: x is kept (only when y = x), or x is rejected and y is "
                  "resampled. Write the acceptance probability of each x and the residual distribution first; "
                  "the table is a diagonal part plus an outer product."),
        Task("int8_per_token", int8_per_token_reference, _int8_cases, points=1, arg_names=("x",),
             forbidden=_QUANT,
             hint="Work on the last axis with keepdim=True so that the scale broadcasts over each row; round "
                  "before converting to int8 (a conversion alone truncates towards 0)."),
        Task("RadixTree", RadixTreeReference, _radix_cases, points=3, arg_names=("operations",),
             forbidden=_RADIX, driver="radix_replay",
             hint="A node holds its edge's tokens and its children by first token. Walking down, compare the "
                  "query with the child's edge token by token; when they part inside the edge, cut the edge "
                  "in two there (a new node for the shared head, the old child below it with the tail)."),
    ),
)
