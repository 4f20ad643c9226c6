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
        Case("2 heads", (randn(g, 2, 3, 8), 2)),
        Case("one head", (randn(g, 1, 4, 6), 1)),
        Case("as many heads as features", (randn(g, 2, 2, 4), 4)),
        Case("odd sizes", (randn(g, 3, 5, 15), 5),
             hint="Head h takes features h*d .. (h+1)*d - 1: reshape to (B, T, H, d), then move H forward."),
    ]


def _merge_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("2 heads", (randn(g, 2, 2, 3, 4),)),
        Case("one head", (randn(g, 1, 1, 4, 6),)),
        Case("odd sizes", (randn(g, 3, 5, 7, 3),),
             hint="Undo split_heads: move the head axis back next to d, then reshape to (B, T, H * d)."),
    ]


def _causal_cases(g: torch.Generator) -> list[Case]:
    return [Case("T = 1", (1,)), Case("T = 4", (4,)), Case("T = 9", (9,))]


def _padding_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("all full", (torch.tensor([3, 3]), 3)),
        Case("ragged", (torch.tensor([1, 4, 2]), 4)),
        Case("max_len longer than every sequence", (torch.tensor([2, 1]), 5)),
        Case("an empty sequence", (torch.tensor([0, 3]), 3), hint="Length 0: every position is padding."),
    ]


def _mhsa_cases(g: torch.Generator) -> list[Case]:
    def weights(D: int) -> tuple[torch.Tensor, ...]:
        return tuple(randn(g, D, D, scale=D ** -0.5) for _ in range(4))

    return [
        Case("one head, no masking", (randn(g, 2, 4, 6), *weights(6), 1, torch.ones(4, 4, dtype=torch.bool))),
        Case("2 heads, causal", (randn(g, 2, 5, 8), *weights(8), 2, masking.causal_mask(5))),
        Case("3 heads, padding", (randn(g, 2, 4, 12), *weights(12), 3, masking.padding_mask([2, 4])),
             hint="A (B, 1, 1, T) padding mask broadcasts over heads and query positions."),
        Case("4 heads, causal and padding", (randn(g, 2, 6, 8), *weights(8), 4,
                                             masking.causal_mask(6) & masking.padding_mask([6, 3]))),
    ]


def _sinusoid_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("small", (4, 6)),
        Case("one position", (1, 8)),
        Case("long", (50, 16)),
        Case("odd dim", (5, 7), hint="Column j uses the frequency of pair j // 2: sin for even j, cos for odd j."),
    ]


def _rope_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("one sequence", (randn(g, 5, 4),)),
        Case("batch and heads", (randn(g, 2, 3, 6, 8),)),
        Case("d = 2", (randn(g, 7, 2),)),
        Case("long sequence", (randn(g, 40, 16),),
             hint="theta_i = 10000 ** (-2i / d) for pair i = 0 .. d/2 - 1; position m turns pair i by m * theta_i."),
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
             hint="(B, T, D) -> (B, T, H, d) with reshape, then transpose(1, 2) -> (B, H, T, d)."),
        Task("merge_heads", merge_heads, _merge_cases, arg_names=("x",),
             forbidden=("attn_course.multihead.merge_heads",),
             hint="transpose(1, 2) -> (B, T, H, d), then reshape to (B, T, H * d)."),
        Task("causal_mask", masking.causal_mask, _causal_cases, arg_names=("T",),
             forbidden=("attn_course.masking.causal_mask",),
             hint="Position i may attend to j <= i: a lower-triangular boolean matrix (torch.tril)."),
        Task("padding_mask", _padding_reference, _padding_cases, arg_names=("lengths", "max_len"),
             forbidden=("attn_course.masking.padding_mask",),
             hint="Compare positions arange(max_len) with each length: position s is real when s < length."),
        Task("multi_head_self_attention", _mhsa_reference, _mhsa_cases, points=2,
             arg_names=("x", "W_q", "W_k", "W_v", "W_o", "num_heads", "mask"),
             forbidden=("attn_course.multihead.MultiHeadAttention.forward",
                        "attn_course.attention.scaled_dot_product_attention",
                        "torch.nn.functional.scaled_dot_product_attention",
                        "torch.nn.functional.multi_head_attention_forward"),
             hint="Project with x @ W.T, split into heads, scaled dot-product attention per head with the "
                  "mask, merge the heads, then project with W_o.T."),
        Task("sinusoidal_encoding", positional.sinusoidal_encoding, _sinusoid_cases, arg_names=("seq_len", "dim"),
             forbidden=("attn_course.positional.sinusoidal_encoding",),
             hint="PE[pos, 2i] = sin(pos / 10000^(2i/dim)), PE[pos, 2i+1] = cos(pos / 10000^(2i/dim)); float32."),
        Task("apply_rope", _rope_reference, _rope_cases, points=2, arg_names=("x",),
             forbidden=("attn_course.positional.apply_rope",),
             hint="Pair i is features (2i, 2i+1). At position m: "
                  "(a, b) -> (a cos(m theta_i) - b sin(m theta_i), a sin(m theta_i) + b cos(m theta_i))."),
    ),
)
