"""Instant feedback inside an exercise notebook.

    from attn_course.check import Checker
    check = Checker("ex01_softmax_attention")
    check("softmax", softmax)

prints one line: a pass, or what went wrong on which input (and what is special about that
input). It compares your function with the course's reference on several random inputs, edge
cases included, and never shows the reference code. Your function's exceptions are caught and
summarised. Stuck? ``check.hint("softmax")`` prints the task's hint: a step towards the code,
asked for, never shown unasked.

Under the grader (``ATTN_COURSE_GRADING=1``) the checker does nothing and needs nothing: the
grading sandbox holds no references, so it does not even load the exercise definitions.
"""

from __future__ import annotations

import os
from typing import Any

from .grading.catalog import load_exercises
from .grading.compare import TaskResult, evaluate
from .grading.harness import call_local
from .grading.tasks import Task

CHECK_SEED = 0
_ICONS = {"passed": "✅", "not_implemented": "⏳", "missing": "❓"}


def _grading() -> bool:
    return os.environ.get("ATTN_COURSE_GRADING") == "1"


class Checker:
    """Checks the tasks of one exercise. ``check(task_name, function)``."""

    def __init__(self, exercise: str):
        if _grading():
            self.exercise = None  # the grader calls the functions itself, with references out of reach
            return
        exercises = load_exercises()
        if exercise not in exercises:
            raise ValueError(f"unknown exercise {exercise!r}; known: {', '.join(sorted(exercises))}")
        self.exercise = exercises[exercise]

    def _task(self, task_name: str) -> Task | None:
        """The task, or None (after printing the exercise's task names) when there is none of that name."""
        try:
            return self.exercise.task(task_name)
        except KeyError:
            names = ", ".join(t.name for t in self.exercise.tasks)
            print(f"❓ There is no task {task_name!r} in {self.exercise.id}; the tasks are: {names}")
            return None

    def __call__(self, task_name: str, fn: Any = None, *, quiet: bool = False) -> TaskResult | None:
        if _grading() or self.exercise is None:
            # Under the grader the checks would only cost time: it calls the functions itself.
            return None
        task = self._task(task_name)
        if task is None:
            return None
        if fn is None or not callable(fn):
            result = TaskResult(task.name, 0.0, task.points, "missing",
                                f"pass your function: check({task.name!r}, {task.name})")
        else:
            # A different seed from the grader's: passing the checks is not the same as knowing the graded inputs.
            result = evaluate(task, lambda cases: [call_local(fn, c, task.forbidden, task.rule, task.driver)
                                                   for c in cases], seed=CHECK_SEED)
        if not quiet:
            more = (f" (stuck? check.hint({task.name!r}))"
                    if task.hint and result.status not in ("passed", "not_implemented", "missing") else "")
            print(f"{_ICONS.get(result.status, '❌')} {task.name}: {result.message}{more}")
        return result if quiet else None

    def hint(self, task_name: str) -> str | None:
        """Print the task's hint (what to compute, step by step; not the solution) and return it."""
        if _grading() or self.exercise is None:
            return None
        task = self._task(task_name)
        if task is None:
            return None
        text = task.hint or "this task has no hint beyond its description"
        print(f"💡 {task.name}: {text}")
        return text
