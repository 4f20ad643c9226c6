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

    ``hint`` is shown when this case (and only this one) fails, e.g. for an edge case: it says
    what is special about the case (a diagnosis), never the code that fixes it.

    Rules of the task's idea (``rules``), each 0 = none: ``max_numel``, the largest tensor any
    torch op may create during the call (elements); ``max_flops``, the matrix-multiply FLOPs
    the call may do; ``cpu_fraction``, the CPU time the call may use (measured by the grader on
    the kernel's cgroup, this case alone) as a fraction of ``Task.dense`` timed on the same
    inputs in the grader (plus ``rules.CPU_SLACK_SECONDS``).

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
    max_numel: int = 0
    max_flops: int = 0
    cpu_fraction: float = 0.0


@dataclass(frozen=True)
class Task:
    """One graded function.

    name:       the function name the learner defines in the notebook
    reference:  the package's implementation; its output on each case is the expected value
    cases:      ``cases(generator) -> list[Case]``; the grader draws them with its own seed
    points:     what the task is worth; scoring is all-or-nothing over the cases, unless
                ``partial_credit``: then each passed case earns its ``Case.points``
    hint:       the code-level hint, shown only when the learner asks (``check.hint(name)``),
                never in a failure message or the grader's report; not the solution
    rtol/atol:  tolerance for floating-point comparison
    arg_names:  names of the positional arguments, used in messages ("scores: float32 (4, 7)")
    forbidden:  dotted names the learner's function may not call (the library version of what
                the task asks to write, e.g. "torch.softmax"), detected while it runs
    rule:       the idea's rule in a few words ("no whole (L, S) score matrix"), named in the
                message of a call that breaks a case's ``max_numel``/``max_flops``/``cpu_fraction``
                or the task's memory limit
    memory_limit_bytes: the whole kernel's memory while this task's cases run (every process,
                tmpfs and shared memory), enforced by the grader through the kernel's cgroup;
                size a case so that what the idea avoids cannot fit while the idea does
    dense:      for ``Case.cpu_fraction``: the computation the idea avoids (e.g. every tile),
                called on the case's inputs and timed in the grader
    min_call_seconds: the least time the grader gives the task's calls, whatever its
                ``--call-timeout`` (cases large on purpose, e.g. a score matrix that must not fit;
                a kernel run by the Triton interpreter)
    driver:     a dotted name in ``grading.drivers``: when set, the call is
                ``driver(learner_object, *args)`` instead of ``learner_object(*args)`` (a class the
                learner writes, exercised by generating with it), and the expected value is
                ``driver(reference, *args)``
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
    rule: str = ""
    memory_limit_bytes: int = 0
    dense: Callable[..., Any] | None = None
    driver: str = ""
    min_call_seconds: float = 0.0


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
