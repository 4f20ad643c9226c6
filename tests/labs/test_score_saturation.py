"""Tests for attn_course.labs.score_saturation: the measurements behind the sqrt(d_k) scaling."""

from __future__ import annotations

import math

import pytest
import torch

from attn_course.labs.score_saturation import (
    SATURATION_METRICS,
    SaturationSweep,
    dot_product_variance,
    saturation_sweep,
    softmax_saturation,
    time_scores,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- variance


@pytest.mark.parametrize("d_k", [1, 16, 256])
def test_variance_is_d_k_unscaled_and_one_scaled(d_k):
    assert dot_product_variance(d_k, 4000, gen(1)) == pytest.approx(d_k, rel=0.15)
    assert dot_product_variance(d_k, 4000, gen(1), scaled=True) == pytest.approx(1.0, rel=0.15)


def test_variance_scaled_is_unscaled_over_d_k_on_the_same_samples():
    d_k = 64
    raw = dot_product_variance(d_k, 500, gen(2))
    scaled = dot_product_variance(d_k, 500, gen(2), scaled=True)
    assert scaled == pytest.approx(raw / d_k, rel=1e-12)


def test_variance_is_deterministic_and_chunking_does_not_matter(monkeypatch):
    a = dot_product_variance(32, 300, gen(3))
    assert a == dot_product_variance(32, 300, gen(3))
    import attn_course.labs.score_saturation as sat

    monkeypatch.setattr(sat, "_CHUNK_NUMBERS", 100)  # many small chunks
    # Chunks draw q and k per chunk, so the samples differ; the statistic must still be right.
    assert dot_product_variance(32, 3000, gen(3)) == pytest.approx(32, rel=0.15)


# --------------------------------------------------------------------------- softmax saturation


def test_saturation_keys_and_ranges():
    out = softmax_saturation(8, S=5, n=50, generator=gen(4))
    assert set(out) == set(SATURATION_METRICS)
    assert 1 / 5 <= out["max_weight"] <= 1
    assert 0 <= out["entropy"] <= math.log(5) + 1e-12
    assert out["grad_norm"] >= 0 and out["grad_norm_mean"] >= 0


def test_single_key_is_fully_saturated():
    out = softmax_saturation(4, S=1, n=20, generator=gen(5))
    assert out["max_weight"] == pytest.approx(1.0)
    assert out["entropy"] == pytest.approx(0.0, abs=1e-12)
    assert out["grad_norm"] == pytest.approx(0.0, abs=1e-12)  # the Jacobian of a 1-way softmax is 0


def test_grad_norm_matches_the_jacobian_formula():
    # Recompute J^T u with J = diag(w) - w w^T from the same samples.
    d_k, S, n = 6, 4, 7
    g = gen(6)
    q = torch.randn(n, 1, d_k, generator=g, dtype=torch.float64)
    k = torch.randn(n, S, d_k, generator=g, dtype=torch.float64)
    u = torch.randn(n, 1, S, generator=g, dtype=torch.float64)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d_k), dim=-1)  # (n, 1, S)
    J = torch.diag_embed(w) - w.unsqueeze(-1) * w.unsqueeze(-2)  # (n, 1, S, S), symmetric
    expected = (J @ u.unsqueeze(-1)).squeeze(-1).norm(dim=-1).flatten()  # (n,)
    out = softmax_saturation(d_k, S, n, gen(6), scaled=True)
    assert out["grad_norm"] == pytest.approx(expected.median().item(), rel=1e-10)
    assert out["grad_norm_mean"] == pytest.approx(expected.mean().item(), rel=1e-10)
    assert out["max_weight"] == pytest.approx(w.amax(-1).mean().item(), rel=1e-10)


@pytest.mark.parametrize("scaled", [False, True])
def test_grad_at_q_and_k_is_the_score_gradient_carried_back_through_the_scale(scaled):
    # d loss / d q = scale * sum_j g_j k_j and d loss / d k_j = scale * g_j q, with g = J^T u.
    d_k, S, n = 9, 5, 11
    g = gen(10)
    q = torch.randn(n, 1, d_k, generator=g, dtype=torch.float64)
    k = torch.randn(n, S, d_k, generator=g, dtype=torch.float64)
    u = torch.randn(n, 1, S, generator=g, dtype=torch.float64)
    scale = 1 / math.sqrt(d_k) if scaled else 1.0
    w = torch.softmax(scale * q @ k.transpose(-1, -2), dim=-1)  # (n, 1, S)
    J = torch.diag_embed(w) - w.unsqueeze(-1) * w.unsqueeze(-2)  # (n, 1, S, S)
    g_scores = (J @ u.unsqueeze(-1)).squeeze(-1)  # (n, 1, S)
    g_q = scale * g_scores @ k  # (n, 1, d_k)
    g_k = scale * g_scores.transpose(-1, -2) * q  # (n, S, 1) * (n, 1, d_k) -> (n, S, d_k)
    out = softmax_saturation(d_k, S, n, gen(10), scaled=scaled)
    assert out["grad_q_norm"] == pytest.approx(g_q.norm(dim=-1).flatten().median().item(), rel=1e-10)
    assert out["grad_k_norm"] == pytest.approx(g_k.flatten(1).norm(dim=-1).median().item(), rel=1e-10)


def test_unscaled_path_gains_sqrt_d_k_between_the_scores_and_q():
    # Unsaturated (small d_k, same samples): the scores get about the same gradient either way,
    # so q and k get about sqrt(d_k) times more without the scale.
    d_k = 16
    raw = softmax_saturation(d_k, S=8, n=400, generator=gen(11))
    scaled = softmax_saturation(d_k, S=8, n=400, generator=gen(11), scaled=True)
    gap_scores = scaled["grad_norm"] / raw["grad_norm"]
    gap_q = scaled["grad_q_norm"] / raw["grad_q_norm"]
    assert gap_q * math.sqrt(d_k) / gap_scores == pytest.approx(1.0, rel=0.3)
    assert raw["grad_q_norm"] > scaled["grad_q_norm"] and raw["grad_k_norm"] > scaled["grad_k_norm"]


def test_unscaled_saturates_and_scaled_does_not():
    small = softmax_saturation(4, S=16, n=300, generator=gen(7))
    big = softmax_saturation(512, S=16, n=300, generator=gen(7))
    big_scaled = softmax_saturation(512, S=16, n=300, generator=gen(7), scaled=True)
    assert big["max_weight"] > 0.9 > small["max_weight"]
    assert big_scaled["max_weight"] < 0.4
    assert big["entropy"] < 0.3 < 2.0 < big_scaled["entropy"]
    assert big["grad_norm"] < 1e-2 * big_scaled["grad_norm"]
    # at q and k the unscaled path gains sqrt(512) ~ 23, not enough to undo the saturation
    assert big["grad_q_norm"] < 1e-1 * big_scaled["grad_q_norm"]


# --------------------------------------------------------------------------- sweep


def test_sweep_pairs_scaled_and_unscaled_samples():
    sweep = saturation_sweep([2, 8], S=4, n=40, n_variance=50, generator=gen(8), progress=False)
    assert isinstance(sweep, SaturationSweep) and sweep.d_ks == [2, 8] and sweep.S == 4
    assert set(sweep.unscaled) == {"variance", *SATURATION_METRICS} == set(sweep.scaled)
    assert all(len(v) == 2 for v in (*sweep.unscaled.values(), *sweep.scaled.values()))
    for i, d_k in enumerate(sweep.d_ks):  # same samples: exactly a factor d_k apart
        assert sweep.scaled["variance"][i] == pytest.approx(sweep.unscaled["variance"][i] / d_k, rel=1e-12)
    # and the same numbers as the single-width functions with a generator in the same state
    assert sweep.unscaled["variance"][0] == dot_product_variance(2, 50, gen(8))
    curves = sweep.curves("max_weight")
    assert len(curves) == 2 and list(curves.values()) == [
        sweep.unscaled["max_weight"],
        sweep.scaled["max_weight"],
    ]
    with pytest.raises(ValueError, match="metric"):
        sweep.curves("nope")


def test_sweep_is_deterministic_with_the_default_generator():
    a = saturation_sweep([4], S=3, n=10, n_variance=10, progress=False)
    b = saturation_sweep([4], S=3, n=10, n_variance=10, progress=False)
    assert a == b


# --------------------------------------------------------------------------- timing and validation


def test_time_scores_returns_positive_times():
    times = time_scores(4, 5, 8, 6, batch=2, repeats=3, generator=gen(9))
    assert list(times) == ["dot", "scaled_dot", "general", "additive"]
    assert all(t > 0 for t in times.values())


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: dot_product_variance(0), "d_k must be a positive int"),
        (lambda: dot_product_variance(4, n=1), "n must be at least 2"),
        (lambda: dot_product_variance(4.0), "d_k must be a positive int"),
        (lambda: softmax_saturation(4, S=0), "S must be a positive int"),
        (lambda: softmax_saturation(4, n=True), "n must be a positive int"),
        (lambda: saturation_sweep([], progress=False), "at least one width"),
        (lambda: saturation_sweep([4, -1], progress=False), "d_ks entry must be a positive int"),
        (lambda: time_scores(4, 4, 4, 0), "hidden must be a positive int"),
    ],
)
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_generator_raises_type_error():
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        softmax_saturation(4, generator=0)
