"""Plausible wrong leakage tests for exercise 6 (see tests/grading/test_wrong_submissions.py).

The task has partial credit: a test earns a point per planted bug it rejects, but only if it
accepts both correct attention functions. So a wrong test here is one that scores nothing: it
catches no bug at all, or it calls a correct attention buggy (then nothing counts). A test that
catches only some bugs earns part of the points by design and is not a wrong submission.
"""

VARIANTS = [
    {
        # Checks only what every attention gets right: shapes and weights that sum to 1 over the
        # keys, with one head and d = 1. Every bug passes it.
        "leakage_test": ("""
import torch

def leakage_test(attention):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 1, 5, 1, generator=g) for _ in range(3))
    out, w = attention(q, k, v, is_causal=True)
    return out.shape == v.shape and w.shape == (2, 1, 5, 5) and torch.allclose(w.sum(-1), torch.ones(()))
""", "bug:"),
    },
    {
        # Compares with its own formula using == instead of a tolerance: correct functions that
        # round differently are called buggy.
        "leakage_test": ("""
import math
import torch

def leakage_test(attention):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 6, 4, generator=g) for _ in range(3))
    out, w = attention(q, k, v, is_causal=True)
    s = (q.double() @ k.double().transpose(-2, -1) / math.sqrt(4))
    s = s.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
    expected = torch.softmax(s, -1)
    return torch.equal(w.double(), expected) and torch.equal(out.double(), expected @ v.double())
""", "a correct attention"),
    },
    {
        # "Causal" read as "strictly before": changing token t is expected to leave the output at t
        # unchanged, which a correct attention (query t sees key t) never does.
        "leakage_test": ("""
import torch

def leakage_test(attention):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 6, 4, generator=g) for _ in range(3))
    out, _ = attention(q, k, v, is_causal=True)
    for t in range(6):
        k2, v2 = k.clone(), v.clone()
        k2[..., t:, :] = torch.randn(2, 3, 6 - t, 4, generator=g)
        v2[..., t:, :] = torch.randn(2, 3, 6 - t, 4, generator=g)
        out2, _ = attention(q, k2, v2, is_causal=True)
        if not torch.allclose(out2[..., : t + 1, :], out[..., : t + 1, :], atol=1e-5):
            return False
    return True
""", "a correct attention"),
    },
    {
        # Its own formula scales by 1/d instead of 1/sqrt(d): the correct functions disagree with it.
        "leakage_test": """
import torch

def leakage_test(attention):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 6, 4, generator=g) for _ in range(3))
    out, w = attention(q, k, v, is_causal=True)
    s = (q @ k.transpose(-2, -1) / 4).masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
    expected = torch.softmax(s, -1)
    return torch.allclose(w, expected, atol=1e-5) and torch.allclose(out, expected @ v, atol=1e-5)
""",
    },
]
