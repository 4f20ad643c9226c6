"""A task's idea as rules that a call must keep, besides giving the right values.

Two kinds, both named in the message of a call that breaks them (the rule, never the fix):

**Measured in the call** (``Case.max_numel``, ``Case.max_flops``), by ``watch`` while the
learner's function runs: the largest tensor any torch op creates (elements), and the
matrix-multiply FLOPs torch counts (``utils.flop_counter``: in-place products included). This
runs in the kernel, in the learner's own process: it catches honest mistakes (a "tiled" attention that builds the
whole score matrix, a block-sparse one that multiplies every tile), not a cheat, who can
switch it off or leave torch for numpy.

**Enforced by the OS** (``Task.memory_limit_bytes``, ``Case.cpu_fraction``), by the grader
from outside the kernel, through the kernel's cgroup (``runner``): the whole kernel's memory
while the task runs, and the CPU time one case may use against a dense computation of the same
case timed in the grader. Where the grader has no cgroup (not root) these do not apply and
the report's sandbox line says so; the measured rules still do.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from attn_course.utils import flop_counter

__all__ = ["Watch", "watch", "broken_rule", "fmt_count", "CPU_SLACK_SECONDS"]

# What a call of one case costs besides the learner's work (reading the inputs, saving the
# output, the round trip): added to every CPU budget.
CPU_SLACK_SECONDS = 0.15


def fmt_count(n: int) -> str:
    return f"{n:,}"


class Watch(TorchDispatchMode):
    """The largest tensor created by any op while the mode is on (elements and shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.largest_shape: tuple[int, ...] = ()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.largest_shape = t.numel(), tuple(t.shape)
        return out


@contextmanager
def watch(max_numel: int = 0, max_flops: int = 0):
    """Measure the call inside the ``with``; yields ``(watch, flop_counter)`` (either may be None)."""
    sizes = Watch() if max_numel else None
    flops = flop_counter() if max_flops else None  # in-place products (acc.baddbmm_) count too
    if flops is not None:
        flops.__enter__()
    try:
        if sizes is not None:
            with sizes:
                yield sizes, flops
        else:
            yield sizes, flops
    finally:
        if flops is not None:
            flops.__exit__(None, None, None)


def broken_rule(sizes: Watch | None, flops: FlopCounterMode | None, max_numel: int, max_flops: int,
                rule: str) -> str:
    """'' when the call kept the rules; else what it did, against the limit, and the rule's name."""
    named = f" ({rule})" if rule else ""
    if sizes is not None and max_numel and sizes.largest > max_numel:
        shape = " x ".join(str(s) for s in sizes.largest_shape)
        return (f"created a tensor of {fmt_count(sizes.largest)} elements ({shape}); this case allows at most "
                f"{fmt_count(max_numel)} in one tensor{named}")
    if flops is not None and max_flops:
        total = int(flops.get_total_flops())
        if total > max_flops:
            return (f"did {fmt_count(total)} FLOPs of matrix products; this case allows at most "
                    f"{fmt_count(max_flops)}{named}")
    return ""
