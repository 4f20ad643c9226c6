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
        Case("batch of rows", (randn(g, 4, 7),),
             hint="Each of the 4 rows is a separate distribution: every row of the result sums to 1."),
        Case("3-D scores", (randn(g, 2, 3, 6),)),
        Case("large logits", (randn(g, 3, 6, scale=1e4),),
             hint="exp(10000.0) overflows to inf in float32, and inf/inf is NaN."),
        Case("large negative logits", (randn(g, 2, 5) - 1e4,),
             hint="exp(-10000.0) underflows to 0, and 0/0 is NaN."),
        Case("rows of very different sizes", (randn(g, 3, 6) + torch.tensor([[0.0], [-300.0], [300.0]]),),
             hint="The rows sit 300 apart: a shift shared by the whole tensor leaves one row's exp() all 0 "
                  "or all inf."),
        Case("float64 input", (randn(g, 3, 4, dtype=torch.float64),),
             hint="The input is float64 here; the result must be float64 too."),
        Case("single column", (randn(g, 4, 1),)),
    ]


def _score_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("one query", (randn(g, 1, 4), randn(g, 5, 4)),
             hint="L = 1 query against S = 5 keys of width d = 4: the result is (1, 5), one score per key."),
        Case("L != S", (randn(g, 3, 8), randn(g, 6, 8)),
             hint="L = 3, S = 6 and d = 8 are three different numbers: the scale depends on d only."),
        Case("batched", (randn(g, 2, 3, 4), randn(g, 2, 5, 4)),
             hint="A leading batch dimension: only the last two dimensions are (positions, features)."),
        Case("batch and heads", (randn(g, 2, 3, 4, 16), randn(g, 2, 3, 7, 16))),
        Case("d = 1", (randn(g, 3, 1), randn(g, 2, 1))),
    ]


def _context_cases(g: torch.Generator) -> list[Case]:
    one_hot = torch.zeros(3, 5)
    one_hot[torch.arange(3), torch.tensor([4, 0, 2])] = 1.0
    return [
        Case("one-hot weights (a hard lookup)", (one_hot, randn(g, 5, 2)),
             hint="Query i puts all its weight on one value: its context is exactly that value's row."),
        Case("uniform weights (the mean)", (torch.full((2, 4), 0.25), randn(g, 4, 3))),
        Case("softmax weights, d_v != S", (torch.softmax(randn(g, 3, 6), -1), randn(g, 6, 9)),
             hint="S = 6 positions, values 9 wide: the result is (L, d_v) = (3, 9)."),
        Case("batch and heads", (torch.softmax(randn(g, 2, 2, 3, 5), -1), randn(g, 2, 2, 5, 4)),
             hint="Leading (batch, head) dimensions: each (batch, head) pair is a separate weighted sum."),
    ]


def _attend_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("one query", (randn(g, 1, 4), randn(g, 6, 4), randn(g, 6, 4))),
        Case("L != S, d_v != d_k", (randn(g, 3, 8), randn(g, 5, 8), randn(g, 5, 2)),
             hint="Keys are d_k = 8 wide, values d_v = 2 wide: the scale belongs to the scores, so to the "
                  "width that the query and the keys share."),
        Case("batch and heads", (randn(g, 2, 4, 5, 16), randn(g, 2, 4, 7, 16), randn(g, 2, 4, 7, 16))),
        Case("large scores", (randn(g, 2, 3, 64, scale=30.0), randn(g, 2, 4, 64, scale=30.0), randn(g, 2, 4, 3)),
             hint="These scores are in the hundreds: exp() of them overflows float32."),
        Case("L > S, values wider than keys", (randn(g, 2, 6, 3), randn(g, 2, 2, 3), randn(g, 2, 2, 5)),
             hint="6 queries, 2 keys: each query's weights run over the 2 keys and sum to 1."),
    ]


def _attend_reference(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
    return scaled_dot_product_attention(query, keys, values)


EXERCISE = Exercise(
    id="ex01_softmax_attention",
    title="Attention as a softmax-weighted average",
    tasks=(
        Task("softmax", lambda scores: masked_softmax(scores), _softmax_cases, points=2, arg_names=("scores",),
             forbidden=_SOFTMAXES,
             hint="Softmax gives the same result when you subtract one number from every entry of a row. "
                  "Which number, chosen per row, makes the largest exp() exactly 1 and none larger?"),
        Task("dot_scores", dot_score, _score_cases, arg_names=("query", "keys"),
             forbidden=("attn_course.scoring.dot_score", "attn_course.scoring.scaled_dot_score",
                        "attn_course.scoring.scaled_dot_score_unchecked"),
             hint="A matrix product (L, d) @ (d, S) gives (L, S). Your keys are (S, d): which of their two "
                  "last dimensions must swap, so that leading batch dimensions stay where they are?"),
        Task("scaled_dot_scores", scaled_dot_score, _score_cases, arg_names=("query", "keys"),
             forbidden=("attn_course.scoring.scaled_dot_score", "attn_course.scoring.scaled_dot_score_unchecked"),
             hint="Start from your dot_scores. The chapter's argument: a dot product of d unit-variance terms "
                  "has variance d. Which factor brings the variance back to 1, and which of the shapes holds d?"),
        Task("context_vector", context_vector, _context_cases, arg_names=("weights", "values"),
             forbidden=("attn_course.attention.context_vector",),
             hint="Row i of the result is the sum over j of weights[i, j] * values[j]: write it for one row "
                  "with a loop first, then ask which single operation computes every row at once, and check "
                  "it on the shapes (..., L, S) and (..., S, d_v)."),
        Task("attend", _attend_reference, _attend_cases, points=2, arg_names=("query", "keys", "values"),
             forbidden=_ATTENTIONS,
             hint="Three steps, each one of your functions above: which one makes scores, which turns them "
                  "into weights (over which dimension?), which averages the values? Return both results."),
    ),
)
