"""kernel_polling: a channel's wait is spent in short slices, each ending in a check for a message."""

import asyncio
import time
from queue import Empty

import pytest
from jupyter_client.channels import AsyncZMQSocketChannel

from attn_course.grading import kernel_polling


class _Socket:
    """Stands in for a channel whose wake-up was missed: a poll only sees the message once
    ``arrives`` has passed, and only when it ends (as pyzmq's final check does)."""

    def __init__(self, arrives: float):
        self.arrives = arrives
        self.polls: list[float | None] = []

    async def get_msg(self, _channel, timeout=None):
        self.polls.append(timeout)
        await asyncio.sleep(timeout)
        if time.monotonic() >= self.arrives:
            return {"msg_type": "execute_reply"}
        raise Empty


@pytest.fixture
def socket(monkeypatch):
    fake = _Socket(arrives=time.monotonic() + 0.12)
    monkeypatch.setattr(kernel_polling, "SLICE_SECONDS", 0.05)
    monkeypatch.setattr(kernel_polling, "_original_get_msg", fake.get_msg)
    return fake


def test_a_missed_wake_up_costs_one_slice_not_the_timeout(socket):
    start = time.monotonic()
    msg = asyncio.run(kernel_polling._get_msg_in_slices(None, timeout=30))
    assert msg["msg_type"] == "execute_reply" and time.monotonic() - start < 1
    assert len(socket.polls) >= 3 and all(t <= 0.05 for t in socket.polls)


def test_the_timeout_still_holds(socket):
    socket.arrives = float("inf")
    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(kernel_polling._get_msg_in_slices(None, timeout=0.2))
    assert 0.2 <= time.monotonic() - start < 0.5
    assert sum(socket.polls) == pytest.approx(0.2, abs=0.03)  # slices add up to the timeout, not past it
    with pytest.raises(Empty):  # timeout 0: one immediate check
        asyncio.run(kernel_polling._get_msg_in_slices(None, timeout=0))
    assert socket.polls[-1] == 0


def test_no_timeout_waits_slice_after_slice(socket):
    assert asyncio.run(kernel_polling._get_msg_in_slices(None, timeout=None))["msg_type"] == "execute_reply"
    assert all(t == 0.05 for t in socket.polls)


def test_poll_in_slices_replaces_the_channels_get_msg(monkeypatch):
    monkeypatch.setattr(AsyncZMQSocketChannel, "get_msg", AsyncZMQSocketChannel.get_msg)  # restored afterwards
    kernel_polling.poll_in_slices()
    kernel_polling.poll_in_slices()
    assert AsyncZMQSocketChannel.get_msg is kernel_polling._get_msg_in_slices
