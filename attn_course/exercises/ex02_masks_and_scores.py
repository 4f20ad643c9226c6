"""Exercise 2: masked softmax, learned scores, masked attention (Part I).

Tasks:
    masked_softmax(scores, mask)                       True = may attend; fully masked rows -> zeros
    general_score(query, keys, W)                      Luong: q^T W k
    additive_score(query, keys, W_q, W_k, v)           Bahdanau: v^T tanh(W_q q + W_k k)
    masked_attention(query, keys, values, mask)        -> (output, weights)
"""

from __future__ import annotations

import torch

from ..attention import scaled_dot_product_attention
from ..grading.tasks import Case, Exercise, Task, randn
from ..masking import causal_mask, masked_softmax, padding_mask
from ..scoring import AdditiveScore, GeneralScore

_SOFTMAXES = ("torch.softmax", "torch.nn.functional.softmax", "torch.Tensor.softmax", "torch.special.softmax",
              "torch._softmax", "attn_course.masking.masked_softmax",
              "attn_course.masking.masked_softmax_unchecked")
_ATTENTIONS = ("torch.nn.functional.scaled_dot_product_attention",
               "attn_course.attention.scaled_dot_product_attention",
               "attn_course.attention.attention_weights_unchecked", "attn_course.attention.attention_weights")


def _bool(g: torch.Generator, *shape: int, p: float = 0.7) -> torch.Tensor:
    return torch.rand(*shape, generator=g) < p


def _masked_softmax_cases(g: torch.Generator) -> list[Case]:
    one_dead = _bool(g, 4, 6)
    one_dead[2] = False
    one_dead[0, 0] = True
    return [
        Case("all allowed", (randn(g, 3, 5), torch.ones(3, 5, dtype=torch.bool))),
        Case("random mask", (randn(g, 4, 6), _bool(g, 4, 6) | torch.eye(4, 6, dtype=torch.bool))),
        Case("causal mask", (randn(g, 5, 5), causal_mask(5))),
        Case("padding mask broadcast over rows", (randn(g, 2, 3, 6), padding_mask([4, 6])[:, 0]),
             hint="A (B, 1, S) mask broadcasts over the L rows of (B, L, S) scores."),
        Case("a fully masked row", (randn(g, 4, 6), one_dead),
             hint="A row with no allowed position must give all zeros, not NaN: exp(-inf) sums to 0 and 0/0 is NaN."),
        Case("large logits", (randn(g, 3, 7, scale=1e4), _bool(g, 3, 7) | torch.eye(3, 7, dtype=torch.bool)),
             hint="Subtract each row's max over the ALLOWED positions before exp()."),
    ]


def _general_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("d_q == d_k", (randn(g, 3, 4), randn(g, 5, 4), randn(g, 4, 4))),
        Case("d_q != d_k", (randn(g, 2, 6), randn(g, 7, 3), randn(g, 6, 3)),
             hint="W has shape (d_q, d_k): compute (query @ W) @ keys^T."),
        Case("batched", (randn(g, 2, 3, 5), randn(g, 2, 4, 8), randn(g, 5, 8))),
    ]


def _additive_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("one query", (randn(g, 1, 4), randn(g, 5, 4), randn(g, 8, 4), randn(g, 8, 4), randn(g, 8))),
        Case("d_q != d_k", (randn(g, 3, 6), randn(g, 4, 2), randn(g, 5, 6), randn(g, 5, 2), randn(g, 5)),
             hint="W_q has shape (h, d_q) like nn.Linear's weight: project with query @ W_q.T."),
        Case("batched", (randn(g, 2, 3, 4), randn(g, 2, 6, 4), randn(g, 7, 4), randn(g, 7, 4), randn(g, 7))),
    ]


def _attention_cases(g: torch.Generator) -> list[Case]:
    dead = torch.ones(2, 4, 5, dtype=torch.bool)
    dead[1, 3] = False
    return [
        Case("no mask needed (all True)", (randn(g, 3, 8), randn(g, 5, 8), randn(g, 5, 2),
                                            torch.ones(3, 5, dtype=torch.bool))),
        Case("causal", (randn(g, 2, 6, 8), randn(g, 2, 6, 8), randn(g, 2, 6, 3), causal_mask(6))),
        Case("padding, batch and heads", (randn(g, 2, 2, 4, 8), randn(g, 2, 2, 5, 8), randn(g, 2, 2, 5, 8),
                                          padding_mask([3, 5]))),
        Case("a fully masked row", (randn(g, 2, 4, 8), randn(g, 2, 5, 8), randn(g, 2, 5, 4), dead),
             hint="A query that may attend to nothing gets zero weights, so a zero output."),
    ]


def _general_reference(query, keys, W):
    module = GeneralScore(W.shape[0], W.shape[1])
    with torch.no_grad():
        module.W.copy_(W)
        return module(query, keys)


def _additive_reference(query, keys, W_q, W_k, v):
    module = AdditiveScore(W_q.shape[1], W_k.shape[1], W_q.shape[0])
    with torch.no_grad():
        module.W_q.weight.copy_(W_q)  # (h, d_q)
        module.W_k.weight.copy_(W_k)  # (h, d_k)
        module.v.weight.copy_(v[None])  # (1, h)
        return module(query, keys)


EXERCISE = Exercise(
    id="ex02_masks_and_scores",
    title="Masks and learned scoring functions",
    tasks=(
        Task("masked_softmax", masked_softmax, _masked_softmax_cases, points=2, arg_names=("scores", "mask"),
             forbidden=_SOFTMAXES,
             hint="Set masked scores to -inf (or drop them from the max and the sum), subtract the row max, "
                  "exponentiate, normalise; then make rows with no allowed position all zeros."),
        Task("general_score", _general_reference, _general_cases, arg_names=("query", "keys", "W"),
             forbidden=("attn_course.scoring.GeneralScore.forward",),
             hint="score[i, j] = query[i] @ W @ keys[j]: project the queries with W, then take dot products."),
        Task("additive_score", _additive_reference, _additive_cases, points=2,
             arg_names=("query", "keys", "W_q", "W_k", "v"),
             forbidden=("attn_course.scoring.AdditiveScore.forward",),
             hint="Project queries to (..., L, h) and keys to (..., S, h), add them pairwise by broadcasting "
                  "to (..., L, S, h) (unsqueeze), apply tanh, then take the dot product with v."),
        Task("masked_attention", scaled_dot_product_attention, _attention_cases, points=2,
             arg_names=("query", "keys", "values", "mask"), forbidden=_ATTENTIONS,
             hint="Scaled dot-product scores -> your masked_softmax -> weights @ values; return (output, weights)."),
    ),
)
