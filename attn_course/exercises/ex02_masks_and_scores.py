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
    big_masked = _bool(g, 3, 7) | torch.eye(3, 7, dtype=torch.bool)
    big_masked[:, -1] = False  # every row has a masked position, and its score is the row's largest
    big_scores = randn(g, 3, 7, scale=3.0) + 200.0 * (~big_masked)  # (3, 7)
    return [
        Case("all allowed", (randn(g, 3, 5), torch.ones(3, 5, dtype=torch.bool))),
        Case("random mask", (randn(g, 4, 6), _bool(g, 4, 6) | torch.eye(4, 6, dtype=torch.bool)),
             hint="Masked positions must get weight exactly 0 and the allowed ones must still sum to 1."),
        Case("causal mask", (randn(g, 5, 5), causal_mask(5))),
        Case("padding mask broadcast over rows", (randn(g, 2, 3, 6), padding_mask([4, 6])[:, 0]),
             hint="The mask is (B, 1, S) and the scores (B, L, S): one mask row serves all L rows."),
        Case("a fully masked row", (randn(g, 4, 6), one_dead),
             hint="Row 2 has no allowed position: its weights must be all zeros, not NaN (0/0) and not "
                  "uniform."),
        Case("the largest scores are masked", (big_scores, big_masked),
             hint="In every row the masked scores are 200 above the allowed ones; if they take part in "
                  "the row's shift, exp() of every allowed score underflows to 0."),
        Case("large logits", (randn(g, 3, 7, scale=1e4), _bool(g, 3, 7) | torch.eye(3, 7, dtype=torch.bool)),
             hint="Logits of size 10^4: exp() of them overflows float32."),
    ]


def _general_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("d_q == d_k", (randn(g, 3, 4), randn(g, 5, 4), randn(g, 4, 4)),
             hint="W is not symmetric: q^T W k and q^T W^T k differ."),
        Case("d_q != d_k", (randn(g, 2, 6), randn(g, 7, 3), randn(g, 6, 3)),
             hint="query is 6 wide, keys 3 wide, W is (d_q, d_k) = (6, 3): only one order of the products fits."),
        Case("batched", (randn(g, 2, 3, 5), randn(g, 2, 4, 8), randn(g, 5, 8)),
             hint="One W shared by the whole batch: queries and keys have a leading batch dimension, W does not."),
        Case("batch and heads", (randn(g, 2, 2, 3, 5), randn(g, 2, 2, 6, 4), randn(g, 5, 4))),
    ]


def _additive_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("one query", (randn(g, 1, 4), randn(g, 5, 4), randn(g, 8, 4), randn(g, 8, 4), randn(g, 8))),
        Case("square projections (h = d_q = d_k)", (randn(g, 3, 4), randn(g, 5, 4), randn(g, 4, 4), randn(g, 4, 4),
                                                    randn(g, 4)),
             hint="W_q and W_k are square here, so a projection with the weight the wrong way round has the "
                  "right shape and the wrong values."),
        Case("d_q != d_k", (randn(g, 3, 6), randn(g, 4, 2), randn(g, 5, 6), randn(g, 5, 2), randn(g, 5)),
             hint="W_q is (h, d_q) = (5, 6) and W_k is (h, d_k) = (5, 2), as nn.Linear stores its weight."),
        Case("batched, L != S", (randn(g, 2, 3, 4), randn(g, 2, 6, 4), randn(g, 7, 4), randn(g, 7, 4), randn(g, 7)),
             hint="3 queries, 6 keys: score[i, j] pairs query i with key j, in that order."),
    ]


def _attention_cases(g: torch.Generator) -> list[Case]:
    dead = torch.ones(2, 4, 5, dtype=torch.bool)
    dead[1, 3] = False
    return [
        Case("no mask needed (all True)", (randn(g, 3, 8), randn(g, 5, 8), randn(g, 5, 2),
                                            torch.ones(3, 5, dtype=torch.bool)),
             hint="Keys are d_k = 8 wide, values d_v = 2 wide: the scale belongs to the scores."),
        Case("causal", (randn(g, 2, 6, 8), randn(g, 2, 6, 8), randn(g, 2, 6, 3), causal_mask(6)),
             hint="True marks the positions a query MAY attend to; the weights of each row sum to 1 over them."),
        Case("padding, batch and heads", (randn(g, 2, 2, 4, 8), randn(g, 2, 2, 5, 8), randn(g, 2, 2, 5, 8),
                                          padding_mask([3, 5])),
             hint="The mask is (B, 1, 1, S): it broadcasts over the heads and the queries."),
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
             hint="Start from your stable softmax and ask, at each step, which positions take part: in the "
                  "row's maximum, in exp(), in the sum. Then decide what a row with no allowed position "
                  "returns, before it divides by 0."),
        Task("general_score", _general_reference, _general_cases, arg_names=("query", "keys", "W"),
             forbidden=("attn_course.scoring.GeneralScore.forward",),
             hint="Write q^T W k for one pair first, then for all pairs: bring each query into the keys' "
                  "width with W, and the rest is the dot-product score you know."),
        Task("additive_score", _additive_reference, _additive_cases, points=2,
             arg_names=("query", "keys", "W_q", "W_k", "v"),
             forbidden=("attn_course.scoring.AdditiveScore.forward",),
             hint="Project the queries and the keys once each (how does nn.Linear apply a (h, d) weight?). "
                  "Every (query, key) pair needs its own sum: add a size-1 axis to each so that they "
                  "broadcast to (..., L, S, h)."),
        Task("masked_attention", scaled_dot_product_attention, _attention_cases, points=2,
             arg_names=("query", "keys", "values", "mask"), forbidden=_ATTENTIONS,
             hint="Exercise 1's attend with one change: which of your functions knows what to do with a mask?"),
    ),
)
