"""The exercise catalogue: every module of ``attn_course.exercises``, found by listing the package.

Each exercise module defines ``EXERCISE`` (a ``grading.tasks.Exercise``) and imports ``tasks``
for the types it needs. The list of exercises lives here, not in ``tasks``: nothing an exercise
imports may import the exercises back (``tests/library/test_layering.py`` looks for dynamic imports of
them too). A new exercise needs no registration: put its module in ``attn_course/exercises/``.
"""

from __future__ import annotations

import importlib
import pkgutil

from .tasks import Exercise

EXERCISE_PACKAGE = "attn_course.exercises"

__all__ = ["EXERCISE_PACKAGE", "exercise_modules", "load_exercises"]


def exercise_modules() -> tuple[str, ...]:
    """The names of the exercise modules (``ex01_softmax_attention``, ...), sorted."""
    package = importlib.import_module(EXERCISE_PACKAGE)
    return tuple(sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                        if not m.ispkg and not m.name.startswith("_")))


def load_exercises() -> dict[str, Exercise]:
    """Import every exercise definition (the grader does this once, before running anything)."""
    out: dict[str, Exercise] = {}
    for name in exercise_modules():
        ex = importlib.import_module(f"{EXERCISE_PACKAGE}.{name}").EXERCISE
        out[ex.id] = ex
    return out
