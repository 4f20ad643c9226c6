"""Plausible wrong solutions of exercise 1 (see tests/grading/test_wrong_submissions.py).

Each definition is self-contained (it calls none of the notebook's other functions), so that one
variant's mistakes do not leak into another task of the same variant.
"""

VARIANTS = [
    {
        # The textbook formula, no shift: exp() overflows on large logits.
        "softmax": """
def softmax(scores):
    e = scores.exp()
    return e / e.sum(dim=-1, keepdim=True)
""",
        # Keys not transposed along the last two dims: .T reverses every dimension.
        "dot_scores": """
def dot_scores(query, keys):
    return query @ keys.T
""",
        # Divided by d instead of sqrt(d).
        "scaled_dot_scores": """
def scaled_dot_scores(query, keys):
    return query @ keys.transpose(-2, -1) / query.shape[-1]
""",
        # The plain mean of the values: the weights are ignored.
        "context_vector": """
def context_vector(weights, values):
    return values.mean(dim=-2, keepdim=True).expand(*weights.shape[:-1], values.shape[-1])
""",
        # Scaled by the values' width instead of the keys' (the two widths differ in the cases).
        "attend": ("""
import math
import torch

def attend(query, keys, values):
    scores = query @ keys.transpose(-2, -1) / math.sqrt(values.shape[-1])
    e = (scores - scores.amax(-1, keepdim=True)).exp()
    weights = e / e.sum(-1, keepdim=True)
    return weights @ values, weights
""", "d_v != d_k"),
    },
    {
        # One shift for the whole tensor: rows far below the largest one underflow to 0/0.
        "softmax": """
def softmax(scores):
    e = (scores - scores.max()).exp()
    return e / e.sum(dim=-1, keepdim=True)
""",
        # Keys times queries: the result is (S, L), the scores transposed.
        "dot_scores": """
def dot_scores(query, keys):
    return keys @ query.transpose(-2, -1)
""",
        # Divided by sqrt of the number of keys, the last dimension of the scores.
        "scaled_dot_scores": """
import math

def scaled_dot_scores(query, keys):
    scores = query @ keys.transpose(-2, -1)
    return scores / math.sqrt(scores.shape[-1])
""",
        # The weights normalised again with a softmax: a one-hot row is no longer a lookup.
        "context_vector": """
def context_vector(weights, values):
    e = (weights - weights.amax(-1, keepdim=True)).exp()
    return (e / e.sum(-1, keepdim=True)) @ values
""",
        # Softmax over the queries (dim -2) instead of the keys.
        "attend": """
import math

def attend(query, keys, values):
    scores = query @ keys.transpose(-2, -1) / math.sqrt(query.shape[-1])
    e = (scores - scores.amax(-2, keepdim=True)).exp()
    weights = e / e.sum(-2, keepdim=True)
    return weights @ values, weights
""",
    },
    {
        # Normalised over the first dimension instead of the last.
        "softmax": """
def softmax(scores):
    e = (scores - scores.amax(dim=0, keepdim=True)).exp()
    return e / e.sum(dim=0, keepdim=True)
""",
        # Elementwise products summed: only pairs query i with key i.
        "dot_scores": """
def dot_scores(query, keys):
    return (query * keys).sum(dim=-1)
""",
        # No scaling at all.
        "scaled_dot_scores": """
def scaled_dot_scores(query, keys):
    return query @ keys.transpose(-2, -1)
""",
        # A 2-D einsum: no batch or head dimensions.
        "context_vector": """
import torch

def context_vector(weights, values):
    return torch.einsum("ls,sd->ld", weights, values)
""",
        # The unstable softmax inside: large scores overflow.
        "attend": """
import math

def attend(query, keys, values):
    scores = query @ keys.transpose(-2, -1) / math.sqrt(query.shape[-1])
    e = scores.exp()
    weights = e / e.sum(-1, keepdim=True)
    return weights @ values, weights
""",
    },
    {
        # Computed in float32 whatever the input's dtype.
        "softmax": """
def softmax(scores):
    x = scores.float()
    e = (x - x.amax(dim=-1, keepdim=True)).exp()
    return e / e.sum(dim=-1, keepdim=True)
""",
        # The returned pair in the wrong order.
        "attend": """
import math

def attend(query, keys, values):
    scores = query @ keys.transpose(-2, -1) / math.sqrt(query.shape[-1])
    e = (scores - scores.amax(-1, keepdim=True)).exp()
    weights = e / e.sum(-1, keepdim=True)
    return weights, weights @ values
""",
        # Divided by sqrt(L), the number of queries.
        "scaled_dot_scores": """
import math

def scaled_dot_scores(query, keys):
    return query @ keys.transpose(-2, -1) / math.sqrt(query.shape[-2])
""",
    },
]
