"""Exercise 3: heads, masks and positions (Part II).

Tasks:
    split_heads(x, num_heads)          (B, T, D) -> (B, H, T, D // H)
    merge_heads(x)                     (B, H, T, d) -> (B, T, H * d)
    causal_mask(T)                     (T, T) bool, True on and below the diagonal
    padding_mask(lengths, max_len)     (B, max_len) bool, True at real tokens
    multi_head_self_attention(x, W_q, W_k, W_v, W_o, num_heads, mask)   -> (B, T, D)
    sinusoidal_encoding(seq_len, dim)  (seq_len, dim)
    apply_rope(x)                      rotate feature pairs (2i, 2i+1) of position m by m * theta_i
"""

from __future__ import annotations

import torch

from .. import masking, positional
from ..attention import scaled_dot_product_attention
from ..grading.tasks import Case, Exercise, Task, randn
from ..multihead import merge_heads, split_heads


def _split_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("2 heads", (randn(g, 2, 3, 8), 2),
             hint="Head 0 must hold features 0 .. 3 of every token, head 1 features 4 .. 7, each token "
                  "still in its own row."),
        Case("one head", (randn(g, 1, 4, 6), 1)),
        Case("as many heads as features", (randn(g, 2, 2, 4), 4)),
        Case("odd sizes", (randn(g, 3, 5, 15), 5),
             hint="B = 3, T = 5, D = 15, H = 5, d = 3: all different, so any mix-up of axes shows."),
    ]


def _merge_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("2 heads", (randn(g, 2, 2, 3, 4),),
             hint="Token t's output is head 0's 4 features of token t, then head 1's: tokens must not mix."),
        Case("one head", (randn(g, 1, 1, 4, 6),)),
        Case("as many tokens as heads", (randn(g, 2, 3, 3, 2),)),
        Case("odd sizes", (randn(g, 3, 5, 7, 3),),
             hint="B = 3, H = 5, T = 7, d = 3: all different, so any mix-up of axes shows."),
    ]


def _causal_cases(g: torch.Generator) -> list[Case]:
    return [Case("T = 1", (1,), hint="One query and one key: a query always sees its own position."),
            Case("T = 2", (2,), hint="Row i is query i, column j key j: query 0 sees only key 0, query 1 both."),
            Case("T = 4", (4,)), Case("T = 9", (9,))]


def _padding_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("all full", (torch.tensor([3, 3]), 3)),
        Case("ragged", (torch.tensor([1, 4, 2]), 4),
             hint="A sequence of length 2 has real tokens at positions 0 and 1, padding from position 2 on."),
        Case("max_len longer than every sequence", (torch.tensor([2, 1]), 5),
             hint="max_len = 5 is longer than every length: the mask is still (B, max_len)."),
        Case("an empty sequence", (torch.tensor([0, 3]), 3), hint="Length 0: every position is padding."),
    ]


def _mhsa_cases(g: torch.Generator) -> list[Case]:
    def weights(D: int) -> tuple[torch.Tensor, ...]:
        return tuple(randn(g, D, D, scale=D ** -0.5) for _ in range(4))

    return [
        Case("one head, no masking", (randn(g, 2, 4, 6), *weights(6), 1, torch.ones(4, 4, dtype=torch.bool)),
             hint="One head and no mask: only the projections, the scale and the softmax are left to differ."),
        Case("2 heads, causal", (randn(g, 2, 5, 8), *weights(8), 2, masking.causal_mask(5)),
             hint="2 heads of width d = 4 in a model of width D = 8: each head scores with its own 4 features."),
        Case("3 heads, padding", (randn(g, 2, 4, 12), *weights(12), 3, masking.padding_mask([2, 4])),
             hint="The padding mask is (B, 1, 1, T): it broadcasts over heads and query positions."),
        Case("4 heads, causal and padding", (randn(g, 2, 6, 8), *weights(8), 4,
                                             masking.causal_mask(6) & masking.padding_mask([6, 3]))),
    ]


def _sinusoid_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("small", (4, 6), hint="Row 0 is position 0: sin 0 = 0 in the even columns, cos 0 = 1 in the odd ones."),
        Case("one position", (1, 8)),
        Case("long", (50, 16),
             hint="Columns 2i and 2i + 1 share one frequency, which falls from 1 (pair 0) as the pair index grows."),
        Case("odd dim", (5, 7), hint="dim = 7: the last column, 6, is the sine of pair 3, with no cosine after it."),
    ]


def _rope_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("one sequence", (randn(g, 5, 4),),
             hint="Position 0 is not rotated at all; position m turns pair i by m times theta_i, "
                  "counterclockwise."),
        Case("batch and heads", (randn(g, 2, 3, 6, 8),),
             hint="The positions are the second-to-last dimension; batch and heads in front share them."),
        Case("d = 2", (randn(g, 7, 2),)),
        Case("long sequence", (randn(g, 40, 16),),
             hint="d = 16: eight pairs, each at its own frequency theta_i, from 1 for pair 0 down."),
    ]


def _padding_reference(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return masking.padding_mask(lengths, max_len)[:, 0, 0]  # (B, 1, 1, S) -> (B, S)


def _mhsa_reference(x, W_q, W_k, W_v, W_o, num_heads, mask):
    # The course's pieces, in order: project, split, attend, merge, project.
    q, k, v = (split_heads(x @ W.T, num_heads) for W in (W_q, W_k, W_v))  # (B, H, T, d) each
    out, _ = scaled_dot_product_attention(q, k, v, mask=mask)  # (B, H, T, d)
    return merge_heads(out) @ W_o.T  # (B, T, D)


def _rope_reference(x: torch.Tensor) -> torch.Tensor:
    return positional.apply_rope(x)


EXERCISE = Exercise(
    id="ex03_multihead_positions",
    title="Heads, masks and positions",
    tasks=(
        Task("split_heads", split_heads, _split_cases, arg_names=("x", "num_heads"),
             forbidden=("attn_course.multihead.split_heads",),
             hint="Two moves: first cut the last dimension D into (H, d) without touching the others, then "
                  "move the head axis in front of the tokens. Which order keeps each token's features together?"),
        Task("merge_heads", merge_heads, _merge_cases, arg_names=("x",),
             forbidden=("attn_course.multihead.merge_heads",),
             hint="Undo split_heads' two moves in the reverse order. A reshape only regroups the dimensions "
                  "that are already next to each other in memory order."),
        Task("causal_mask", masking.causal_mask, _causal_cases, arg_names=("T",),
             forbidden=("attn_course.masking.causal_mask",),
             hint="Draw the 4 x 4 mask by hand, queries as rows: which triangle is True, and the diagonal?"),
        Task("padding_mask", _padding_reference, _padding_cases, arg_names=("lengths", "max_len"),
             forbidden=("attn_course.masking.padding_mask",),
             hint="Compare every position index 0 .. max_len - 1 with every length at once: broadcasting a "
                  "row of positions against a column of lengths gives (B, max_len)."),
        Task("multi_head_self_attention", _mhsa_reference, _mhsa_cases, points=2,
             arg_names=("x", "W_q", "W_k", "W_v", "W_o", "num_heads", "mask"),
             forbidden=("attn_course.multihead.MultiHeadAttention.forward",
                        "attn_course.attention.scaled_dot_product_attention",
                        "torch.nn.functional.scaled_dot_product_attention",
                        "torch.nn.functional.multi_head_attention_forward"),
             hint="Five steps in the chapter's order: project, split, attend in every head at once, merge, "
                  "project. In the attend step, which width is the score's d: the model's or a head's?"),
        Task("sinusoidal_encoding", positional.sinusoidal_encoding, _sinusoid_cases, arg_names=("seq_len", "dim"),
             forbidden=("attn_course.positional.sinusoidal_encoding",),
             hint="Build a (seq_len, 1) column of positions and a (dim,) row of frequencies, one per column "
                  "(which pair does column j belong to?); their product is every angle. Then choose sin or "
                  "cos per column."),
        Task("apply_rope", _rope_reference, _rope_cases, points=2, arg_names=("x",),
             forbidden=("attn_course.positional.apply_rope",),
             hint="Take the even features and the odd features as two (..., T, d/2) tensors a and b, build a "
                  "(T, d/2) table of angles m * theta_i, rotate each (a, b) pair as a 2-D vector, then "
                  "interleave the two halves back in their original order."),
    ),
)
