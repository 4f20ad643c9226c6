"""Exercise 6: find the bug, write the test that catches leaking attention (practises chapter 9).

Task:
    leakage_test(attention) -> bool
        True when ``attention`` (the signature of ``scaled_dot_product_attention``:
        ``attention(q, k, v, mask=None, is_causal=False) -> (output, weights)``) is correct,
        False when it is not.

The learner's test is run against attention functions built in the kernel from
``grading.planted_bugs`` (the cases pass fixture markers of four numbers, see
``grading.fixtures``): two correct implementations, which it must accept (required: a test that
rejects everything earns nothing), and three with a planted bug, one point for each it rejects
(partial credit):

    the causal mask lets position t see t + 1 (or t + 2)
    a multi-head wrapper splits the heads without the transpose
    the default scale is 1 (or 1 / d) instead of 1 / sqrt(d)

Each run draws, from the grader's secret seed, which correct implementations (vectorised, one
query at a time, in chunks), each bug's parameters, and the order of the five cases: a test
cannot answer by counting its calls.

``reference_leakage_test`` is a test that catches all three; its verdicts are the expected
values (a unit test checks them against ``planted_bugs.is_correct``).

Dimension glossary: B batch, H heads, T sequence length, d head width.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..grading.fixtures import fixture
from ..grading.tasks import Case, Exercise, Task
from ..masking import causal_mask


def reference_leakage_test(attention: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """True if ``attention`` computes causal scaled dot-product attention and never sees the future."""
    g = torch.Generator().manual_seed(0)
    B, H, T, d = 2, 3, 6, 4  # several heads and d > 1: some bugs hide with one head or d = 1
    q, k, v = (torch.randn(B, H, T, d, generator=g) for _ in range(3))  # (B, H, T, d) each
    out, weights = attention(q, k, v, is_causal=True)
    # 1. It computes what it should: softmax(q k^T / sqrt(d)) with the future masked, times v.
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, H, T, T)
    future = ~causal_mask(T)  # (T, T): True above the diagonal
    expected = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)  # (B, H, T, T)
    if not (torch.allclose(weights, expected, atol=1e-5) and torch.allclose(out, expected @ v, atol=1e-5)):
        return False
    # 2. Nothing leaks from the future: new tokens after t leave the outputs at 0 .. t unchanged.
    for t in range(T - 1):
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[..., t + 1:, :] = torch.randn(B, H, T - t - 1, d, generator=g)  # on our own copies
        out2, _ = attention(q2, k2, v2, is_causal=True)
        if not torch.allclose(out2[..., : t + 1, :], out[..., : t + 1, :], atol=1e-5):
            return False
    return True


_HOW = ("vectorised", "computed one query at a time", "computed two queries at a time")  # by ``loop``


def _cases(g: torch.Generator) -> list[Case]:
    def draw(n: int) -> int:
        return int(torch.randint(n, (1,), generator=g))

    def planted(diagonal: int = 0, scale_power: int = 1, split: int = 0, loop: int | None = None) -> tuple[dict]:
        loop = draw(3) if loop is None else loop  # bugs too: rounding must not tell them from the correct ones
        return (fixture("planted_attention", diagonal=diagonal, scale_power=scale_power, split=split, loop=loop),)

    first, second = torch.randperm(3, generator=g)[:2].tolist()  # two of the three correct implementations
    diagonal, scale_power = 1 + draw(2), (0, 2)[draw(2)]
    allclose = ("Correct implementations round differently from your own formula, in the last bits: exact "
                "equality tells them apart, and so does a check of something the contract does not promise.")
    cases = [
        Case(f"a correct attention, {_HOW[first]}", planted(loop=first), points=1, required=True,
             hint=f"Your test called a correct attention buggy, and then nothing counts. {allclose}"),
        Case(f"a correct attention, {_HOW[second]}", planted(loop=second), required=True,
             hint=f"Your test called a correct attention buggy. {allclose}"),
        Case(f"bug: the causal mask lets position t see t + {diagonal}", planted(diagonal=diagonal), points=1,
             hint="This attention lets position t see a later token: the outputs at 0 .. t change when the "
                  "tokens after t change."),
        Case("bug: heads split without the transpose", planted(split=1), points=1,
             hint="This attention mixes the heads: with one head it is correct, and its weights look causal; "
                  "only the outputs of several heads show it."),
        Case(f"bug: the default scale is {('1', '', '1/d')[scale_power]} instead of 1/sqrt(d)",
             planted(scale_power=scale_power), points=1,
             hint="This attention scales the scores wrongly by default: with d = 1 the wrong scale and 1/sqrt(d) "
                  "agree, and it never leaks the future."),
    ]
    return [cases[i] for i in torch.randperm(len(cases), generator=g).tolist()]  # points travel with their case


EXERCISE = Exercise(
    id="ex06_find_the_bug",
    title="Find the bug: a test that catches leaking attention",
    tasks=(
        Task("leakage_test", reference_leakage_test, _cases, points=4, partial_credit=True, arg_names=("attention",),
             forbidden=("attn_course.attention.scaled_dot_product_attention", "attn_course.attention.attention_weights",
                        "attn_course.attention.attention_loop", "torch.nn.functional.scaled_dot_product_attention",
                        "attn_course.multihead.MultiHeadAttention.forward",
                        "attn_course.labs.mask_leakage.causal_leakage", "attn_course.labs.mask_leakage.position_changes",
                        "attn_course.labs.mask_leakage.padding_leakage",
                        "attn_course.grading.planted_bugs.planted_attention", "attn_course.grading.fixtures.resolve"),
             hint="List what a correct causal attention promises (the chapter names two kinds of promise: "
                  "what it computes, and what it never looks at), then write one check per promise on inputs "
                  "where every bug you can imagine would show (how many heads? which d?)."),
    ),
)
