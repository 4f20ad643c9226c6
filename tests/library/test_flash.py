"""Online softmax and tiled attention: every path equals the naive one and torch's SDPA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_course.flash import (
    block_partial,
    blockwise_attention,
    check_qkv,
    memory_traffic,
    merge_partials,
    naive_attention,
    online_softmax,
    online_softmax_stats_update,
    online_softmax_update,
    tiled_attention,
    tiled_attention_numpy,
)


def qkv(B=2, H=3, L=37, S=37, d=16, d_v=8, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, d, generator=g)
    k = torch.randn(B, H, S, d, generator=g) * spread  # large scores exercise the rescaling
    v = torch.randn(B, H, S, d_v, generator=g)
    return q, k, v


CASES = [  # (L, S, causal, block_size): ragged ends, L != S, blocks larger than the sequence
    (37, 37, False, 8),
    (37, 37, True, 8),
    (37, 53, False, (8, 16)),
    (53, 37, False, (16, 5)),
    (50, 30, True, (16, 8)),
    (30, 50, True, (7, 16)),
    (64, 64, True, (16, 32)),
    (64, 64, False, 64),
    (5, 100, True, 128),
    (1, 1, True, 4),
]


@pytest.mark.parametrize("L,S,causal,block_size", CASES)
def test_tiled_paths_equal_sdpa(L, S, causal, block_size):
    q, k, v = qkv(L=L, S=S)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(naive_attention(q, k, v, causal=causal), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(blockwise_attention(q, k, v, causal, block_size), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(tiled_attention(q, k, v, causal, block_size), ref, atol=1e-5, rtol=0)
    bs = block_size if isinstance(block_size, int) else block_size[0]
    out_np = tiled_attention_numpy(q.numpy(), k.numpy(), v.numpy(), causal, bs)
    np.testing.assert_allclose(out_np, ref.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_tiled_worker_threads_agree(threads):
    q, k, v = qkv(L=70, S=70)
    ref = naive_attention(q, k, v, causal=True, scale=0.3)
    out = tiled_attention(q, k, v, causal=True, block_size=(16, 8), scale=0.3, threads=threads)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_tiled_handles_huge_scores_and_growing_max():
    # scores that grow along the keys force a rescale in almost every block
    q, k, v = qkv(L=40, S=96, d=4, spread=1.0)
    k = k + torch.linspace(0, 60, 96).view(1, 1, 96, 1)
    ref = naive_attention(q, k, v)
    torch.testing.assert_close(tiled_attention(q, k, v, block_size=(8, 8)), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiled_attention(q * 100, k, v, block_size=16), naive_attention(q * 100, k, v),
                               atol=1e-5, rtol=1e-5)


def test_tiled_float64_and_non_contiguous_inputs():
    q, k, v = (x.double() for x in qkv(L=33, S=33))
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    out = tiled_attention(qt, k, v, causal=True, block_size=(8, 16))
    torch.testing.assert_close(out, naive_attention(q, k, v, causal=True), atol=1e-12, rtol=0)


def test_tiled_does_not_modify_inputs():
    q, k, v = qkv()
    copies = [x.clone() for x in (q, k, v)]
    tiled_attention(q, k, v, causal=True, block_size=8)
    for x, c in zip((q, k, v), copies):
        assert torch.equal(x, c)


@settings(max_examples=25, deadline=None)
@given(
    L=st.integers(1, 40),
    S=st.integers(1, 40),
    bq=st.integers(1, 48),
    bk=st.integers(1, 48),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_tiled_equals_naive_property(L, S, bq, bk, causal, seed):
    q, k, v = qkv(B=1, H=2, L=L, S=S, d=8, d_v=5, seed=seed)
    ref = naive_attention(q, k, v, causal=causal)
    torch.testing.assert_close(tiled_attention(q, k, v, causal, (bq, bk)), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(blockwise_attention(q, k, v, causal, (bq, bk)), ref, atol=1e-5, rtol=0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 70),
    block=st.integers(1, 80),
    scale=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**16),
)
def test_online_softmax_equals_softmax_property(n, block, scale, seed):
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(seed)) * scale
    torch.testing.assert_close(online_softmax(x, block_size=block), torch.softmax(x, -1), atol=1e-6, rtol=1e-5)


def test_online_softmax_other_dim_and_stats():
    x = torch.randn(5, 6, 7) * 20
    torch.testing.assert_close(online_softmax(x, dim=1, block_size=4), torch.softmax(x, 1))
    m = torch.full((5, 6), float("-inf"))
    l = torch.zeros(5, 6)
    for j in range(0, 7, 3):
        m, l = online_softmax_stats_update(m, l, x[..., j : j + 3])
    torch.testing.assert_close(m, x.amax(-1))
    torch.testing.assert_close(l, torch.exp(x - x.amax(-1, keepdim=True)).sum(-1))


def test_online_softmax_update_step_by_step():
    q, k, v = qkv(B=1, H=1, L=4, S=12, d=3, d_v=2)
    scores = (q @ k.transpose(-2, -1)) / 3**0.5  # (1, 1, 4, 12)
    m = torch.full((1, 1, 4), float("-inf"))
    l = torch.zeros(1, 1, 4)
    acc = torch.zeros(1, 1, 4, 2)
    before = [t.clone() for t in (m, l, acc)]
    m2, l2, acc2 = online_softmax_update(m, l, acc, scores[..., :5], v[:, :, :5])
    for t, b in zip((m, l, acc), before):  # no hidden in-place mutation
        assert torch.equal(t, b)
    m2, l2, acc2 = online_softmax_update(m2, l2, acc2, scores[..., 5:], v[:, :, 5:])
    torch.testing.assert_close(acc2 / l2.unsqueeze(-1), torch.softmax(scores, -1) @ v)
    torch.testing.assert_close(m2, scores.amax(-1))


def test_online_softmax_update_fully_masked_block_keeps_zero():
    m = torch.full((1, 3), float("-inf"))
    l, acc = torch.zeros(1, 3), torch.zeros(1, 3, 2)
    masked = torch.full((1, 3, 4), float("-inf"))
    m2, l2, acc2 = online_softmax_update(m, l, acc, masked, torch.ones(1, 4, 2))
    assert torch.isneginf(m2).all() and not torch.isnan(l2).any() and not torch.isnan(acc2).any()
    assert (l2 == 0).all() and (acc2 == 0).all()


def test_merge_partials_any_order():
    q, k, v = qkv(B=1, H=2, L=6, S=30)
    parts = [block_partial(q, k[:, :, j : j + 10], v[:, :, j : j + 10]) for j in (0, 10, 20)]
    ref = naive_attention(q, k, v)
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        m, l, acc = parts[order[0]]
        for i in order[1:]:
            m, l, acc = merge_partials(m, l, acc, *parts[i])
        torch.testing.assert_close(acc / l.unsqueeze(-1), ref, atol=1e-6, rtol=1e-5)


def test_block_partial_with_mask_and_merge_with_empty():
    q, k, v = qkv(B=1, H=1, L=3, S=4)
    mask = torch.tensor([[True, False, False, False], [True, True, False, False], [True, True, True, False]])
    m, l, acc = block_partial(q, k, v, mask=mask)
    empty = block_partial(q, k, v, mask=torch.zeros(3, 4, dtype=torch.bool))
    m, l, acc = merge_partials(m, l, acc, *empty)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(acc / l.unsqueeze(-1), ref)


def test_memory_traffic_matches_theorem_2():
    t = memory_traffic(1024, 64, sram_bytes=100 * 1024, dtype_bytes=2)
    assert t.naive_elements == 4 * 1024 * 64 + 4 * 1024**2
    assert t.block_cols == 200 and t.block_rows == 64
    assert t.flash_elements < t.naive_elements and t.flash_bytes == 2 * t.flash_elements
    # Theta(N^2 d^2 / M): doubling N quadruples flash traffic (up to the linear terms) ...
    r_n = memory_traffic(8192, 64, 100 * 1024).flash_elements / memory_traffic(4096, 64, 100 * 1024).flash_elements
    assert 3.8 < r_n < 4.2
    # ... doubling M halves it, and the advantage grows with N
    r_m = memory_traffic(8192, 64, 200 * 1024).flash_elements / memory_traffic(8192, 64, 100 * 1024).flash_elements
    assert 0.45 < r_m < 0.56
    assert memory_traffic(8192, 64, 100 * 1024).ratio > memory_traffic(1024, 64, 100 * 1024).ratio
    assert memory_traffic(10, 8, 1024, batch_heads=6).naive_elements == 6 * memory_traffic(10, 8, 1024).naive_elements


def test_validation_messages():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"q has shape \(37, 16\); expected \(B, H, L, d\)"):
        tiled_attention(q[0, 0], k, v)
    with pytest.raises(ValueError, match=r"k has shape .*expected \(2, 3, S, 16\)"):
        tiled_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match=r"v has shape .*expected \(2, 3, 37, d_v\)"):
        naive_attention(q, k, v[:, :, :5])
    with pytest.raises(TypeError, match="k has dtype torch.float64"):
        check_qkv(q, k.double(), v)
    with pytest.raises(TypeError, match="floating-point"):
        blockwise_attention(q.long(), k, v)
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        tiled_attention(q, k, v, block_size=0)
    with pytest.raises(ValueError, match=r"block_size\[1\] \(Bk\)"):
        tiled_attention(q, k, v, block_size=(4, -1))
    with pytest.raises(ValueError, match="threads"):
        tiled_attention(q, k, v, threads=0)
    with pytest.raises(ValueError, match="q has shape"):
        tiled_attention_numpy(np.zeros((2, 3, 4)), np.zeros((1, 1, 2, 3)), np.zeros((1, 1, 2, 3)))
    with pytest.raises(ValueError, match="sram_bytes"):
        memory_traffic(1024, 64, sram_bytes=16)
