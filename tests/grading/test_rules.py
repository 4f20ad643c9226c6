"""The rules of a task's idea: measured in the call (largest tensor, FLOPs) and read from the
kernel's cgroup by the grader (memory, CPU time). End to end through the sandboxed grader they are
exercised by the wrong submissions of the exercises that use them (tests/submissions/wrong/)."""

import os

import pytest
import torch

from attn_course.grading import places
from attn_course.grading.compare import evaluate
from attn_course.grading.harness import call_local
from attn_course.grading.rules import broken_rule, watch
from attn_course.grading.runner import cpu_seconds
from attn_course.grading.tasks import Case, Task


def _whole(q, k):
    return (q @ k.transpose(-2, -1)).sum(-1)  # (L, S) scores, then a row sum


def _tiled(q, k, block=4):
    return torch.cat([(q[i:i + block] @ k.transpose(-2, -1)).sum(-1) for i in range(0, q.shape[0], block)])


def _task(**case_rules):
    def cases(g):
        q, k = torch.randn(16, 3, generator=g), torch.randn(16, 3, generator=g)
        return [Case("sixteen rows", (q, k), **case_rules), Case("again", (q.flip(0), k), **case_rules),
                Case("more", (q * 2, k), **case_rules), Case("last", (q, k * 2), **case_rules)]

    return Task("row_sums", _whole, cases, rule="no whole (L, S) score matrix", arg_names=("q", "k"))


def test_largest_tensor_rule_names_the_rule_and_the_tensor():
    task = _task(max_numel=4 * 16)
    tiled = evaluate(task, lambda cs: [call_local(_tiled, c, rule=task.rule) for c in cs])
    whole = evaluate(task, lambda cs: [call_local(_whole, c, rule=task.rule) for c in cs])
    assert tiled.passed
    assert whole.points == 0 and "16 x 16" in whole.message and "no whole (L, S) score matrix" in whole.message
    assert whole.message.startswith("right values, but it created a tensor of 256 elements")


def test_flops_rule():
    task = _task(max_flops=2 * 16 * 16 * 3)  # exactly the one product
    assert evaluate(task, lambda cs: [call_local(_tiled, c, rule=task.rule) for c in cs]).passed

    def twice(q, k):
        _whole(q, k)
        return _whole(q, k)

    result = evaluate(task, lambda cs: [call_local(twice, c, rule=task.rule) for c in cs])
    assert result.points == 0 and "FLOPs" in result.message

    def twice_in_place(q, k):  # the same extra work, accumulated into a buffer: counted all the same
        acc = torch.zeros(q.shape[0], k.shape[0])
        acc.addmm_(q, k.transpose(-2, -1))
        return acc.addmm_(q, k.transpose(-2, -1)).sum(-1) / 2

    result = evaluate(task, lambda cs: [call_local(twice_in_place, c, rule=task.rule) for c in cs])
    assert result.points == 0 and "FLOPs" in result.message


def test_no_rule_costs_nothing_and_measures_nothing():
    with watch(0, 0) as (sizes, flops):
        torch.ones(1000, 1000)
    assert sizes is None and flops is None and broken_rule(sizes, flops, 0, 0, "") == ""


def test_cpu_seconds_measures_work():
    x = torch.randn(256, 256)
    little = cpu_seconds(lambda: x @ x)
    more = cpu_seconds(lambda: [x @ x for _ in range(40)])
    assert more > little


@pytest.mark.skipif(os.geteuid() != 0 or not places.detect_cgroups(), reason="needs root and cgroups")
def test_cgroup_memory_limit_moves_and_usage_is_read(tmp_path):
    from attn_course.grading.places import Limits

    made = places.new_cgroups(places.detect_cgroups(), f"attn-course-test-rules-{os.getpid()}", Limits())
    try:
        assert places.memory_limit(made) == Limits().total_memory_bytes
        assert places.set_memory_limit(made, 1 << 30) and places.memory_limit(made) == 1 << 30
        assert places.set_memory_limit(made, 4 << 30) and places.memory_limit(made) == 4 << 30
        assert places.memory_usage(made) is not None and places.oom_kills(made) == 0
        assert places.cpu_seconds_used(made) is not None
    finally:
        places.kill_cgroups(made)


# --------------------------------------------------------------------------- end to end, sandboxed


def _row_exp_sums(q, k):
    """Row sums of exp(q k^T), one block of rows at a time (the reference never holds (L, S))."""
    return torch.cat([(q[i:i + 1024] @ k.T).exp().sum(-1) for i in range(0, q.shape[0], 1024)])


def _every_block(q, k):
    return _row_exp_sums(q, k)


def _rules_exercise():
    from attn_course.grading.tasks import Exercise

    def big(g):
        n = 16384  # one (n, n) float32 matrix is 1 GiB: more than the whole kernel may hold
        q, k = torch.randn(n, 4, generator=g) * 0.1, torch.randn(n, 4, generator=g) * 0.1
        return [Case("small", (q[:64], k[:64])), Case("n = 16384", (q, k))] + [Case(f"x{i}", (q[:8], k[:8])) for i in range(2)]

    def sparse(g):
        q, k = torch.randn(2048, 64, generator=g) * 0.05, torch.randn(2048, 64, generator=g) * 0.05
        return [Case("small", (q[:64], k[:64])), Case("big", (q, k), cpu_fraction=0.5)] + [
            Case(f"x{i}", (q[:8], k[:8])) for i in range(2)]

    def first_rows(q, k):
        return _row_exp_sums(q[:16], k)

    memory = Task("row_exp_sums", _row_exp_sums, big, rule="no whole (L, S) score matrix",
                  memory_limit_bytes=1 << 30, arg_names=("q", "k"))
    cpu = Task("first_rows", first_rows, sparse, rule="only the rows asked for",
               dense=lambda q, k: [_every_block(q, k) for _ in range(3)], arg_names=("q", "k"))
    return {"ex99_rules": Exercise("ex99_rules", "rules", (memory, cpu))}


_HONEST = '''import torch

def row_exp_sums(q, k):
    return torch.cat([(q[i:i + 512] @ k.T).exp().sum(-1) for i in range(0, q.shape[0], 512)])

def first_rows(q, k):
    return (q[:16] @ k.T).exp().sum(-1)
'''
_WASTEFUL = '''import torch

def row_exp_sums(q, k):
    return (q @ k.T).exp_().sum(-1)  # the whole (L, S) matrix, exponentiated in place

_HELD = torch.zeros(1)

def first_rows(q, k):
    for _ in range(12):
        every = (q @ k.T).exp().sum(-1)  # every row, then keep the first 16
    return every[:16]
'''


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not places.detect_cgroups(), reason="needs root and cgroups")
def test_memory_and_cpu_rules_hold_in_the_sandbox(tmp_path):
    import nbformat

    from attn_course.grading.runner import grade_notebook, grading_run
    from attn_course.grading.sandbox import detect

    box = detect("auto")
    if box is None:
        pytest.skip("no sandbox here")
    exercises = _rules_exercise()
    rows = {}
    with grading_run(box) as run:
        for name, code in (("honest", _HONEST), ("wasteful", _WASTEFUL)):
            path = tmp_path / f"ex99_rules_{name}.ipynb"
            nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)]), path)
            rows[name] = {r.task: r for r in grade_notebook(path, exercises, timeout=60, call_timeout=60, run=run)}
    assert all(r.points == r.max_points for r in rows["honest"].values()), rows["honest"]
    memory, cpu = rows["wasteful"]["row_exp_sums"], rows["wasteful"]["first_rows"]
    assert memory.points == 0 and "1024 MiB" in memory.message and "no whole (L, S) score matrix" in memory.message, memory
    assert cpu.points == 0 and "s of CPU" in cpu.message and "only the rows asked for" in cpu.message, cpu


def test_a_forbidden_decorated_function_is_watched_itself_not_its_decorator():
    from attn_course.grading.harness import resolve_forbidden

    @torch.no_grad()
    def other(x):
        return x + 1

    codes, _ = resolve_forbidden(("attn_course.apps.vision.hungarian_match",))
    assert list(codes.values()) == ["attn_course.apps.vision.hungarian_match"]
    assert other.__code__ not in codes  # another no_grad function is not "hungarian_match"


def test_a_task_with_large_cases_gets_its_own_call_time_and_the_wall_clock_counts_it():
    from attn_course.exercises.ex10_flash_attention import EXERCISE
    from attn_course.grading.runner import task_call_timeout, wall_clock_for

    tiled = EXERCISE.task("tiled_attention")
    assert task_call_timeout(tiled, 8) == tiled.min_call_seconds >= 30 and task_call_timeout(tiled, 60) == 60
    others = [t for t in EXERCISE.tasks if t is not tiled]
    assert all(task_call_timeout(t, 8) == 8 for t in others)
    assert wall_clock_for(EXERCISE, 20, 8) >= 20 + tiled.min_call_seconds + 8 * len(others)
