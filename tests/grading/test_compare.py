"""Unit tests of the grading internals: value comparison, the kernel codec, exercise detection."""

from pathlib import Path

import numpy as np
import pytest
import torch

from attn_course.grading.catalog import load_exercises
from attn_course.grading.codec import Opaque, decode, encode
from attn_course.grading.compare import Outcome, compare_values, evaluate
from attn_course.grading.runner import identify_exercise
from attn_course.grading.tasks import Case, Task


def test_matching_values_pass():
    x = torch.randn(3, 4)
    assert compare_values(x, x.clone(), 1e-5, 1e-6) is None
    assert compare_values((x, 2.0), [x.clone(), 2.0 + 1e-9], 1e-5, 1e-6) is None


@pytest.mark.parametrize("got, piece", [
    (torch.zeros(4, 3), "has shape (4, 3); expected (3, 4)"),
    (torch.zeros(3, 4, dtype=torch.float64), "dtype torch.float64; expected torch.float32"),
    (np.zeros((3, 4), dtype=np.float32), "got a numpy array"),
    (Opaque("generator"), "<generator>"),
    (None, "should be a torch.Tensor, got None"),
])
def test_mismatches_are_described(got, piece):
    assert piece in compare_values(torch.zeros(3, 4), got, 1e-5, 1e-6)


def test_nan_and_wrong_values_name_the_index():
    e = torch.zeros(2, 3)
    g = e.clone()
    g[1, 2] = float("nan")
    assert "NaN or inf at 1 of 6 positions (first: NaN at index (1, 2)" in compare_values(e, g, 1e-5, 1e-6)
    g = e.clone()
    g[0, 1] = 0.5
    assert "wrong values at 1 of 6 positions (largest error at index (0, 1): expected 0, got 0.5)" in compare_values(e, g, 1e-5, 1e-6)


def test_expected_nan_is_not_an_error():
    e = torch.tensor([float("nan"), 1.0])
    assert compare_values(e, e.clone(), 1e-5, 1e-6) is None


def test_tuple_results():
    x = torch.ones(2)
    assert "tuple of 2 values, got 3" in compare_values((x, x), (x, x, x), 1e-5, 1e-6)
    assert "the result[1] has shape" in compare_values((x, x), (x, torch.ones(3)), 1e-5, 1e-6)


def test_bool_tensors_compare_exactly():
    m = torch.tensor([[True, False], [True, True]])
    assert compare_values(m, m.clone(), 1e-5, 1e-6) is None
    assert "differs at index (0, 1)" in compare_values(m, torch.ones(2, 2, dtype=torch.bool), 1e-5, 1e-6)


def test_codec_round_trip_through_torch_safe_load(tmp_path):
    value = (torch.arange(3), [1, 2.5, "x", None], {"a": np.ones(2)}, (lambda: 0), True)
    path = tmp_path / "v.pt"
    torch.save(encode(value), path)
    back = decode(torch.load(path, weights_only=True))
    assert isinstance(back, tuple) and torch.equal(back[0], torch.arange(3))
    assert back[1] == [1, 2.5, "x", None] and isinstance(back[2]["a"], np.ndarray)
    assert isinstance(back[3], Opaque) and back[3].type_name == "function" and back[4] is True


def test_evaluate_counts_missing_outcomes_as_failure():
    task = Task("f", lambda x: x + 1, lambda g: [Case("a", (torch.zeros(2),)), Case("b", (torch.ones(2),))])
    result = evaluate(task, lambda cases: [Outcome(True, output=torch.ones(2), args_after=(torch.zeros(2),))])
    assert result.points == 0 and "stopped answering" in result.message


def test_identify_exercise_from_file_name_then_metadata():
    exercises = load_exercises()
    meta = {"metadata": {"attn_course": {"exercise": "ex02_masks_and_scores"}}}
    assert identify_exercise(Path("whatever.ipynb"), meta, exercises)[0].id == "ex02_masks_and_scores"
    assert identify_exercise(Path("alice-ex01_softmax_attention (2).ipynb"), {}, exercises)[0].id == "ex01_softmax_attention"
    assert identify_exercise(Path("bob_ex2.ipynb"), None, exercises)[0].id == "ex02_masks_and_scores"
    assert identify_exercise(Path("homework.ipynb"), {"metadata": {"attn_course": "junk"}}, exercises) == (None, "")
    # A learner cannot choose what they are graded on: the file name wins, and the report says so.
    ex, note = identify_exercise(Path("carol_ex01_softmax_attention.ipynb"), meta, exercises)
    assert ex.id == "ex01_softmax_attention" and "metadata says ex02_masks_and_scores" in note
    assert identify_exercise(Path("x" * 100000 + ".ipynb"), None, exercises) == (None, "")


def test_every_bit_of_the_seed_draws_different_cases():
    """torch's manual_seed feeds only the low 32 bits to mt19937; the grader's 62-bit secret seed
    must count whole, so seeds differing only above bit 31 draw different inputs."""
    from attn_course.grading.compare import case_generator

    seed = 0x2545F4914F6CDD1D & ((1 << 62) - 1)
    same = torch.randn(8, generator=case_generator(seed))
    assert torch.equal(same, torch.randn(8, generator=case_generator(seed)))
    for bit in (0, 31, 32, 40, 61):
        other = torch.randn(8, generator=case_generator(seed ^ (1 << bit)))
        assert not torch.equal(same, other), bit
