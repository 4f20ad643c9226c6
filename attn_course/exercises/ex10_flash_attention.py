"""Exercise 10: FlashAttention's pieces (practises chapter 21; chapter 23 uses ``merge_partials``).

Tasks:
    online_softmax_update(m, l, acc, scores_block, v_block)    -> (m_new, l_new, acc_new)
        m, l (..., L); acc (..., L, d_v); scores_block (..., L, Bk); v_block (..., Bk, d_v)
    merge_partials(m_a, l_a, acc_a, m_b, l_b, acc_b)            -> (m, l, acc), two disjoint key sets
    tiled_attention(q, k, v, causal, block_size)                -> (B, H, L, d_v), block by block
    flash_io(N, head_dim, sram_elements)                        -> (naive, flash) slow-memory accesses

References: ``attn_course.flash`` (``online_softmax_update``, ``merge_partials``,
``tiled_attention``, ``memory_traffic`` counted in elements).

``tiled_attention`` is graded on its idea as well as its values (``grading.rules``): no tensor
larger than two tiles of scores (or an input, or the output) in any call, measured in the call;
and the whole kernel runs in 1 GiB while its cases run, enforced by the grader, with a case
whose one (L, S) float32 score matrix is 1 GiB: tiles fit, the whole matrix cannot.

Dimension glossary: B batch, H heads, L queries, S keys, d head width, d_v value width, Bk keys
per block, M fast-memory size in elements.
"""

from __future__ import annotations

import torch

from .. import flash
from ..grading.tasks import Case, Exercise, Task, randn
from ..masking import causal_mask

# The library (and torch) versions of what the tasks ask for: calling them scores nothing.
_FLASH = tuple(f"attn_course.flash.{n}" for n in (
    "online_softmax_update", "online_softmax_stats_update", "online_softmax", "block_partial", "merge_partials",
    "naive_attention", "blockwise_attention", "tiled_attention", "tiled_attention_numpy", "memory_traffic"))
_ATTENTIONS = ("torch.nn.functional.scaled_dot_product_attention", "attn_course.attention.scaled_dot_product_attention",
               "attn_course.attention.attention_weights_unchecked",
               "attn_course.triton_attention.reference_attention")
_SOFTMAXES = ("torch.softmax", "torch.nn.functional.softmax", "torch.Tensor.softmax", "torch.special.softmax",
              "torch._softmax", "attn_course.masking.masked_softmax",
              "attn_course.masking.masked_softmax_unchecked")


def _start(*lead: int, d_v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The state before the first block: m = -inf, l = 0, acc = 0."""
    m = torch.full(lead, float("-inf"))
    return m, torch.zeros(lead), torch.zeros(*lead, d_v)


def _partial(g: torch.Generator, B: int, H: int, L: int, S: int, d: int, d_v: int, scale: float = 1.0):
    """A partial result (m, l, acc) of L random queries over S random keys."""
    q, k, v = randn(g, B, H, L, d), randn(g, B, H, S, d, scale=scale), randn(g, B, H, S, d_v)
    return flash.block_partial(q, k, v)


def _update_cases(g: torch.Generator) -> list[Case]:
    small_m, small_l, small_acc = _partial(g, 2, 1, 3, 4, 5, 6, scale=0.1)  # small scores so far
    big_scores = randn(g, 2, 1, 3, 5, scale=4.0) + 6.0  # (B, H, L, Bk): the max grows
    m2, l2, acc2 = _partial(g, 1, 2, 4, 6, 3, 5, scale=3.0)
    low_scores = randn(g, 1, 2, 4, 3) - 20.0  # every score below the running max: m stays
    masked = randn(g, 2, 3, 7)  # (H, L, Bk) with a causal-style triangle of -inf
    masked = masked.masked_fill(~causal_mask(3, 7), float("-inf"))  # -inf above the diagonal
    m_dead, l_dead, acc_dead = _start(2, 4, d_v=3)
    dead_scores = randn(g, 2, 4, 5)
    dead_scores[0, 1] = float("-inf")  # row (0, 1): every key so far masked, and in this block too
    return [
        Case("the first block (m = -inf, l = 0, acc = 0)", (*_start(2, 3, d_v=4), randn(g, 2, 3, 5), randn(g, 2, 5, 4)),
             hint="Nothing has been summed yet here: m = -inf, l = 0, acc = 0."),
        Case("a block whose scores beat the running max", (small_m, small_l, small_acc, big_scores, randn(g, 2, 1, 5, 6)),
             hint="This block's scores are far above the running max: the max changes, and with it the "
                  "reference that l and acc were summed against."),
        Case("a block below the running max", (m2, l2, acc2, low_scores, randn(g, 1, 2, 3, 5)),
             hint="Every score of this block is below the running max: the max stays, and what was summed "
                  "already keeps its weight."),
        Case("a block with masked (-inf) scores", (*_start(2, 3, d_v=2), masked, randn(g, 2, 7, 2))),
        Case("a row with every key masked so far", (m_dead, l_dead, acc_dead, dead_scores, randn(g, 2, 5, 3)),
             hint="Row (0, 1) has had only -inf scores, before and in this block: its max is still -inf, "
                  "and -inf - (-inf) is NaN. Such a row stays m = -inf, l = 0, acc = 0."),
    ]


def _merge_cases(g: torch.Generator) -> list[Case]:
    empty = _start(1, 1, 4, d_v=3)
    return [
        Case("two halves of the keys", (*_partial(g, 1, 2, 4, 5, 3, 3), *_partial(g, 1, 2, 4, 7, 3, 3))),
        Case("one side has much larger scores", (*_partial(g, 2, 1, 3, 4, 4, 2, scale=0.1),
                                                 *_partial(g, 2, 1, 3, 4, 4, 2, scale=8.0)),
             hint="Side b's scores are far larger here: the common max is b's, and side a counts for far less."),
        Case("one side has seen no keys (m = -inf, l = 0)", (*_partial(g, 1, 1, 4, 6, 5, 3), *empty),
             hint="Side b has seen no keys here (m = -inf, l = 0, acc = 0): the merge is side a, unchanged."),
        Case("both sides empty", (*_start(2, 3, d_v=2), *_start(2, 3, d_v=2)),
             hint="Both sides are empty here: the common max is -inf, and -inf - (-inf) is NaN. The merge is empty too."),
    ]


def _qkv(g, B, H, L, S, d, d_v, scale=1.0):
    return randn(g, B, H, L, d), randn(g, B, H, S, d, scale=scale), randn(g, B, H, S, d_v)


def _tiled_case(name: str, g: torch.Generator, B: int, H: int, L: int, S: int, d: int, d_v: int, causal: bool,
                b: int, hint: str = "", rule: bool = True, scale: float = 1.0) -> Case:
    q, k, v = _qkv(g, B, H, L, S, d, d_v, scale)
    # The largest tensor allowed: two tiles of scores, or an input or the output, whichever is
    # larger. The whole (L, S) matrix, and also a block of queries against every key (b, S),
    # are larger in every case with the rule (S is several blocks and b > d, d_v).
    tile = B * H * min(b, L) * min(b, S)
    io = B * H * max(L, S) * max(d, d_v)
    return Case(name, (q, k, v, causal, b), hint=hint, max_numel=max(2 * tile, io) if rule else 0)


def _tiled_cases(g: torch.Generator) -> list[Case]:
    return [
        _tiled_case("L = S = 96, blocks of 16, d = 8, d_v = 4", g, 1, 2, 96, 96, 8, 4, False, 16,
                    hint="The query/key width d = 8 and the value width d_v = 4 differ here."),
        _tiled_case("causal, N = 80, blocks of 16", g, 2, 1, 80, 80, 8, 4, True, 16,
                    hint="Causal: query i sees keys 0 .. i, its own key included."),
        _tiled_case("N = 100 is not a multiple of the block size 16", g, 1, 2, 100, 100, 4, 6, False, 16,
                    hint="The last block holds 4 queries (and 4 keys)."),
        _tiled_case("causal, more queries than keys (L = 70, S = 45)", g, 1, 1, 70, 45, 8, 4, True, 16,
                    hint="Causal with L > S: query i sees keys 0 .. min(i, S - 1); queries 45 .. 69 see every key."),
        _tiled_case("more keys than queries (L = 20, S = 90)", g, 2, 2, 20, 90, 8, 6, False, 16),
        _tiled_case("one block larger than the sequence", g, 1, 1, 10, 10, 4, 4, True, 64, rule=False),
        _tiled_case("large scores", g, 1, 1, 48, 48, 4, 4, False, 8, scale=40.0,
                    hint="Scores in the hundreds: the running max grows from block to block."),
        _tiled_case("causal, N = 16384, blocks of 512", g, 1, 1, 16384, 16384, 8, 4, True, 512,
                    hint="One (L, S) float32 score matrix is 1 GiB here, the whole kernel's memory for this task."),
    ]


def _tiled_reference(q, k, v, causal, block_size):
    return flash.tiled_attention(q, k, v, causal=causal, block_size=block_size)


def _io_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("N = 1024, d = 64, M = 98304 (192 KiB of 16-bit numbers)", (1024, 64, 98304)),
        Case("N = 4096, d = 128, M = 98304", (4096, 128, 98304)),
        Case("N not a multiple of the block width", (1000, 64, 98304),
             hint="N = 1000 is not a multiple of the block width here: the last key block is shorter, and it is "
                  "still a pass over Q and O."),
        Case("M not a multiple of 4d", (530, 48, 10000),
             hint="M / (4 d) = 10000 / 192 is not a whole number here: a block cannot hold a fraction of a column."),
        Case("a tiny SRAM", (256, 16, 64)),
    ]


def _io_reference(N: int, head_dim: int, sram_elements: int) -> tuple[int, int]:
    t = flash.memory_traffic(N, head_dim, sram_elements, dtype_bytes=1)  # bytes = elements
    return t.naive_elements, t.flash_elements


EXERCISE = Exercise(
    id="ex10_flash_attention",
    title="FlashAttention's pieces",
    tasks=(
        Task("online_softmax_update", flash.online_softmax_update, _update_cases, points=2,
             arg_names=("m", "l", "acc", "scores_block", "v_block"), forbidden=_FLASH + _SOFTMAXES,
             hint="Find the new running max first. Everything already summed in l and acc was measured "
                  "against the old max: what factor brings it to the new one, before the block's own terms "
                  "are added? Then think about a row whose max is still -inf."),
        Task("merge_partials", flash.merge_partials, _merge_cases,
             arg_names=("m_a", "l_a", "acc_a", "m_b", "l_b", "acc_b"), forbidden=_FLASH + _SOFTMAXES,
             hint="Bring both partials to their common max: each side gets its own factor, and it applies to "
                  "that side's l and its acc alike."),
        Task("tiled_attention", _tiled_reference, _tiled_cases, points=3,
             arg_names=("q", "k", "v", "causal", "block_size"), forbidden=_FLASH + _ATTENTIONS + _SOFTMAXES,
             rule="only one tile of scores at a time, never the whole (L, S) matrix nor a block of rows of it",
             memory_limit_bytes=1 << 30, min_call_seconds=30,  # L = S = 16384: the case that cannot fit takes a while
             hint="Two loops: query blocks outside, key blocks inside. A query block keeps m, l, acc for its "
                  "own rows; each tile of scores (scaled by the query/key width) is folded in with your "
                  "online_softmax_update. When causal, which key blocks can a query block skip, and which "
                  "need a mask?"),
        Task("flash_io", _io_reference, _io_cases, arg_names=("N", "head_dim", "sram_elements"),
             forbidden=("attn_course.flash.memory_traffic",),
             hint="Three numbers in order: the block width B_c from M and d, the number of key blocks T_c, "
                  "then the passes each algorithm makes over slow memory. Both divisions round up."),
    ),
)
