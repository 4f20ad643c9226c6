"""Chapter 20's experiments: the decode step with a KV cache, recall without training."""

import pytest
import torch

from attn_course.attention import scaled_dot_product_attention
from attn_course.labs.linear_recall import (
    decode_step_seconds,
    quadratic_feature_map,
    random_pairs,
    recall_accuracy,
    recall_by_age,
    softmax_decode_step,
)
from attn_course.linear import linear_attention, linear_attention_quadratic


def test_softmax_decode_step_writes_the_cache_and_attends_over_it():
    g = torch.Generator().manual_seed(0)
    k_cache, v_cache = torch.randn(2, 3, 7, 4, generator=g), torch.randn(2, 3, 7, 5, generator=g)
    q_t, k_t, v_t = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 5, generator=g)
    out = softmax_decode_step(k_cache, v_cache, 4, q_t, k_t, v_t)
    assert torch.equal(k_cache[:, :, 4], k_t) and torch.equal(v_cache[:, :, 4], v_t)
    ref = scaled_dot_product_attention(q_t[:, :, None], k_cache[:, :, :5], v_cache[:, :, :5])[0][:, :, 0]
    torch.testing.assert_close(out, ref)


def test_decode_rows():
    rows = decode_step_seconds([8, 32], B=1, H=1, d=4, repeats=2)
    assert [r["N"] for r in rows] == [8, 32] and rows[0]["state_bytes"] == rows[1]["state_bytes"] == (16 + 4) * 4
    assert rows[1]["cache_bytes"] == 2 * 33 * 4 * 4


def test_quadratic_feature_map_squares_the_dot_product():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 2, 5, 3, generator=g), torch.randn(1, 2, 6, 3, generator=g), torch.randn(1, 2, 6, 2, generator=g)
    torch.testing.assert_close(quadratic_feature_map(q) @ quadratic_feature_map(k).transpose(-2, -1),
                               (q @ k.transpose(-2, -1)) ** 2)
    torch.testing.assert_close(linear_attention(q, k, v, feature_map=quadratic_feature_map),
                               linear_attention_quadratic(q, k, v, feature_map=quadratic_feature_map), atol=1e-5, rtol=1e-4)


def test_recall():
    keys, values = random_pairs(10, 8, 6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(1, 1, 10))
    assert set(values.unique().tolist()) <= {-1.0, 1.0}
    assert recall_accuracy("softmax", 64, trials=1) == 1.0
    assert recall_accuracy("linear, elu+1", 64, trials=1) < 0.3
    assert recall_accuracy("linear, (q.k)^2", 8, trials=1) == 1.0
    with pytest.raises(ValueError, match="method"):
        recall_accuracy("cosine", 4)


def test_decayed_recall_keeps_the_recent_pairs():
    decayed = "linear, (q.k)^2 + decay"
    assert recall_accuracy(decayed, 8, trials=1) == 1.0  # a few pairs: all recalled
    by_age = recall_by_age(decayed, 64, trials=2, decay=0.8)
    assert by_age.shape == (64,) and by_age.mean().item() == recall_accuracy(decayed, 64, trials=2, decay=0.8)
    assert by_age[-4:].mean() == 1.0 and by_age[:16].mean() < 0.1  # the newest kept, the oldest faded away
    # decay = 1 stores the same sum as the non-causal form
    assert recall_accuracy(decayed, 128, trials=1, decay=1.0) == recall_accuracy("linear, (q.k)^2", 128, trials=1)
