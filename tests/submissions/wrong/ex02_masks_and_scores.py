"""Plausible wrong solutions of exercise 2 (see tests/grading/test_wrong_submissions.py).

Each definition is self-contained (it calls none of the notebook's other functions).
"""

VARIANTS = [
    {
        # The textbook -inf trick: a fully masked row becomes 0/0 = NaN.
        "masked_softmax": ("""
def masked_softmax(scores, mask):
    s = scores.masked_fill(~mask, float("-inf"))
    e = (s - s.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)
""", "a fully masked row"),
        # W applied the wrong way round: q^T W^T k.
        "general_score": """
def general_score(query, keys, W):
    return query @ W.T @ keys.transpose(-2, -1)
""",
        # No tanh: the score is linear in the projections.
        "additive_score": """
def additive_score(query, keys, W_q, W_k, v):
    hidden = (query @ W_q.T).unsqueeze(-2) + (keys @ W_k.T).unsqueeze(-3)
    return hidden @ v
""",
        # Scaled by the values' width instead of the keys'.
        "masked_attention": ("""
import math
import torch

def masked_attention(query, keys, values, mask):
    scores = query @ keys.transpose(-2, -1) / math.sqrt(values.shape[-1])
    s = scores.masked_fill(~mask, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = (s - m).exp()
    total = e.sum(-1, keepdim=True)
    weights = torch.where(total > 0, e / total.clamp_min(1e-30), torch.zeros_like(e))
    return weights @ values, weights
""", "no mask needed"),
    },
    {
        # A large finite negative instead of -inf: a fully masked row becomes uniform, not zeros.
        "masked_softmax": ("""
def masked_softmax(scores, mask):
    s = scores.masked_fill(~mask, -1e9)
    e = (s - s.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)
""", "a fully masked row"),
        # W ignored: plain dot products (only fits when d_q == d_k).
        "general_score": """
def general_score(query, keys, W):
    return query @ keys.transpose(-2, -1)
""",
        # tanh after the product with v.
        "additive_score": """
import torch

def additive_score(query, keys, W_q, W_k, v):
    hidden = (query @ W_q.T).unsqueeze(-2) + (keys @ W_k.T).unsqueeze(-3)
    return torch.tanh(hidden @ v)
""",
        # The mask applied after the softmax, without normalising again.
        "masked_attention": """
import math

def masked_attention(query, keys, values, mask):
    scores = query @ keys.transpose(-2, -1) / math.sqrt(query.shape[-1])
    e = (scores - scores.amax(-1, keepdim=True)).exp()
    weights = e / e.sum(-1, keepdim=True) * mask
    return weights @ values, weights
""",
    },
    {
        # The shift includes the masked positions: when they hold the largest scores, every allowed exp() underflows.
        "masked_softmax": ("""
import torch

def masked_softmax(scores, mask):
    e = (scores - scores.amax(-1, keepdim=True)).exp() * mask
    total = e.sum(-1, keepdim=True)
    return torch.where(total > 0, e / total.clamp_min(1e-30), torch.zeros_like(e))
""", "the largest scores are masked"),
        # Scaled by sqrt(d_k) as in exercise 1: Luong's general score has no scale.
        "general_score": """
import math

def general_score(query, keys, W):
    return (query @ W) @ keys.transpose(-2, -1) / math.sqrt(keys.shape[-1])
""",
        # The weights applied as x @ W instead of x @ W.T (nn.Linear's layout misread).
        "additive_score": """
import torch

def additive_score(query, keys, W_q, W_k, v):
    hidden = torch.tanh((query @ W_q).unsqueeze(-2) + (keys @ W_k).unsqueeze(-3))
    return hidden @ v
""",
        # The mask read the wrong way round: True taken as "hidden".
        "masked_attention": """
import math
import torch

def masked_attention(query, keys, values, mask):
    scores = query @ keys.transpose(-2, -1) / math.sqrt(query.shape[-1])
    s = scores.masked_fill(mask, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = (s - m).exp()
    total = e.sum(-1, keepdim=True)
    weights = torch.where(total > 0, e / total.clamp_min(1e-30), torch.zeros_like(e))
    return weights @ values, weights
""",
    },
    {
        # Masked scores set to 0 instead of excluded: a score of 0 still gets weight.
        "masked_softmax": """
def masked_softmax(scores, mask):
    s = scores * mask
    e = (s - s.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)
""",
        # The -inf trick in attention: a query with nothing to attend to gets NaN.
        "masked_attention": ("""
import math

def masked_attention(query, keys, values, mask):
    scores = query @ keys.transpose(-2, -1) / math.sqrt(query.shape[-1])
    s = scores.masked_fill(~mask, float("-inf"))
    e = (s - s.amax(-1, keepdim=True)).exp()
    weights = e / e.sum(-1, keepdim=True)
    return weights @ values, weights
""", "a fully masked row"),
        # W_q copied for the keys too: one projection for both.
        "additive_score": """
import torch

def additive_score(query, keys, W_q, W_k, v):
    hidden = torch.tanh((query @ W_q.T).unsqueeze(-2) + (keys @ W_q.T).unsqueeze(-3))
    return hidden @ v
""",
    },
]
