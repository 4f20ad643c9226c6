"""Exercise 12: ring attention, simulated in one process (practises chapter 23).

Tasks:
    ring_step(m, l, acc, q, k_block, v_block, q_pos, k_pos, causal) -> (m, l, acc)
        one ring step: this rank's queries attend to the key/value chunk it holds now, merged
        into its running state; m, l (B, H, n); acc (B, H, n, d_v); q (B, H, n, d);
        k_block (B, H, c, d); v_block (B, H, c, d_v); q_pos (n,), k_pos (c,) global positions
    zigzag_chunks(N, world_size)                                     -> (P, N / P) int64 positions
        rank r holds chunks r and 2P - 1 - r of the 2P chunks of the sequence
    ring_attention_sim(q, k, v, world_size, causal)                  -> (B, H, N, d_v)
        the whole ring on one process, the tokens in the zigzag layout

References: ``attn_course.flash`` (``block_partial`` + ``merge_partials`` for the step,
``naive_attention`` for the whole ring: its output does not depend on the layout) and the
zigzag layout of ``attn_course.labs.ring.causal_pairs_per_rank``.

Rule of the simulated ring (measured in the call): no tensor larger than K and V side by side
or one rank's tile (B, H, n, n): a whole (N, N) score matrix breaks it, and so does a rank that
attends to every key at once (n, N) in the case with N = 128 on P = 4 ranks.

Dimension glossary: B batch, H heads, N sequence length, P processes (world size), n = N / P
queries per rank, c keys per chunk, d query/key width, d_v value width.
"""

from __future__ import annotations

import torch

from .. import flash
from ..grading.tasks import Case, Exercise, Task, randn

# The library's pieces of the ring, and torch's softmax and attention: calling them scores nothing.
_FLASH = tuple(f"attn_course.flash.{n}" for n in (
    "online_softmax_update", "online_softmax_stats_update", "online_softmax", "block_partial", "merge_partials",
    "naive_attention", "blockwise_attention", "tiled_attention"))
_RING = ("attn_course.ring_attention.ring_attention", "attn_course.ring_attention.ring_attention_multiprocess",
         "attn_course.labs.ring.simulate_ring", "attn_course.labs.ring.causal_pairs_per_rank",
         "attn_course.labs.ring.ring_schedule")
_TORCH = ("torch.softmax", "torch.nn.functional.softmax", "torch.Tensor.softmax", "torch.special.softmax",
          "torch.nn.functional.scaled_dot_product_attention", "torch.logsumexp")
FORBIDDEN = _FLASH + _RING + _TORCH


# --------------------------------------------------------------------------- references


def _step_reference(m, l, acc, q, k_block, v_block, q_pos, k_pos, causal):
    mask = (k_pos[None, :] <= q_pos[:, None]) if causal else None  # (n, c): True = may attend
    return flash.merge_partials(m, l, acc, *flash.block_partial(q, k_block, v_block, mask=mask))


def zigzag_reference(N: int, world_size: int) -> torch.Tensor:
    """``(P, N / P)`` positions: rank r holds chunks r and 2P - 1 - r of 2P equal chunks, ascending."""
    P = world_size
    c = N // (2 * P)  # tokens per chunk
    chunks = torch.arange(N).reshape(2 * P, c)  # (2P, c)
    return torch.cat([chunks[:P], chunks.flip(0)[:P]], dim=1)  # (P, 2c): chunk r, then chunk 2P - 1 - r


def _sim_reference(q, k, v, world_size, causal):
    return flash.naive_attention(q, k, v, causal=causal)


# --------------------------------------------------------------------------- cases


def _empty(B: int, H: int, n: int, d_v: int):
    """The state before the first step: m = -inf, l = 0, acc = 0."""
    return torch.full((B, H, n), float("-inf")), torch.zeros(B, H, n), torch.zeros(B, H, n, d_v)


def _state(g: torch.Generator, B: int, H: int, n: int, c: int, d: int, d_v: int, scale: float = 1.0):
    """A running state (m, l, acc) of n queries after some earlier chunk of c keys."""
    return flash.block_partial(randn(g, B, H, n, d), randn(g, B, H, c, d, scale=scale), randn(g, B, H, c, d_v))


def _pos(*ranges: tuple[int, int]) -> torch.Tensor:
    return torch.cat([torch.arange(a, b) for a, b in ranges])


def _step_cases(g: torch.Generator) -> list[Case]:
    def block(B, H, n, c, d, d_v, scale=1.0):
        return randn(g, B, H, n, d), randn(g, B, H, c, d, scale=scale), randn(g, B, H, c, d_v)

    return [
        Case("the first step (empty state), not causal", (*_empty(1, 2, 4, 3), *block(1, 2, 4, 6, 5, 3),
                                                          _pos((0, 4)), _pos((4, 10)), False)),
        Case("a chunk whose scores beat the running max", (*_state(g, 2, 1, 4, 4, 4, 3, scale=0.1),
                                                           *block(2, 1, 4, 4, 4, 3, scale=6.0),
                                                           _pos((8, 12)), _pos((0, 4)), False),
             hint="The new chunk's scores are far above what the state has seen: both sides must be brought to "
                  "the common max before they are added."),
        Case("causal, the rank's own chunk (q_pos == k_pos)", (*_empty(1, 1, 5, 4), *block(1, 1, 5, 5, 4, 4),
                                                               _pos((10, 15)), _pos((10, 15)), True),
             hint="The own chunk is the diagonal block: inside it, query i sees keys j <= i only."),
        Case("causal, a chunk entirely in the future", (*_state(g, 1, 2, 4, 3, 4, 2), *block(1, 2, 4, 4, 4, 2),
                                                        _pos((0, 4)), _pos((12, 16)), True),
             hint="Every key of this chunk comes after every query: the state must come back unchanged."),
        Case("zigzag: half the queries see the whole chunk, half see none of it",
             (*_state(g, 1, 1, 6, 3, 4, 3), *block(1, 1, 6, 6, 4, 3), _pos((0, 3), (33, 36)), _pos((9, 12), (24, 27)),
              True),
             hint="Queries 0-2 come before every key of the chunk, queries 33-35 after: rows with no visible key "
                  "keep their state (exp(-inf - (-inf)) is NaN: never subtract a max of -inf)."),
        Case("an empty state meets a chunk that hides every key", (*_empty(1, 1, 3, 2), *block(1, 1, 3, 3, 4, 2),
                                                                  _pos((0, 3)), _pos((3, 6)), True),
             hint="Nothing seen yet and nothing visible now: m stays -inf, l and acc stay 0 (no NaN)."),
    ]


def _zigzag_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("N = 16, P = 2", (16, 2)),
        Case("N = 32, P = 4", (32, 4), hint="With P = 4 there are 8 chunks: rank 0 holds the first and the last."),
        Case("N = 24, P = 3: chunks of 4", (24, 3)),
        Case("N = 8, P = 4: chunks of one token", (8, 4)),
        Case("N = 6, P = 1: one rank holds everything", (6, 1),
             hint="One rank, two chunks: it holds the whole sequence, in order."),
    ]


def _sim_case(name: str, g: torch.Generator, B: int, H: int, N: int, d: int, d_v: int, P: int, causal: bool,
              hint: str = "", scale: float = 1.0) -> Case:
    q, k, v = randn(g, B, H, N, d), randn(g, B, H, N, d, scale=scale), randn(g, B, H, N, d_v)
    n = N // P
    # One rank's tile of scores (B, H, n, n), or the inputs (K and V side by side, the output): not
    # the whole (N, N) matrix, nor a rank's queries against every key at once (n, N) where N > 2 P d.
    largest = B * H * max(N * (d + d_v), n * n)
    return Case(name, (q, k, v, P, causal), hint=hint, max_numel=largest)


def _sim_cases(g: torch.Generator) -> list[Case]:
    return [
        _sim_case("not causal, N = 32 on P = 2", g, 1, 2, 32, 8, 8, 2, False),
        _sim_case("causal, N = 128 on P = 4", g, 1, 1, 128, 8, 8, 4, True,
                  hint="In the zigzag layout a later rank also holds an early chunk: which keys a query sees "
                       "follows from the positions, not from the ranks' order."),
        _sim_case("causal, N = 48 on P = 3, d = 8, d_v = 4", g, 2, 1, 48, 8, 4, 3, True),
        _sim_case("causal, N = 8 on P = 1", g, 1, 1, 8, 4, 4, 1, True,
                  hint="One rank: one step, its own two chunks, with the causal mask."),
        _sim_case("large scores, causal, N = 32 on P = 2", g, 1, 1, 32, 8, 8, 2, True, scale=30.0,
                  hint="exp of these scores overflows: merge partial results, never raw exponentials."),
    ]


EXERCISE = Exercise(
    id="ex12_ring_attention",
    title="Ring attention on one process",
    tasks=(
        Task("ring_step", _step_reference, _step_cases, points=3,
             arg_names=("m", "l", "acc", "q", "k_block", "v_block", "q_pos", "k_pos", "causal"),
             forbidden=FORBIDDEN,
             hint="Compute this chunk's own partial result (its max, sum and accumulator per query, with -inf "
                  "where causal hides a key by its position), then merge it into (m, l, acc) as two partial "
                  "results over disjoint keys are merged in chapter 21."),
        Task("zigzag_chunks", zigzag_reference, _zigzag_cases, points=1, arg_names=("N", "world_size"),
             forbidden=_RING,
             hint="Number the 2P chunks of torch.arange(N) 0 .. 2P - 1 first; a rank's two chunks sit "
                  "symmetrically around the middle of that list."),
        Task("ring_attention_sim", _sim_reference, _sim_cases, points=3,
             arg_names=("q", "k", "v", "world_size", "causal"), forbidden=FORBIDDEN,
             rule="no whole (N, N) score matrix: each rank attends to one chunk at a time",
             hint="Give rank r the positions zigzag_chunks(N, P)[r] of q, k and v. In step s rank r holds the "
                  "K/V (and positions) that rank (r - s) mod P started with; fold them in with ring_step. At "
                  "the end write acc / l back at the rank's positions."),
    ),
)
