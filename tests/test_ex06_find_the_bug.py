"""Exercise 6 (find the bug): the planted attention functions are what they claim, the reference
test tells them apart, and a learner's test earns a point per bug it catches, but only if it
accepts the correct attention functions.

Whole notebooks (the solution source: full marks; the learner notebook: 0) are graded in
tests/test_grading.py; the last test here grades a partial submission in a real kernel.
"""

import math

import nbformat
import pytest
import torch
import torch.nn.functional as F

from attn_course.attention import scaled_dot_product_attention
from attn_course.check import Checker
from attn_course.exercises.ex06_find_the_bug import EXERCISE, reference_leakage_test
from attn_course.grading.planted_bugs import CORRECT, VARIANTS, planted_attention
from attn_course.masking import padding_mask

pytestmark = pytest.mark.usefixtures("one_thread")

BUGS = [v for v in VARIANTS if v not in CORRECT]


def qkv(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g) for _ in range(3))


@pytest.fixture
def check():
    return Checker("ex06_find_the_bug")


@pytest.mark.parametrize("variant", CORRECT)
@pytest.mark.parametrize("is_causal", [False, True])
def test_correct_variants_equal_the_package_and_torch(variant, is_causal):
    attention = planted_attention(variant)
    q, k, v = qkv(2, 3, 5, 4)
    mask = padding_mask([5, 3])  # (B, 1, 1, S)
    for m in (None, mask):
        out, w = attention(q, k, v, mask=m, is_causal=is_causal)
        ref_out, ref_w = scaled_dot_product_attention(q, k, v, mask=m, is_causal=is_causal)
        assert torch.allclose(out, ref_out, atol=1e-6) and torch.allclose(w, ref_w, atol=1e-6)
    torch_out = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    assert torch.allclose(attention(q, k, v, is_causal=is_causal)[0], torch_out, atol=1e-5)


@pytest.mark.parametrize("bug", BUGS)
def test_each_bug_changes_causal_multi_head_attention(bug):
    q, k, v = qkv(2, 3, 6, 4)
    out, _ = planted_attention(bug)(q, k, v, is_causal=True)
    assert not torch.allclose(out, scaled_dot_product_attention(q, k, v, is_causal=True)[0], atol=1e-3)


def test_the_bugs_hide_where_the_hints_say():
    q, k, v = qkv(2, 1, 6, 4)  # one head: the split bug cannot show
    ref = scaled_dot_product_attention(q, k, v, is_causal=True)[0]
    assert torch.allclose(planted_attention("missing_transpose")(q, k, v, is_causal=True)[0], ref, atol=1e-6)
    q, k, v = qkv(2, 3, 6, 4)
    out, w = planted_attention("missing_transpose")(q, k, v, is_causal=True)
    assert torch.equal(w, w.tril())  # its weights look causal: only the outputs show the leak
    scaled = planted_attention("missing_scale")(q, k, v, is_causal=True, scale=0.5)[0]
    assert torch.allclose(scaled, scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.5)[0], atol=1e-6)
    q, k, v = qkv(2, 3, 6, 1)  # d = 1: sqrt(d) = 1
    ref = scaled_dot_product_attention(q, k, v, is_causal=True)[0]
    assert torch.allclose(planted_attention("missing_scale")(q, k, v, is_causal=True)[0], ref, atol=1e-6)


@pytest.mark.parametrize("bug", ["off_by_one", "missing_transpose"])
def test_leaking_bugs_really_leak_the_future(bug):
    q, k, v = qkv(1, 2, 6, 4)
    out = planted_attention(bug)(q, k, v, is_causal=True)[0]
    k2, v2 = k.clone(), v.clone()
    k2[..., 3:, :] += 1.0
    v2[..., 3:, :] += 1.0
    out2 = planted_attention(bug)(q, k2, v2, is_causal=True)[0]
    assert not torch.allclose(out[..., :3, :], out2[..., :3, :])


def test_every_variant_has_the_same_face():
    fns = [planted_attention(v) for v in VARIANTS]
    assert {f.__name__ for f in fns} == {"attention"} and len({f.__doc__ for f in fns}) == 1
    with pytest.raises(ValueError, match="unknown variant"):
        planted_attention("nope")


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_test_accepts_exactly_the_correct_variants(variant):
    assert reference_leakage_test(planted_attention(variant)) is (variant in CORRECT)


def test_points_add_up_and_the_correct_cases_are_required():
    task = EXERCISE.task("leakage_test")
    cases = task.cases(torch.Generator().manual_seed(0))
    assert task.partial_credit and sum(c.points for c in cases) == task.points == 4
    assert [c.required for c in cases] == [True, True, False, False, False]


# --------------------------------------------------------------------------- learners' tests


def _inputs(heads):
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 5, 4) if heads else (2, 5, 4)
    return tuple(torch.randn(*shape, generator=g) for _ in range(3))


def weights_only(attention):
    q, k, v = _inputs(heads=True)
    _, w = attention(q, k, v, is_causal=True)
    return torch.equal(w, w.tril()) and torch.allclose(w.sum(-1), torch.ones(()))


def perturb(attention, heads=True):
    q, k, v = _inputs(heads)
    out = attention(q, k, v, is_causal=True)[0]
    for t in range(q.shape[-2] - 1):
        k2, v2, q2 = k.clone(), v.clone(), q.clone()
        for x in (q2, k2, v2):
            x[..., t + 1:, :] += 1.0
        if not torch.allclose(attention(q2, k2, v2, is_causal=True)[0][..., : t + 1, :], out[..., : t + 1, :]):
            return False
    return True


def exact_formula(attention):
    q, k, v = _inputs(heads=True)
    w = attention(q, k, v, is_causal=True)[1]
    s = (q @ k.transpose(-2, -1) / math.sqrt(4)).masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), -math.inf)
    return torch.equal(w, torch.softmax(s, -1))


@pytest.mark.parametrize("test, points, missed", [
    (reference_leakage_test, 4.0, None),
    (perturb, 3.0, "bug: no 1/sqrt(d) scale"),
    (lambda a: perturb(a, heads=False), 2.0, "bug: heads split without the transpose"),
    (weights_only, 2.0, "bug: heads split without the transpose"),
    (lambda a: False, 0.0, "a correct attention"),
    (lambda a: True, 0.0, "bug: the causal mask lets position t see t + 1"),
    (exact_formula, 0.0, "a correct attention"),  # == instead of allclose: even the first one fails
])
def test_a_learner_test_earns_a_point_per_bug_caught(check, test, points, missed):
    result = check("leakage_test", test, quiet=True)
    assert result.points == points, result.message
    if missed:
        assert f"case '{missed}'" in result.message and "Hint:" in result.message
        assert ("of 4 points]" in result.message) == (points > 0)
    else:
        assert result.passed


def test_a_test_that_crashes_on_a_bug_still_scores_the_others(check):
    def leakage_test(attention):
        out, w = attention(*_inputs(heads=True), is_causal=True)
        if not torch.equal(w, w.tril()):
            raise RuntimeError("my test broke")
        return perturb(attention)

    result = check("leakage_test", leakage_test, quiet=True)
    assert result.points == 2.0 and "raised RuntimeError: my test broke" in result.message


def test_calling_the_package_attention_is_refused(check):
    def leakage_test(attention):
        q, k, v = _inputs(heads=True)
        return torch.allclose(attention(q, k, v, is_causal=True)[0],
                              scaled_dot_product_attention(q, k, v, is_causal=True)[0], atol=1e-5)

    result = check("leakage_test", leakage_test, quiet=True)
    assert result.points == 0 and "calls `attn_course.attention.scaled_dot_product_attention`" in result.message


@pytest.mark.slow
def test_a_partial_submission_is_graded_in_a_kernel(root, tmp_path):
    """The planted attention functions are built inside the submission's kernel from the markers."""
    from attn_course.grading.runner import grade_notebook

    nb = nbformat.read(str(root / "exercises" / "ex06_find_the_bug.ipynb"), as_version=4)
    stub = 'raise NotImplementedError("leakage_test: write your code here")'
    body = ("g = torch.Generator().manual_seed(0)\n"
            "    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))\n"
            "    out, w = attention(q, k, v, is_causal=True)\n"
            "    return bool(torch.equal(w, w.tril()))")
    cell = next(c for c in nb.cells if stub in c.source)
    cell.source = cell.source.replace(stub, body)
    path = tmp_path / "ex06_find_the_bug.ipynb"
    nbformat.write(nb, str(path))
    [row] = grade_notebook(path, timeout=60, call_timeout=30)
    assert row.points == 2.0 and row.max_points == 4, row
    assert "case 'bug: heads split without the transpose'" in row.message and "[2 of 4 points]" in row.message
