"""Exercise 1: attention as a softmax-weighted average (Part I).

Tasks, in the order the notebook builds them:
    softmax(scores)                      stable softmax over the last dim
    dot_scores(query, keys)              (..., L, d) x (..., S, d) -> (..., L, S)
    scaled_dot_scores(query, keys)       the same, divided by sqrt(d)
    context_vector(weights, values)      (..., L, S) x (..., S, d_v) -> (..., L, d_v)
    attend(query, keys, values)          -> (context, weights), scaled dot-product attention
"""

from __future__ import annotations

import torch

from ..attention import context_vector, scaled_dot_product_attention
from ..grading.tasks import Case, Exercise, Task, randn
from ..masking import masked_softmax
from ..scoring import dot_score, scaled_dot_score

# The library versions of what the tasks ask for: calling them instead scores nothing.
_SOFTMAXES = ("torch.softmax", "torch.nn.functional.softmax", "torch.Tensor.softmax", "torch.special.softmax",
              "torch._softmax", "attn_course.masking.masked_softmax",
              "attn_course.masking.masked_softmax_unchecked")
_ATTENTIONS = ("torch.nn.functional.scaled_dot_product_attention",
               "attn_course.attention.scaled_dot_product_attention",
               "attn_course.attention.attention_weights_unchecked")


def _softmax_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("one row", (randn(g, 5),)),
        Case("batch of rows", (randn(g, 4, 7),)),
        Case("3-D scores", (randn(g, 2, 3, 6),)),
        Case("large logits", (randn(g, 3, 6, scale=1e4),),
             hint="exp(10000.0) overflows to inf in float32, and inf/inf is NaN."),
        Case("large negative logits", (randn(g, 2, 5) - 1e4,),
             hint="exp(-10000.0) underflows to 0, and 0/0 is NaN."),
        Case("float64 input", (randn(g, 3, 4, dtype=torch.float64),),
             hint="Keep the input's dtype: don't convert to float32."),
        Case("single column", (randn(g, 4, 1),)),
    ]


def _score_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("one query", (randn(g, 1, 4), randn(g, 5, 4))),
        Case("L != S", (randn(g, 3, 8), randn(g, 6, 8))),
        Case("batched", (randn(g, 2, 3, 4), randn(g, 2, 5, 4))),
        Case("batch and heads", (randn(g, 2, 3, 4, 16), randn(g, 2, 3, 7, 16))),
        Case("d = 1", (randn(g, 3, 1), randn(g, 2, 1))),
    ]


def _context_cases(g: torch.Generator) -> list[Case]:
    one_hot = torch.zeros(3, 5)
    one_hot[torch.arange(3), torch.tensor([4, 0, 2])] = 1.0
    return [
        Case("one-hot weights (a hard lookup)", (one_hot, randn(g, 5, 2))),
        Case("uniform weights (the mean)", (torch.full((2, 4), 0.25), randn(g, 4, 3))),
        Case("softmax weights, d_v != S", (torch.softmax(randn(g, 3, 6), -1), randn(g, 6, 9))),
        Case("batch and heads", (torch.softmax(randn(g, 2, 2, 3, 5), -1), randn(g, 2, 2, 5, 4))),
    ]


def _attend_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("one query", (randn(g, 1, 4), randn(g, 6, 4), randn(g, 6, 4))),
        Case("L != S, d_v != d_k", (randn(g, 3, 8), randn(g, 5, 8), randn(g, 5, 2))),
        Case("batch and heads", (randn(g, 2, 4, 5, 16), randn(g, 2, 4, 7, 16), randn(g, 2, 4, 7, 16))),
        Case("large scores", (randn(g, 2, 3, 64, scale=30.0), randn(g, 2, 4, 64, scale=30.0), randn(g, 2, 4, 3)),
             hint="Large scores overflow exp(); use your stable softmax."),
    ]


def _attend_reference(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
    return scaled_dot_product_attention(query, keys, values)


EXERCISE = Exercise(
    id="ex01_softmax_attention",
    title="Attention as a softmax-weighted average",
    tasks=(
        Task("softmax", lambda scores: masked_softmax(scores), _softmax_cases, points=2, arg_names=("scores",),
             forbidden=_SOFTMAXES,
             hint="Softmax over the last dimension: exp(x - max) / sum(exp(x - max)). "
                  "Subtracting each row's max changes nothing mathematically and keeps exp() finite."),
        Task("dot_scores", dot_score, _score_cases, arg_names=("query", "keys"),
             forbidden=("attn_course.scoring.dot_score", "attn_course.scoring.scaled_dot_score",
                        "attn_course.scoring.scaled_dot_score_unchecked"),
             hint="scores[..., i, j] = query[..., i, :] . keys[..., j, :], which is query @ keys.transpose(-2, -1)."),
        Task("scaled_dot_scores", scaled_dot_score, _score_cases, arg_names=("query", "keys"),
             forbidden=("attn_course.scoring.scaled_dot_score", "attn_course.scoring.scaled_dot_score_unchecked"),
             hint="Divide the dot products by sqrt(d), where d = query.shape[-1]."),
        Task("context_vector", context_vector, _context_cases, arg_names=("weights", "values"),
             forbidden=("attn_course.attention.context_vector",),
             hint="The context is a weighted sum over the S positions: weights @ values."),
        Task("attend", _attend_reference, _attend_cases, points=2, arg_names=("query", "keys", "values"),
             forbidden=_ATTENTIONS,
             hint="Chain your pieces: scaled scores -> softmax over the keys -> context. "
                  "Return a tuple (context, weights)."),
    ),
)
