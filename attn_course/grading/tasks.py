"""Tasks and exercises: what is graded, against what, on which inputs.

A *task* is one function a learner writes. Its definition lives in the package (never in
the notebook), so a submission can change neither the reference, nor the inputs, nor the
points it is worth. This module defines the types only; ``catalog`` finds the exercises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Case:
    """One input to try: positional args and keyword args, plus a readable name.

    ``hint`` is shown when this case (and only this one) fails, e.g. for an edge case.

    ``points`` and ``required`` matter only for a task with ``partial_credit`` (see
    ``partial_points``): passing the case earns ``points``; failing a ``required`` case scores
    the whole task 0. An argument may be a fixture marker (``fixtures.fixture``) where the
    function takes something that cannot cross into a grading kernel as a value, e.g. a function.
    """

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    hint: str = ""
    points: float = 0.0
    required: bool = False


@dataclass(frozen=True)
class Task:
    """One graded function.

    name:       the function name the learner defines in the notebook
    reference:  the package's implementation; its output on each case is the expected value
    cases:      ``cases(generator) -> list[Case]``; the grader draws them with its own seed
    points:     what the task is worth; scoring is all-or-nothing over the cases, unless
                ``partial_credit``: then each passed case earns its ``Case.points``
    hint:       a general hint, shown with any failure
    rtol/atol:  tolerance for floating-point comparison
    arg_names:  names of the positional arguments, used in messages ("scores: float32 (4, 7)")
    forbidden:  dotted names the learner's function may not call (the library version of what
                the task asks to write, e.g. "torch.softmax"), detected while it runs
    """

    name: str
    reference: Callable[..., Any]
    cases: Callable[[torch.Generator], list[Case]]
    points: int = 1
    hint: str = ""
    rtol: float = 1e-4
    atol: float = 1e-5
    arg_names: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()
    partial_credit: bool = False


def partial_points(cases: list[Case], passed: list[bool]) -> float:
    """Points of a ``partial_credit`` task: the sum of ``Case.points`` over the passed cases.

    A failed ``required`` case scores 0; so does passing only required cases (they are gates:
    a leakage test that calls every attention correct passes the gate and must still catch a
    bug to earn anything, and one that calls every attention buggy never passes it).
    """
    if len(passed) < len(cases):
        passed = list(passed) + [False] * (len(cases) - len(passed))
    if any(c.required and not p for c, p in zip(cases, passed)):
        return 0.0
    if not any(p and not c.required for c, p in zip(cases, passed)):
        return 0.0
    return float(sum(c.points for c, p in zip(cases, passed) if p))


@dataclass(frozen=True)
class Exercise:
    id: str
    title: str
    tasks: tuple[Task, ...]

    @property
    def max_points(self) -> int:
        return sum(t.points for t in self.tasks)

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    """A reproducible normal tensor drawn from ``gen`` (cases use this, never the global RNG)."""
    return torch.randn(*shape, generator=gen, dtype=torch.float64).mul(scale).to(dtype)
