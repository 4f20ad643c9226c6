"""Wait for a kernel's messages in short slices, so that a missed wake-up costs half a second.

jupyter_client's asyncio channels wait for a message with one ``socket.poll(timeout)``. pyzmq
wakes that poll from the socket's file descriptor, which ZeroMQ signals edge-triggered; now and
then the wake-up for a message that has arrived is missed (seen with ipywidgets' comm traffic:
nbclient issue 312). The poll then sleeps until its timeout, finds the message waiting and
returns it as if nothing had happened: a cell that took 0.1 s reports after the whole timeout
(300 s under ``make test``'s nbmake, 30 s per cell in the grader), and no error says why.

``poll_in_slices()`` makes every ``AsyncZMQSocketChannel.get_msg`` wait in slices of
``SLICE_SECONDS``, each ending in the same check for a waiting message, until its own timeout:
the same messages, the same timeouts, a missed wake-up bounded by one slice. The grader calls it
before it starts kernels; ``tests/conftest.py`` calls it for nbmake.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

from jupyter_client.channels import AsyncZMQSocketChannel

__all__ = ["SLICE_SECONDS", "poll_in_slices"]

SLICE_SECONDS = 0.5

_original_get_msg = AsyncZMQSocketChannel.get_msg


async def _get_msg_in_slices(self: AsyncZMQSocketChannel, timeout: float | None = None) -> dict[str, Any]:
    """``get_msg`` with its timeout (``None``: none) spent in slices of at most ``SLICE_SECONDS``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = SLICE_SECONDS if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return await _original_get_msg(self, timeout=min(SLICE_SECONDS, left))
        except Empty:
            if deadline is not None and time.monotonic() >= deadline:
                raise


def poll_in_slices() -> None:
    """Make every asyncio kernel channel of this process wait in slices (calling it again does nothing)."""
    AsyncZMQSocketChannel.get_msg = _get_msg_in_slices  # type: ignore[method-assign]
