"""Exercise 10: FlashAttention's pieces (practises chapter 21; chapter 23 uses ``merge_partials``).

Tasks:
    online_softmax_update(m, l, acc, scores_block, v_block)    -> (m_new, l_new, acc_new)
        m, l (..., L); acc (..., L, d_v); scores_block (..., L, Bk); v_block (..., Bk, d_v)
    merge_partials(m_a, l_a, acc_a, m_b, l_b, acc_b)            -> (m, l, acc), two disjoint key sets
    tiled_attention(q, k, v, causal, block_size)                -> (B, H, L, d_v), block by block
    flash_io(N, head_dim, sram_elements)                        -> (naive, flash) slow-memory accesses

References: ``attn_course.flash`` (``online_softmax_update``, ``merge_partials``,
``naive_attention`` for the tiled forward, ``memory_traffic`` counted in elements).

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
             hint="Before the first block m = -inf: alpha = exp(m - m_new) = 0 wipes the (empty) sums."),
        Case("a block whose scores beat the running max", (small_m, small_l, small_acc, big_scores, randn(g, 2, 1, 5, 6)),
             hint="When the max grows, rescale BOTH l and acc by alpha = exp(m - m_new) before adding the block."),
        Case("a block below the running max", (m2, l2, acc2, low_scores, randn(g, 1, 2, 3, 5)),
             hint="Here m_new = m, alpha = 1: only add the block's exp(scores - m_new) to l and their weighted "
                  "values to acc."),
        Case("a block with masked (-inf) scores", (*_start(2, 3, d_v=2), masked, randn(g, 2, 7, 2))),
        Case("a row with every key masked so far", (m_dead, l_dead, acc_dead, dead_scores, randn(g, 2, 5, 3)),
             hint="A row whose scores are all -inf keeps m = -inf, l = 0, acc = 0. exp(-inf - (-inf)) is NaN: "
                  "subtract 0 instead of m_new where m_new is -inf."),
    ]


def _merge_cases(g: torch.Generator) -> list[Case]:
    empty = _start(1, 1, 4, d_v=3)
    return [
        Case("two halves of the keys", (*_partial(g, 1, 2, 4, 5, 3, 3), *_partial(g, 1, 2, 4, 7, 3, 3))),
        Case("one side has much larger scores", (*_partial(g, 2, 1, 3, 4, 4, 2, scale=0.1),
                                                 *_partial(g, 2, 1, 3, 4, 4, 2, scale=8.0)),
             hint="Rescale each side to the common max m = max(m_a, m_b): alpha = exp(m_a - m), beta = exp(m_b - m)."),
        Case("one side has seen no keys (m = -inf, l = 0)", (*_partial(g, 1, 1, 4, 6, 5, 3), *empty),
             hint="An empty partial (m = -inf, l = 0, acc = 0) must leave the other unchanged: exp(-inf - m) = 0."),
        Case("both sides empty", (*_start(2, 3, d_v=2), *_start(2, 3, d_v=2)),
             hint="max(-inf, -inf) = -inf, and exp(-inf - (-inf)) is NaN: subtract 0 where the common max is -inf."),
    ]


def _qkv(g, B, H, L, S, d, d_v, scale=1.0):
    return randn(g, B, H, L, d), randn(g, B, H, S, d, scale=scale), randn(g, B, H, S, d_v)


def _tiled_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("N = 32, blocks of 8", (*_qkv(g, 1, 2, 32, 32, 8, 8), False, 8)),
        Case("causal, N = 32, blocks of 8", (*_qkv(g, 2, 1, 32, 32, 8, 4), True, 8),
             hint="Query i sees keys j <= i: skip key blocks after the query block, mask the diagonal block with -inf."),
        Case("N = 50 is not a multiple of the block size 16", (*_qkv(g, 1, 2, 50, 50, 4, 4), False, 16),
             hint="The last block is shorter: slice q[:, :, i0 : i0 + block_size] and use its actual length."),
        Case("causal, N = 45, blocks of 16", (*_qkv(g, 1, 1, 45, 45, 8, 8), True, 16)),
        Case("more keys than queries (L = 20, S = 45)", (*_qkv(g, 2, 2, 20, 45, 8, 6), False, 16)),
        Case("one block larger than the sequence", (*_qkv(g, 1, 1, 10, 10, 4, 4), True, 64)),
        Case("large scores", (*_qkv(g, 1, 1, 24, 24, 8, 8, scale=40.0), False, 8),
             hint="exp of a large score overflows: exponentiate scores minus the running max."),
    ]


def _tiled_reference(q, k, v, causal, block_size):
    return flash.naive_attention(q, k, v, causal=causal)


def _io_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("N = 1024, d = 64, M = 98304 (192 KiB of 16-bit numbers)", (1024, 64, 98304)),
        Case("N = 4096, d = 128, M = 98304", (4096, 128, 98304)),
        Case("N not a multiple of the block width", (1000, 64, 98304),
             hint="T_c = ceil(N / B_c) key blocks: the last one is shorter but is still a pass over Q and O."),
        Case("M not a multiple of 4d", (512, 48, 10000),
             hint="B_c = ceil(M / (4 d)) columns per key block (math.ceil), then T_c = ceil(N / B_c)."),
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
             hint="m_new = max(m, row max of the block); alpha = exp(m - m_new); p = exp(scores_block - m_new); "
                  "l_new = alpha * l + p.sum(-1); acc_new = alpha[..., None] * acc + p @ v_block."),
        Task("merge_partials", flash.merge_partials, _merge_cases,
             arg_names=("m_a", "l_a", "acc_a", "m_b", "l_b", "acc_b"), forbidden=_FLASH + _SOFTMAXES,
             hint="m = max(m_a, m_b); l = exp(m_a - m) l_a + exp(m_b - m) l_b; the same factors for acc."),
        Task("tiled_attention", _tiled_reference, _tiled_cases, points=3,
             arg_names=("q", "k", "v", "causal", "block_size"), forbidden=_FLASH + _ATTENTIONS + _SOFTMAXES,
             hint="For each block of queries: m = -inf, l = 0, acc = 0; for each block of keys: scores = q k^T / "
                  "sqrt(d) (masked if causal), fold them in with your online_softmax_update; then acc / l."),
        Task("flash_io", _io_reference, _io_cases, arg_names=("N", "head_dim", "sram_elements"),
             forbidden=("attn_course.flash.memory_traffic",),
             hint="naive = 4 N d + 4 N^2. flash = 2 N d + T_c (3 N d + 4 N) with B_c = ceil(M / 4d), "
                  "T_c = ceil(N / B_c). Return two ints."),
    ),
)
