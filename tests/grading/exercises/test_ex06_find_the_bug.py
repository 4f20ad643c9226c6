"""Exercise 6 (find the bug): the planted attention functions are what they claim, the reference
test tells them apart, and a learner's test earns a point per bug it catches, but only if it
accepts the correct attention functions.

Whole notebooks (the solution source: full marks; the learner notebook: 0) are graded in
tests/grading/test_grading.py; the last test here grades a partial submission in a real kernel.
"""

import itertools
import math

import nbformat
import pytest
import torch
import torch.nn.functional as F

from attn_course.attention import scaled_dot_product_attention
from attn_course.exercises.ex06_find_the_bug import EXERCISE, reference_leakage_test
from attn_course.grading.compare import case_generator, evaluate
from attn_course.grading.fixtures import MARKER, resolve
from attn_course.grading.harness import call_local
from attn_course.grading.planted_bugs import CORRECT, KNOBS, VARIANTS, is_correct, planted_attention
from attn_course.masking import padding_mask

BUGS = [v for v in VARIANTS if v not in CORRECT]
TASK = EXERCISE.task("leakage_test")
ALL_KNOBS = [dict(zip(KNOBS, values)) for values in itertools.product(*KNOBS.values())]


def planted(variant):
    return planted_attention(**VARIANTS[variant])


def qkv(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g) for _ in range(3))


@pytest.mark.parametrize("variant", CORRECT)
@pytest.mark.parametrize("is_causal", [False, True])
def test_correct_variants_equal_the_package_and_torch(variant, is_causal):
    attention = planted(variant)
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
    out, _ = planted(bug)(q, k, v, is_causal=True)
    assert not torch.allclose(out, scaled_dot_product_attention(q, k, v, is_causal=True)[0], atol=1e-3)


def test_the_bugs_hide_where_the_hints_say():
    q, k, v = qkv(2, 1, 6, 4)  # one head: the split bug cannot show
    ref = scaled_dot_product_attention(q, k, v, is_causal=True)[0]
    assert torch.allclose(planted("missing_transpose")(q, k, v, is_causal=True)[0], ref, atol=1e-6)
    q, k, v = qkv(2, 3, 6, 4)
    out, w = planted("missing_transpose")(q, k, v, is_causal=True)
    assert torch.equal(w, w.tril())  # its weights look causal: only the outputs show the leak
    for bug in ("missing_scale", "scale_over_d"):
        scaled = planted(bug)(q, k, v, is_causal=True, scale=0.5)[0]
        assert torch.allclose(scaled, scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.5)[0], atol=1e-6)
    q, k, v = qkv(2, 3, 6, 1)  # d = 1: sqrt(d) = d = 1
    ref = scaled_dot_product_attention(q, k, v, is_causal=True)[0]
    for bug in ("missing_scale", "scale_over_d"):
        assert torch.allclose(planted(bug)(q, k, v, is_causal=True)[0], ref, atol=1e-6)


@pytest.mark.parametrize("bug", ["off_by_one", "off_by_two", "missing_transpose"])
def test_leaking_bugs_really_leak_the_future(bug):
    q, k, v = qkv(1, 2, 6, 4)
    out = planted(bug)(q, k, v, is_causal=True)[0]
    k2, v2 = k.clone(), v.clone()
    k2[..., 3:, :] += 1.0
    v2[..., 3:, :] += 1.0
    out2 = planted(bug)(q, k2, v2, is_causal=True)[0]
    assert not torch.allclose(out[..., :3, :], out2[..., :3, :])


def _face(f):
    """What a test could read off a function without calling it."""
    cells = tuple((type(c.cell_contents), len(c.cell_contents)) for c in f.__closure__)
    return (f.__name__, f.__qualname__, f.__doc__, id(f.__code__), f.__defaults__, f.__kwdefaults__, cells,
            tuple(sorted(f.__dict__)), f.__module__)


def test_every_variant_has_the_same_face():
    fns = [planted_attention(**k) for k in ALL_KNOBS]
    assert len({_face(f) for f in fns}) == 1
    assert {f.__name__ for f in fns} == {"attention"} and len({f.__code__ for f in fns}) == 1
    for bad in ({"diagonal": 3}, {"split": "1"}, {"loop": True}):
        with pytest.raises(ValueError, match="planted_attention"):
            planted_attention(**bad)


@pytest.mark.parametrize("knobs", ALL_KNOBS, ids=lambda k: "-".join(map(str, k.values())))
def test_reference_test_accepts_exactly_the_correct_variants(knobs):
    assert reference_leakage_test(planted_attention(**knobs)) is is_correct(**knobs)


def _cases(seed):
    return TASK.cases(case_generator(seed))  # the draw evaluate makes


@pytest.mark.parametrize("seed", range(20))
def test_each_run_draws_two_correct_and_three_bugs_with_their_points(seed):
    cases = _cases(seed)
    assert TASK.partial_credit and sum(c.points for c in cases) == TASK.points == 4
    knobs = [{k: v for k, v in c.args[0].items() if k != MARKER} for c in cases]
    assert all(list(k) == list(KNOBS) for k in knobs)  # the same four numbers in every marker, no names
    assert [c.required for c in cases] == [is_correct(**k) for k in knobs]
    assert sorted(c.points for c in cases if not c.required) == [1, 1, 1]
    assert len({k["loop"] for k in knobs if is_correct(**k)}) == 2  # two different correct implementations
    expected = [reference_leakage_test(resolve(c.args)[0]) for c in cases]
    assert expected == [c.required for c in cases]


def test_seeds_draw_different_orders_and_parameters():
    orders = {tuple(c.name for c in _cases(seed)) for seed in range(10)}
    assert len(orders) >= 5
    assert len({tuple(c.name for c in _cases(seed)) for seed in (3, 3)}) == 1  # a seed is reproducible


def _grade(test, seed):
    return evaluate(TASK, lambda cases: [call_local(test, c, TASK.forbidden) for c in cases], seed=seed)


def test_the_reference_scores_full_marks_for_every_seed():
    for seed in range(20):
        result = _grade(reference_leakage_test, seed)
        assert result.points == 4 and result.passed, (seed, result.message)


def test_counting_calls_earns_nothing():
    scores = []
    def counting_test():
        calls = []

        def leakage_test(attention):
            calls.append(1)
            return len(calls) <= 2  # "the first two are the correct ones"

        return leakage_test

    for seed in range(20):
        first_two = [c.required for c in _cases(seed)[:2]] == [True, True]
        scores.append(_grade(counting_test(), seed).points)
        assert scores[-1] == (4.0 if first_two else 0.0)  # lucky only when the draw put them first
    assert scores.count(0.0) >= 15


def test_reading_the_function_instead_of_testing_it_sees_nothing():
    faces = []

    def leakage_test(attention):
        faces.append(_face(attention))
        return True

    for seed in range(5):
        _grade(leakage_test, seed)
    assert len(faces) == 25 and len(set(faces)) == 1


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
    (perturb, 3.0, "bug: the default scale is"),
    (lambda a: perturb(a, heads=False), 2.0, "bug: heads split without the transpose"),
    (weights_only, 2.0, "bug: heads split without the transpose"),
    (lambda a: False, 0.0, "a correct attention"),
    (lambda a: True, 0.0, "bug: the causal mask lets position t see t + "),
    (exact_formula, 0.0, "a correct attention"),  # == instead of allclose: even the first one fails
])
def test_a_learner_test_earns_a_point_per_bug_caught(check, test, points, missed):
    result = check("leakage_test", test, quiet=True)
    assert result.points == points, result.message
    if missed:
        assert any(f"case '{missed}" in f for f in result.failures) and "Hint:" in result.message
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
    assert "case 'bug: " in row.message and "[2 of 4 points]" in row.message
