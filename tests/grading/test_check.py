"""The in-notebook checker: messages and hints, never our traceback, never the reference code."""

import inspect
import math

import pytest
import torch

from attn_course.check import Checker
from attn_course.grading.catalog import load_exercises


@pytest.fixture
def check():
    return Checker("ex01_softmax_attention")


def good_softmax(scores):
    e = (scores - scores.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def run(check, name, fn, capsys):
    result = check(name, fn, quiet=True)
    check(name, fn)
    printed = capsys.readouterr().out
    return result, printed


def test_correct_function_passes(check, capsys):
    result, printed = run(check, "softmax", good_softmax, capsys)
    assert result.passed and result.points == 2
    assert printed.startswith("✅ softmax")


def test_stub_is_reported_as_not_implemented(check, capsys):
    def softmax(scores):
        raise NotImplementedError("softmax: write your code here")

    result, printed = run(check, "softmax", softmax, capsys)
    assert result.status == "not_implemented" and result.points == 0
    assert "not implemented yet" in printed and "Traceback" not in printed


def test_unstable_softmax_names_the_case_and_gives_the_hint(check, capsys):
    def softmax(scores):
        e = scores.exp()
        return e / e.sum(-1, keepdim=True)

    result, printed = run(check, "softmax", softmax, capsys)
    assert result.status == "failed"
    assert "large logits" in printed and "NaN" in printed and "Hint:" in printed and "overflows" in printed


def test_task_hint_is_printed_on_request_only(check, capsys):
    def softmax(scores):
        e = scores.exp()
        return e / e.sum(-1, keepdim=True)

    task_hint = load_exercises()["ex01_softmax_attention"].task("softmax").hint
    result, printed = run(check, "softmax", softmax, capsys)
    assert task_hint and task_hint not in result.message and task_hint not in printed
    assert "check.hint('softmax')" in printed  # where to ask for it
    assert check.hint("softmax") == task_hint
    assert capsys.readouterr().out == f"💡 softmax: {task_hint}\n"


def test_a_passing_check_does_not_point_at_the_hint(check, capsys):
    _, printed = run(check, "softmax", good_softmax, capsys)
    assert "check.hint" not in printed


def test_hint_for_an_unknown_task_names_the_tasks(check, capsys):
    assert check.hint("sofmax") is None
    out = capsys.readouterr().out
    assert "no task 'sofmax'" in out and "attend" in out


@pytest.mark.parametrize("exercise_id", ["ex01_softmax_attention", "ex02_masks_and_scores", "ex03_multihead_positions",
                                         "ex04_decoder_step", "ex05_transformer_block", "ex06_find_the_bug"])
def test_no_failure_message_carries_a_task_hint(exercise_id):
    """A function that returns garbage fails every task; none of the messages quotes the task's hint."""
    check = Checker(exercise_id)
    for task in load_exercises()[exercise_id].tasks:
        result = check(task.name, lambda *args, **kwargs: torch.zeros(1), quiet=True)
        assert result.points == 0 and task.hint not in result.message, task.name


def test_exception_in_learner_code_is_summarised_with_its_line(check, capsys):
    def dot_scores(query, keys):
        return query @ keys  # forgot the transpose

    result, printed = run(check, "dot_scores", dot_scores, capsys)
    assert result.status == "error"
    assert "RuntimeError" in printed and "return query @ keys" in printed
    assert "Traceback" not in printed and "attn_course/" not in printed


def test_wrong_shape_names_expected_and_received(check, capsys):
    def dot_scores(query, keys):
        return keys @ query.transpose(-2, -1)

    result, printed = run(check, "dot_scores", dot_scores, capsys)
    assert "has shape (5, 1); expected (1, 5)" in printed
    assert "query: float32 (1, 4)" in printed


def test_in_place_mutation_is_caught(check, capsys):
    def softmax(scores):
        scores.sub_(scores.amax(-1, keepdim=True))
        e = scores.exp()
        return e / e.sum(-1, keepdim=True)

    result, printed = run(check, "softmax", softmax, capsys)
    assert result.status == "failed" and "in place" in printed


def test_library_shortcut_is_refused(check, capsys):
    result, printed = run(check, "softmax", lambda s: torch.softmax(s, -1), capsys)
    assert result.status == "failed" and "torch.softmax" in printed
    result, printed = run(check, "softmax", lambda s: s.softmax(-1), capsys)
    assert result.status == "failed" and "calls `torch." in printed


def test_sys_exit_in_learner_code_does_not_end_the_check(check, capsys):
    def softmax(scores):
        raise SystemExit(1)

    result, printed = run(check, "softmax", softmax, capsys)
    assert result.status == "error" and "SystemExit" in printed


def test_unknown_task_and_missing_function(check, capsys):
    assert check("sofmax", good_softmax) is None
    assert "no task 'sofmax'" in capsys.readouterr().out
    result = check("softmax", None, quiet=True)
    assert result.status == "missing" and result.points == 0


def test_unknown_exercise_raises_a_clear_error():
    with pytest.raises(ValueError, match="unknown exercise 'ex99'"):
        Checker("ex99")


def test_checker_is_silent_under_the_grader(check, capsys, monkeypatch):
    monkeypatch.setenv("ATTN_COURSE_GRADING", "1")
    assert check("softmax", good_softmax) is None
    assert capsys.readouterr().out == ""


def test_messages_never_show_reference_source(check, capsys):
    """Every failure message, for every task, is free of the reference's code lines."""
    ex = load_exercises()["ex01_softmax_attention"]
    wrong = {
        "softmax": lambda s: s * 0,
        "dot_scores": lambda q, k: (q @ k.transpose(-2, -1)) * 2,
        "scaled_dot_scores": lambda q, k: q @ k.transpose(-2, -1),
        "context_vector": lambda w, v: (w @ v) + 1,
        "attend": lambda q, k, v: (q, k),
    }
    for task in ex.tasks:
        result = check(task.name, wrong[task.name], quiet=True)
        assert not result.passed
        try:
            source = inspect.getsource(task.reference)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            line = line.strip()
            if len(line) > 25 and not line.startswith(("#", '"""', "def ", "Args", "Returns")):
                assert line not in result.message, (task.name, line)


def test_tolerance_accepts_float_noise(check):
    def context_vector(weights, values):
        return (weights.double() @ values.double()).float()  # different rounding, same answer

    assert check("context_vector", context_vector, quiet=True).passed
    assert math.isclose(check("context_vector", context_vector, quiet=True).points, 1.0)


def test_masked_softmax_with_nan_on_dead_rows_gets_the_hint(capsys):
    check = Checker("ex02_masks_and_scores")

    def masked_softmax(scores, mask):
        s = scores.masked_fill(~mask, float("-inf"))
        e = (s - s.amax(-1, keepdim=True)).exp()
        return e / e.sum(-1, keepdim=True)

    result = check("masked_softmax", masked_softmax, quiet=True)
    assert result.status == "failed"
    assert "a fully masked row" in result.message and "NaN" in result.message and "0/0" in result.message
