"""Small helpers the notebooks share: seeding, device choice, thread pinning, environment detection."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch.Generator seeded the same way.

    Pages call this first so that every number they print is the same on every run.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def in_colab() -> bool:
    return "google.colab" in sys.modules


def default_device() -> torch.device:
    """CUDA when present, else CPU. Notebooks that need a GPU check this and explain a skip."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"{name} must be a positive int or None, got {n!r}")
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
