"""Drivers: how the grader exercises an object the learner writes (a class), where a task is not
one function of plain data.

A task with ``driver="name"`` is called as ``DRIVERS[name](learner_object, *args)`` in the
kernel, and its expected value is ``DRIVERS[name](reference, *args)`` in the grader: the same
code drives both, on inputs drawn from the grader's seed, and returns plain data (tensors,
numbers) for ``compare``. This module is in the kernel's stripped package (``sandbox.KERNEL_FILES``):
it may import torch and ``attn_course._validation`` only, never a library module or a reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DRIVERS: dict[str, Callable[..., Any]] = {}
