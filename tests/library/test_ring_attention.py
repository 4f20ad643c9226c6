"""Ring attention on 2 and 3 CPU processes (gloo on 127.0.0.1) equals single-process attention.

The first launch starts a forkserver that imports torch (seconds); later launches fork from it
(under a second). Each launch checks several things at once.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from attn_course.flash import naive_attention
from attn_course.ring_attention import (
    launch,
    ring_attention,
    ring_attention_multiprocess,
    ring_communication_volume,
)

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def qkv(N, B=1, H=2, d=8, d_v=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, w, generator=g) for w in (d, d, d_v))
    return q, 2 * k, v


def _both_modes(q, k, v):
    """Runs inside each process: ring attention causal and not, plus the environment torchrun would set."""
    import os

    rank, world = dist.get_rank(), dist.get_world_size()
    n = q.shape[2] // world
    chunk = slice(rank * n, (rank + 1) * n)
    env = {key: os.environ[key] for key in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return env, [ring_attention(q[:, :, chunk], k[:, :, chunk], v[:, :, chunk], causal=c) for c in (False, True)]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ring_attention_equals_single_process(world_size):
    q, k, v = qkv(N=7 * world_size)
    results = launch(_both_modes, world_size, (q, k, v))
    for rank, (env, _) in enumerate(results):
        assert env == {"MASTER_ADDR": "127.0.0.1", "RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "LOCAL_RANK": str(rank)}
    for i, causal in enumerate((False, True)):
        out = torch.cat([outs[i] for _, outs in results], dim=2)  # (B, H, N, d_v)
        torch.testing.assert_close(out, naive_attention(q, k, v, causal=causal), atol=1e-5, rtol=0)


def test_ring_attention_multiprocess_helper():
    q, k, v = qkv(N=8, B=2)
    out = ring_attention_multiprocess(q, k, v, world_size=2, causal=True)
    torch.testing.assert_close(out, naive_attention(q, k, v, causal=True), atol=1e-5, rtol=0)


def test_errors():
    q, k, v = qkv(N=8)
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        ring_attention(q, k, v)
    with pytest.raises(ValueError, match="divisible by world_size = 3"):
        ring_attention_multiprocess(q, k, v, world_size=3)
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        launch(print, 0)


def test_communication_volume():
    vol = ring_communication_volume(N=8192, world_size=4, head_dim=128, heads=32, dtype_bytes=2)
    n = 2048
    assert vol.bytes_per_step == 2 * 32 * n * 128 * 2
    assert vol.flops_per_step == 4 * 32 * n * n * 128
    assert vol.steps == 3
    assert vol.flops_per_byte == pytest.approx(2 * n / 2)
    # doubling the chunk doubles the arithmetic intensity: longer chunks hide the communication
    assert ring_communication_volume(16384, 4, 128).flops_per_byte == pytest.approx(2 * vol.flops_per_byte)
    assert vol.bandwidth_to_hide(1e12) == pytest.approx(vol.bytes_per_step / (vol.flops_per_step / 1e12))
