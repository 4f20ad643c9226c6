"""Sparse patterns and block-skipping attention: equal to dense attention with the same mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attn_course.labs.long_range import time_vs_length
from attn_course.sparse import (
    bigbird_layout,
    block_sparse_attention,
    dense_masked_attention,
    global_mask,
    layout_density,
    layout_to_mask,
    longformer_mask,
    mask_to_layout,
    sliding_window_mask,
    strided_mask,
)


def qkv(B=2, H=2, N=50, d=8, d_v=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, N, d, generator=g), torch.randn(B, H, N, d, generator=g),
            torch.randn(B, H, N, d_v, generator=g))


def test_masks_by_hand():
    # W = 2 keys, the query itself included: causal, keys i - 1 and i; non-causal, |i - j| < 2
    assert sliding_window_mask(4, 2).int().tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]
    assert sliding_window_mask(4, 2, causal=True).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0],
                                                                     [0, 0, 1, 1]]
    assert torch.equal(sliding_window_mask(5, 1), torch.eye(5, dtype=torch.bool))  # W = 1: only itself
    assert strided_mask(5, 2, causal=True)[4].int().tolist() == [1, 0, 1, 0, 1]
    g = global_mask(4, [0])
    assert g[0].all() and g[:, 0].all() and not g[1:, 1:].any()
    lf = longformer_mask(6, 2, [0])
    assert torch.equal(lf, sliding_window_mask(6, 2) | global_mask(6, [0]))


@pytest.mark.parametrize("W", [1, 3, 8, 40])
def test_window_is_the_course_wide_one(W):
    """W keys per causal query, itself included: the cache's window and GPTConfig.sliding_window."""
    from attn_course.kv_cache import SlidingWindowCache
    from attn_course.masking import causal_mask

    N = 30
    causal = sliding_window_mask(N, W, causal=True)
    assert causal.sum(dim=1).tolist() == [min(i + 1, W) for i in range(N)]  # the last W positions
    assert torch.equal(causal, sliding_window_mask(N, W) & causal_mask(N))  # the band, lower half
    assert sliding_window_mask(N, W).sum(dim=1).max() == min(2 * W - 1, N)  # W - 1 each side and itself
    # the ring buffer keeps exactly the keys the causal window lets the newest query see
    cache = SlidingWindowCache(num_layers=1, num_kv_heads=1, head_dim=1, batch_size=1, window=W)
    for p in range(N):
        x = torch.full((1, 1, 1, 1), float(p))
        keys, _ = cache.update(0, x, x)
        kept = sorted(int(t) for t in keys.flatten().tolist())
        assert kept == causal[p].nonzero().flatten().tolist(), (W, p)


def test_layout_round_trip_and_density():
    mask = sliding_window_mask(10, 3)
    layout = mask_to_layout(mask, 4)  # (3, 3)
    assert layout.int().tolist() == [[1, 1, 0], [1, 1, 1], [0, 1, 1]]
    covered = layout_to_mask(layout, 4, 10, 10)
    assert covered.shape == (10, 10) and (covered | ~mask).all()  # every allowed pair is in an allowed tile
    assert layout_density(layout) == pytest.approx(7 / 9)


def test_bigbird_layout():
    lay = bigbird_layout(8, window_blocks=3, global_blocks=1, random_blocks=1, seed=3)
    assert lay[0].all() and lay[:, 0].all() and lay.diagonal().all()
    assert torch.equal(lay, bigbird_layout(8, 3, 1, 1, seed=3))  # deterministic
    assert not bigbird_layout(8, causal=True).triu(1).any()


PATTERNS = {
    "window": lambda N: sliding_window_mask(N, 6),
    "window-causal": lambda N: sliding_window_mask(N, 8, causal=True),
    "strided+local": lambda N: strided_mask(N, 6, causal=True) | sliding_window_mask(N, 6, causal=True),
    "longformer": lambda N: longformer_mask(N, 5, [0, 17]),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("block_size", [8, 13])
def test_block_sparse_equals_dense_and_sdpa(name, block_size):
    q, k, v = qkv(N=50)
    mask = PATTERNS[name](50)
    layout = mask_to_layout(mask, block_size)
    out = block_sparse_attention(q, k, v, layout, block_size, mask)
    dense = dense_masked_attention(q, k, v, mask)
    torch.testing.assert_close(out, dense, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-6, rtol=1e-5)


def test_block_sparse_with_layout_only_equals_tile_mask():
    q, k, v = qkv(N=40)
    layout = bigbird_layout(5, window_blocks=3, global_blocks=1, random_blocks=1)
    out = block_sparse_attention(q, k, v, layout, 8)
    torch.testing.assert_close(out, dense_masked_attention(q, k, v, layout_to_mask(layout, 8)), atol=1e-6, rtol=1e-5)


def test_rows_without_keys_give_zero():
    q, k, v = qkv(N=16)
    layout = torch.zeros(2, 2, dtype=torch.bool)
    layout[1, 1] = True
    out = block_sparse_attention(q, k, v, layout, 8)
    assert (out[:, :, :8] == 0).all()
    torch.testing.assert_close(out, dense_masked_attention(q, k, v, layout_to_mask(layout, 8)))


def test_time_vs_length_rows_agree():
    rows = time_vs_length([64, 128], lambda N: sliding_window_mask(N, 8), block_size=16, H=1, d=8, repeats=1)
    assert [r["N"] for r in rows] == [64, 128]
    assert all(r["max_abs_diff"] < 1e-5 for r in rows)
    assert rows[1]["density"] < rows[0]["density"]  # a fixed window is a shrinking fraction of N^2


def test_errors():
    q, k, v = qkv(N=20)
    with pytest.raises(ValueError, match=r"layout has shape \(2, 2\); expected boolean \(3, 3\)"):
        block_sparse_attention(q, k, v, torch.ones(2, 2, dtype=torch.bool), 8)
    with pytest.raises(ValueError, match="mask has shape"):
        block_sparse_attention(q, k, v, torch.ones(3, 3, dtype=torch.bool), 8, mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"window \(W keys, the query itself included\) must be a positive int"):
        sliding_window_mask(10, 0)
    with pytest.raises(ValueError, match="global_tokens"):
        global_mask(4, [7])
    with pytest.raises(TypeError, match="mask must be a 2-D boolean"):
        mask_to_layout(torch.ones(4, 4), 2)
