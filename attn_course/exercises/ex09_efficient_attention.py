"""Exercise 9: efficient attention (Part V: chapters 18, 19 and 20).

Tasks:
    attention_flops(batch, heads, N, head_dim, causal)    warm-up: FLOPs of one attention forward pass
    block_layout(mask, block_size)                        warm-up: (ceil(L / b), ceil(S / b)) bool, tiles to compute
    block_sparse_attention(q, k, v, layout, block_size)   attention over the layout's tiles only, skipping the rest
    chunkwise_linear_attention(q, k, v, chunk_size)       causal linear attention in chunks, the state carried
    linear_attention_step(kv, z, q_t, k_t, v_t)           one causal step with a constant-size state

Each core task is graded on its idea as well as its values (``grading.rules``):
``block_sparse_attention`` may do the matrix-product FLOPs of the allowed tiles (plus a margin),
and on its large case at most half the CPU time of computing every tile (read by the grader
on the kernel's cgroup); ``chunkwise_linear_attention`` may not create an ``(N, N)`` tensor,
and its largest case runs in a kernel of 1 GiB in all, where one ``(N, N)`` float32 matrix
cannot fit.

Dimension glossary: B batch, H heads, L queries, S keys, N = L = S (causal), d query/key width,
d_v value width, b block size, Lb = ceil(L / b), Sb = ceil(S / b), C chunk size.
"""

from __future__ import annotations

import torch

from .. import linear, sparse
from ..flash import attention_flops
from ..grading.tasks import Case, Exercise, Task, randn
from ..masking import causal_mask

_ATTENTIONS = ("torch.nn.functional.scaled_dot_product_attention", "attn_course.attention.scaled_dot_product_attention",
               "attn_course.attention.attention_weights_unchecked", "attn_course.flash.naive_attention",
               "attn_course.flash.blockwise_attention", "attn_course.flash.tiled_attention")
_LINEAR = tuple(f"attn_course.linear.{n}" for n in (
    "linear_attention", "linear_attention_quadratic", "linear_attention_weights", "causal_linear_attention",
    "linear_attention_step", "causal_linear_attention_recurrent", "causal_linear_attention_chunkwise"))


# --------------------------------------------------------------------------- warm-ups (chapters 18, 19)


def _flops_reference(batch: int, heads: int, N: int, head_dim: int, causal: bool) -> float:
    return attention_flops(batch, heads, N, N, head_dim, causal)


def _flops_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("one head", (1, 1, 8, 4, False)),
        Case("batch and heads", (2, 3, 16, 8, False)),
        Case("causal", (2, 4, 32, 16, True), hint="Causal attention computes about half the scores here."),
        Case("a 128k context", (1, 32, 131072, 128, True)),
    ]


def _layout_cases(g: torch.Generator) -> list[Case]:
    causal = causal_mask(12)  # (12, 12)
    return [
        Case("sliding window, 16 tokens, blocks of 4", (sparse.sliding_window_mask(16, 3), 4)),
        Case("causal, blocks of 4", (causal, 4)),
        Case("N not a multiple of the block", (sparse.sliding_window_mask(10, 2), 4),
             hint="N = 10 with blocks of 4: the last block holds 2 positions and is a block too."),
        Case("L != S", (torch.rand(6, 10, generator=g) < 0.15, 3),
             hint="6 queries and 10 keys: the layout has a row per query block and a column per key block."),
        Case("Longformer, blocks of 8", (sparse.longformer_mask(32, 4, [0, 17]), 8),
             hint="A tile is needed when ANY pair in it is allowed, wherever that pair sits in the tile."),
    ]


# --------------------------------------------------------------------------- block-sparse attention (chapter 19)


def _tile_flops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: torch.Tensor, b: int) -> int:
    """Matrix-product FLOPs of the allowed tiles only: scores (d) and weighted values (d_v), 2 per multiply-add."""
    B, H, L, d = q.shape
    S, d_v = k.shape[2], v.shape[3]
    total = 0
    for i, j in layout.nonzero().tolist():
        rows, keys = min(b, L - i * b), min(b, S - j * b)  # the last blocks may be shorter
        total += 2 * B * H * rows * keys * (d + d_v)
    return total


def _sparse_case(name: str, q, k, v, layout: torch.Tensor, b: int, hint: str = "", cpu_fraction: float = 0.0) -> Case:
    # 25% above the allowed tiles' FLOPs: room for a different but honest arrangement, and
    # below computing every tile (each case's layout keeps at most 3/4 of the tiles: 4/3 or more).
    return Case(name, (q, k, v, layout, b), hint=hint, max_flops=int(1.25 * _tile_flops(q, k, v, layout, b)),
                cpu_fraction=cpu_fraction)


def _sparse_cases(g: torch.Generator) -> list[Case]:
    band = sparse.mask_to_layout(sparse.sliding_window_mask(64, 16), 16)  # (4, 4): the diagonal band of tiles
    ragged = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 1], [1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    empty_row = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 1, 1]], dtype=torch.bool)  # query block 1: no tile
    big = sparse.bigbird_layout(64, window_blocks=3, global_blocks=1, random_blocks=1, seed=3)  # (64, 64), ~9%
    return [
        _sparse_case("a band of tiles, N = 64, blocks of 16", randn(g, 1, 2, 64, 8), randn(g, 1, 2, 64, 8),
                     randn(g, 1, 2, 64, 8), band, 16),
        _sparse_case("L = 50 and S = 70 are not multiples of the block 16, d != d_v", randn(g, 1, 1, 50, 8),
                     randn(g, 1, 1, 70, 8), randn(g, 1, 1, 70, 4), ragged, 16,
                     hint="The last query block holds 2 queries and the last key block 6 keys; both have "
                          "allowed tiles here."),
        _sparse_case("a query block with no allowed tile", randn(g, 2, 1, 48, 4), randn(g, 2, 1, 48, 4),
                     randn(g, 2, 1, 48, 6), empty_row, 16,
                     hint="Queries 16..31 have no allowed key at all here: their output is 0 (as in masked_softmax)."),
        _sparse_case("large scores", randn(g, 1, 1, 32, 4, scale=6.0), randn(g, 1, 1, 32, 4, scale=6.0),
                     randn(g, 1, 1, 32, 4), torch.tensor([[1, 0], [1, 1]], dtype=torch.bool), 16,
                     hint="Scores in the hundreds: exp overflows unless each row's max is subtracted first."),
        # every tile of this case costs ~0.5 s of CPU (the per-tile work of the loop included), the
        # allowed ones ~0.03 s: half of the first separates them far beyond the grader's slack
        _sparse_case("BigBird, N = 8192, blocks of 128", randn(g, 1, 1, 8192, 32), randn(g, 1, 1, 8192, 32),
                     randn(g, 1, 1, 8192, 32), big, 128, cpu_fraction=0.5),
    ]


def _every_tile(q, k, v, layout, block_size):
    """What the rule avoids: the same case with every tile computed (the CPU rule's yardstick)."""
    return sparse.block_sparse_attention(q, k, v, torch.ones_like(layout), block_size)


def _sparse_reference(q, k, v, layout, block_size):
    return sparse.block_sparse_attention(q, k, v, layout, block_size)


# --------------------------------------------------------------------------- linear attention (chapter 20)


def _chunk_case(name: str, g: torch.Generator, B: int, H: int, N: int, d: int, d_v: int, C: int,
                hint: str = "", rule: bool = True) -> Case:
    q, k, v = randn(g, B, H, N, d), randn(g, B, H, N, d), randn(g, B, H, N, d_v)
    # Half of one (N, N) matrix: a whole one (scores, a causal mask, decay factors) cannot pass,
    # while phi(q), phi(k) (B, H, N, d) and the output stay well below it in these cases.
    return Case(name, (q, k, v, C), hint=hint, max_numel=N * N // 2 if rule else 0)


def _chunk_cases(g: torch.Generator) -> list[Case]:
    return [
        _chunk_case("one chunk, N = 8", g, 1, 1, 8, 4, 4, 8, rule=False,
                    hint="One chunk holds the whole sequence here: only its inside part counts."),
        _chunk_case("N = 256 in chunks of 32, d != d_v", g, 1, 2, 256, 8, 4, 32,
                    hint="8 chunks: every query reads all the chunks before its own."),
        _chunk_case("N = 100 is not a multiple of the chunk size 16", g, 2, 1, 100, 6, 3, 16,
                    hint="The last chunk holds 4 tokens."),
        _chunk_case("chunks of 1 token", g, 1, 1, 40, 4, 4, 1, rule=False,
                    hint="C = 1: the inside part of a chunk is the query with its own key only."),
        _chunk_case("N = 18000 in chunks of 128", g, 1, 1, 18000, 8, 4, 128,
                    hint="One (N, N) float32 matrix is 1.3 GB here."),
    ]


def _chunk_reference(q, k, v, chunk_size):
    return linear.causal_linear_attention_chunkwise(q, k, v, chunk_size)[0]


def _state_after(g: torch.Generator, B: int, H: int, d: int, d_v: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (kv, z) state after ``t`` random tokens."""
    state = linear.LinearAttentionState.zeros(B, H, d, d_v)
    for _ in range(t):
        _, state = linear.linear_attention_step(state, randn(g, B, H, d), randn(g, B, H, d), randn(g, B, H, d_v))
    return state.kv, state.z


def _step_cases(g: torch.Generator) -> list[Case]:
    def case(name, B, H, d, d_v, t, hint=""):
        kv, z = _state_after(g, B, H, d, d_v, t)
        return Case(name, (kv, z, randn(g, B, H, d), randn(g, B, H, d), randn(g, B, H, d_v)), hint=hint)

    return [
        case("the first token (empty state)", 1, 1, 4, 4, 0,
             hint="The state is empty here (kv = 0, z = 0): token t's own key and value are all there is to read."),
        case("after 5 tokens", 2, 2, 4, 3, 5),
        case("after 20 tokens, d != d_v", 1, 3, 6, 2, 20),
        case("batch and heads", 3, 2, 8, 8, 3),
    ]


def _step_reference(kv, z, q_t, k_t, v_t):
    out, state = linear.linear_attention_step(linear.LinearAttentionState(kv, z), q_t, k_t, v_t)
    return out, state.kv, state.z


EXERCISE = Exercise(
    id="ex09_efficient_attention",
    title="Efficient attention",
    tasks=(
        Task("attention_flops", _flops_reference, _flops_cases, rtol=1e-9, atol=0.0,
             arg_names=("batch", "heads", "N", "head_dim", "causal"),
             forbidden=("attn_course.flash.attention_flops",),
             hint="Count one matrix product first: an (N, d) by (d, N) product does N * N * d multiply-adds. "
                  "How many such products does one head do, and what does a causal kernel skip?"),
        Task("block_layout", sparse.mask_to_layout, _layout_cases, arg_names=("mask", "block_size"),
             forbidden=("attn_course.sparse.mask_to_layout",),
             hint="Pad the mask with False up to whole blocks first; then a view with two more dimensions "
                  "puts each (b, b) tile on its own axes, ready to be reduced."),
        Task("block_sparse_attention", _sparse_reference, _sparse_cases, points=3,
             arg_names=("q", "k", "v", "layout", "block_size"),
             forbidden=("attn_course.sparse.block_sparse_attention", "attn_course.sparse.dense_masked_attention",
                        "attn_course.sparse.layout_to_mask", *_ATTENTIONS),
             rule="compute only the tiles the layout allows", dense=_every_tile, min_call_seconds=30,
             hint="Loop over the query blocks. For query block i, layout[i].nonzero() lists its key blocks: "
                  "slice just those keys and values (the last block may be shorter), put them side by side, "
                  "and attend to them as usual. Decide what a query block with no key block returns."),
        Task("chunkwise_linear_attention", _chunk_reference, _chunk_cases, points=3,
             arg_names=("q", "k", "v", "chunk_size"), forbidden=_LINEAR,
             rule="no (N, N) matrix: the chunks before are one (d, d_v) state",
             memory_limit_bytes=1 << 30, min_call_seconds=30,  # N = 18000: the case that cannot fit takes a while
             hint="Keep the two running sums of chapter 20 over the chunks already done: kv (d, d_v) and z (d,). "
                  "A chunk's queries read them for the past and add a small causal (C, C) attention inside "
                  "their own chunk; only then does the chunk join kv and z."),
        Task("linear_attention_step", _step_reference, _step_cases,
             arg_names=("kv", "z", "q_t", "k_t", "v_t"), forbidden=_LINEAR,
             hint="Which tokens may query t see? Build the new state first, as new tensors, then read it."),
    ),
)
