"""Small helpers the notebooks share: seeding, thread pinning, timing, importing an optional
dependency, and showing the source of a mechanism in its page."""

from __future__ import annotations

import importlib
import inspect
import os
import random
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from attn_course._validation import require_int, require_optional_int


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch.Generator seeded the same way.

    Pages call this first so that every number they print is the same on every run.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def limit_threads(n: int | None = None) -> int:
    """Pin torch's intra-op threads (default: cores available, at most 4) for repeatable timings."""
    if n is None:
        n = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


@contextmanager
def num_threads(n: int | None, name: str = "threads") -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count.

    ``None`` leaves the setting as it is. The package's training loops and timings use this:
    their tensors are tiny, so one thread is fastest, and on a busy machine by far.
    ``name`` is the caller's parameter name, for the error message.
    """
    require_optional_int(n, name)
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def best_seconds(fn: Callable[[], object], repeats: int = 3, warmup: bool = True,
                 clock: Callable[[], float] = time.perf_counter, min_seconds: float = 0.0) -> float:
    """Best time of ``fn()`` over ``repeats`` runs, after one untimed run if ``warmup``.

    The best, not the mean: it is the run that the other programs on a shared machine disturbed
    least. Callers that warm up differently (once for many timings) pass ``warmup=False``.
    ``clock``: wall time by default; ``time.process_time`` for this process's CPU time.
    ``min_seconds``: go on past ``repeats`` runs until the timed runs add up to this much, so a
    short call is timed as many times as it takes to find an undisturbed run.
    """
    require_int(repeats, "repeats")
    if warmup:
        fn()
    best, total, runs = float("inf"), 0.0, 0
    while runs < repeats or total < min_seconds:
        start = clock()
        fn()
        took = clock() - start
        best, total, runs = min(best, took), total + took, runs + 1
    return best


def flop_counter():
    """A ``torch.utils.flop_counter.FlopCounterMode`` (no display) that also counts the in-place
    matrix products ``baddbmm_`` and ``addmm_``.

    torch's counter knows ``baddbmm`` and ``addmm`` but not their in-place forms, which a kernel
    that accumulates into a reused buffer uses (``flash.tiled_attention``); counted with the same
    formulas, the same work counts the same however it is written. Use as ``with flop_counter() as c:``,
    then ``c.get_total_flops()``; the mode is per thread.
    """
    from torch.utils.flop_counter import FlopCounterMode, addmm_flop, baddbmm_flop

    in_place = {  # the formulas as written, before torch wrapped them for its own registry
        torch.ops.aten.baddbmm_: baddbmm_flop.__wrapped__,
        torch.ops.aten.addmm_: addmm_flop.__wrapped__,
    }
    return FlopCounterMode(display=False, custom_mapping=in_place)


def require_package(module: str, pip_name: str, purpose: str):
    """Import an optional dependency or raise an ImportError that names the pip package."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{purpose} needs the optional package {pip_name!r}: pip install {pip_name} "
                          "(it is in the course's dev extra: pip install -e '.[dev]')") from err


def source_of(*objects: object) -> str:
    """The source code of functions, classes or methods, each headed by the file and line it is on.

    Chapters show the mechanism they teach with :func:`show_source`; this is its plain-text half
    (and what the tests read).
    """
    if not objects:
        raise TypeError("source_of needs at least one function, class or method")
    parts = []
    for obj in objects:
        target = inspect.unwrap(obj)
        # Triton kernels are objects wrapping the Python function (autotuner -> jit -> function) in `.fn`
        for _ in range(4):
            if inspect.isroutine(target) or inspect.isclass(target) or not callable(getattr(target, "fn", None)):
                break
            target = target.fn
        try:
            lines, start = inspect.getsourcelines(target)
            path = inspect.getsourcefile(target) or "?"
        except (TypeError, OSError) as err:
            raise TypeError(f"cannot show the source of {obj!r}: {err}") from None
        package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        rel = os.path.relpath(path, package_dir) if path.startswith(package_dir) else os.path.basename(path)
        name = getattr(target, "__qualname__", getattr(target, "__name__", "?"))
        parts.append(f"# {name}: {rel}, line {start}\n" + textwrap.dedent("".join(lines)).rstrip() + "\n")
    return "\n\n".join(parts)


def show_source(*objects: object):
    """Display the source of the given functions/classes/methods, syntax-highlighted.

    Returns an ``IPython.display.Code`` (the last expression of a cell displays it), which
    renders in Jupyter, Colab and the HTML book alike; without IPython, the plain text.
    """
    text = source_of(*objects)
    try:
        from IPython.display import Code
    except ImportError:  # plain Python: the text is the best we can do
        return text
    return Code(text, language="python")
