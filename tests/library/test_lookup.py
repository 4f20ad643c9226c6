"""Tests for attn_course.lookup (hard and soft lookups, kernel regression) and the lookup widget."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from attn_course.attention import attention_weights, scaled_dot_product_attention
from attn_course.labs.soft_lookup import (
    LookupFrame,
    bandwidth_sweep,
    local_weight_mass,
    lookup_explorer,
    lookup_frame,
    make_regression_data,
    plot_kernel_weights,
    plot_mse_by_bandwidth,
    plot_regression_fit,
    plot_soft_lookup,
    true_function,
)
from attn_course.lookup import (
    effective_number_of_keys,
    gaussian_as_dot_product,
    gaussian_kernel_weights,
    gaussian_scores,
    hard_lookup,
    nadaraya_watson,
    nadaraya_watson_loop,
)
from attn_course.masking import masked_softmax


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


@pytest.fixture
def data():
    return make_regression_data(40, gen(1))  # (40, 1), (40, 1)


# --------------------------------------------------------------------------- hard_lookup


def test_hard_lookup_returns_the_exact_values():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # (S=3, d_k=2)
    values = torch.tensor([[10.0, 0.0, 0.0], [0.0, 20.0, 0.0], [0.0, 0.0, 30.0]])  # (3, d_v=3)
    queries = keys[[2, 0, 1, 1]]  # (4, 2)
    out, w = hard_lookup(queries, keys, values)
    assert torch.equal(out, values[[2, 0, 1, 1]])
    assert torch.equal(w, torch.eye(3)[[2, 0, 1, 1]])


def test_hard_lookup_batched():
    keys, values = randn(2, 5, 3, seed=1), randn(2, 5, 4, seed=2)
    idx = torch.tensor([[4, 0], [1, 1]])
    queries = torch.stack([keys[b, idx[b]] for b in range(2)])  # (2, 2, 3)
    out, w = hard_lookup(queries, keys, values)
    assert out.shape == (2, 2, 4) and w.shape == (2, 2, 5)
    for b in range(2):
        assert torch.equal(out[b], values[b, idx[b]])


def test_hard_lookup_missing_key_raises_key_error():
    keys, values = torch.tensor([[0.0], [1.0]]), torch.tensor([[5.0], [6.0]])
    with pytest.raises(KeyError, match=r"index \(1,\) matches no key"):
        hard_lookup(torch.tensor([[1.0], [0.5]]), keys, values)


def test_hard_lookup_duplicate_keys_raise():
    keys, values = torch.tensor([[0.0], [0.0]]), torch.tensor([[5.0], [6.0]])
    with pytest.raises(ValueError, match="matches 2 keys; keys must be unique"):
        hard_lookup(torch.tensor([[0.0]]), keys, values)


def test_hard_lookup_is_the_limit_of_the_soft_one():
    keys, values = randn(6, 2, seed=3), randn(6, 3, seed=4)
    queries = keys[[5, 2]]
    hard, w_hard = hard_lookup(queries, keys, values)
    soft, w_soft = nadaraya_watson(queries, keys, values, bandwidth=1e-3)
    torch.testing.assert_close(soft, hard)
    torch.testing.assert_close(w_soft, w_hard)


# --------------------------------------------------------------------------- scores and weights


def test_gaussian_scores_values():
    q, k = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    torch.testing.assert_close(gaussian_scores(q, k, 5.0), torch.tensor([[0.0, -25.0 / 50.0]]))


@pytest.mark.parametrize("shape_q, shape_k", [((7, 1), (9, 1)), ((2, 4, 3), (2, 6, 3)), ((3, 5, 2), (6, 2))])
@pytest.mark.parametrize("h", [0.05, 0.7, 20.0])
def test_weights_rows_sum_to_one_and_match_masked_softmax(shape_q, shape_k, h):
    q, k = randn(*shape_q, seed=5), randn(*shape_k, seed=6)
    w = gaussian_kernel_weights(q, k, h)
    assert w.shape == (*torch.broadcast_shapes(shape_q[:-2], shape_k[:-2]), shape_q[-2], shape_k[-2])
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    assert torch.all(w >= 0)
    diff = q.unsqueeze(-2) - k.unsqueeze(-3)
    torch.testing.assert_close(w, masked_softmax(-(diff**2).sum(-1) / (2 * h * h)))
    torch.testing.assert_close(w, torch.softmax(gaussian_scores(q, k, h), dim=-1))


@pytest.mark.parametrize("h", [0.2, 1.0, 3.0])
def test_gaussian_is_dot_product_attention_on_augmented_vectors(h):
    q, k, v = (
        randn(2, 5, 3, seed=7, dtype=torch.float64),
        randn(2, 8, 3, seed=8, dtype=torch.float64),
        randn(2, 8, 4, seed=9, dtype=torch.float64),
    )
    q_aug, k_aug = gaussian_as_dot_product(q, k, h)
    assert q_aug.shape == (2, 5, 4) and k_aug.shape == (2, 8, 4)
    expected_out, expected_w = nadaraya_watson(q, k, v, h)
    torch.testing.assert_close(attention_weights(q_aug, k_aug, scale=1.0), expected_w)
    out, w = scaled_dot_product_attention(q_aug, k_aug, v, scale=1.0)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(w, expected_w)


def test_loop_twin_matches_and_underflows_where_the_softmax_does_not(data):
    x, y = data
    q = torch.linspace(0, 5, 23).unsqueeze(-1)  # (23, 1)
    out, w = nadaraya_watson(q, x, y, 0.4)
    out_loop, w_loop = nadaraya_watson_loop(q, x, y, 0.4)
    torch.testing.assert_close(out_loop, out)
    torch.testing.assert_close(w_loop, w)
    far = torch.tensor([[100.0]])  # every kernel value exp(-(~95 / 0.4)^2 / 2) underflows to 0
    assert torch.isnan(nadaraya_watson_loop(far, x, y, 0.4)[0]).all()
    out_far, _ = nadaraya_watson(far, x, y, 0.4)
    torch.testing.assert_close(out_far, y[-1:])  # the softmax gives it all to the nearest key


def test_loop_twin_batched():
    q, k, v = randn(3, 4, 2, seed=10), randn(1, 6, 2, seed=11), randn(3, 6, 5, seed=12)
    for a, b in zip(nadaraya_watson_loop(q, k, v, 0.9), nadaraya_watson(q, k, v, 0.9)):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- bandwidth limits


def test_tiny_bandwidth_is_nearest_neighbour(data):
    x, y = data
    q = torch.tensor([[0.31], [2.2], [4.97]])
    out, w = nadaraya_watson(q, x, y, 1e-4)
    nearest = (q - x.T).abs().argmin(-1)  # (3,)
    torch.testing.assert_close(out, y[nearest])
    torch.testing.assert_close(effective_number_of_keys(w), torch.ones(3))


def test_huge_bandwidth_is_the_mean(data):
    x, y = data
    q = torch.tensor([[0.0], [2.5], [5.0]])
    out, w = nadaraya_watson(q, x, y, 1e4)
    torch.testing.assert_close(out, y.mean().expand(3, 1))
    torch.testing.assert_close(w, torch.full((3, 40), 1 / 40))
    torch.testing.assert_close(effective_number_of_keys(w), torch.full((3,), 40.0))


def test_bandwidth_sweep_intermediate_wins(data):
    x, y = data
    q = torch.linspace(0, 5, 101).unsqueeze(-1)
    rows = bandwidth_sweep(x, y, q, true_function(q), [0.005, 0.3, 100.0])
    assert [r["bandwidth"] for r in rows] == [0.005, 0.3, 100.0]
    small, mid, large = (r["test_mse"] for r in rows)
    assert mid < small and mid < large
    assert rows[0]["train_mse"] < rows[1]["train_mse"] < rows[2]["train_mse"]
    assert rows[0]["effective_keys"] < rows[1]["effective_keys"] < rows[2]["effective_keys"] <= 40 + 1e-3


def test_make_regression_data_is_sorted_and_reproducible():
    x, y = make_regression_data(30, gen(3))
    x2, y2 = make_regression_data(30, gen(3))
    assert x.shape == y.shape == (30, 1)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.all(x[1:] >= x[:-1]) and x.min() >= 0 and x.max() <= 5
    x0, y0 = make_regression_data(30, gen(3), noise=0.0)
    torch.testing.assert_close(y0, true_function(x0))


def test_local_weight_mass():
    q, k = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [0.5], [3.0]])
    w = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    torch.testing.assert_close(
        local_weight_mass(w, q, k, 0.5), torch.tensor([0.8, 0.1])
    )  # the radius is inclusive


# --------------------------------------------------------------------------- validation


def test_validation_messages():
    q, k, v = torch.zeros(4, 2), torch.zeros(5, 2), torch.zeros(5, 3)
    with pytest.raises(ValueError, match=r"values has shape \(6, 3\); expected \(\.\.\., 5, d_v\)"):
        nadaraya_watson(q, k, torch.zeros(6, 3), 1.0)
    with pytest.raises(ValueError, match=r"keys has shape \(5, 3\); expected \(\.\.\., S, 2\)"):
        gaussian_kernel_weights(q, torch.zeros(5, 3), 1.0)
    with pytest.raises(ValueError, match=r"queries has shape \(4,\); expected"):
        nadaraya_watson(torch.zeros(4), k, v, 1.0)
    with pytest.raises(TypeError, match="queries must be a floating-point tensor"):
        hard_lookup(torch.zeros(4, 2, dtype=torch.long), k, v)
    with pytest.raises(TypeError, match="values has dtype torch.float64"):
        nadaraya_watson(q, k, v.double(), 1.0)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="bandwidth must be a positive finite number"):
            nadaraya_watson(q, k, v, bad)
    for bad in (True, "1", torch.tensor(1.0)):
        with pytest.raises(TypeError, match="bandwidth must be a positive number"):
            gaussian_scores(q, k, bad)
    with pytest.raises(ValueError, match=r"targets has shape \(4, 1\); expected \(4, 3\)"):
        bandwidth_sweep(k, v, q, torch.zeros(4, 1), [1.0])
    with pytest.raises(ValueError, match="n must be a positive int"):
        make_regression_data(0)
    with pytest.raises(ValueError, match=r"weights has shape \(5, 4\); expected \(\.\.\., 4, 5\)"):
        local_weight_mass(torch.zeros(5, 4), q, k, 1.0)


# --------------------------------------------------------------------------- widget and plots


def test_lookup_frame(data):
    x, y = data
    frame = lookup_frame(2.0, x, y, 0.3)
    assert isinstance(frame, LookupFrame)
    out, w = nadaraya_watson(torch.tensor([[2.0]]), x, y, 0.3)
    torch.testing.assert_close(frame.weights, w[0])
    assert frame.prediction == pytest.approx(float(out), abs=1e-6)
    assert frame.top_key == int((x[:, 0] - 2.0).abs().argmin())
    assert 1.0 <= frame.effective_keys <= 40.0
    assert lookup_frame(2.0, x, y, 1e-4).effective_keys == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"keys has shape \(40,\); expected \(S, 1\)"):
        lookup_frame(2.0, x[:, 0], y, 0.3)
    with pytest.raises(TypeError, match="query must be a finite real number"):
        lookup_frame(torch.tensor(2.0), x, y, 0.3)


def test_lookup_explorer_builds_headless_and_updates(data):
    ipywidgets = pytest.importorskip("ipywidgets")
    x, y = data
    box = lookup_explorer(x, y, query=1.0, bandwidth=0.3, truth=true_function)
    assert isinstance(box, ipywidgets.VBox)
    query_slider, bandwidth_slider = box.children[:2]
    assert box.frame.query == pytest.approx(1.0)
    query_slider.value = 3.5
    assert box.frame.query == pytest.approx(3.5)
    bandwidth_slider.value = 2.0
    assert box.frame.bandwidth == pytest.approx(2.0)
    expected = lookup_frame(3.5, x, y, 2.0)
    assert box.frame.prediction == pytest.approx(expected.prediction)
    torch.testing.assert_close(box.frame.weights, expected.weights)
    assert "returned value" in box.children[2].value
    with pytest.raises(ValueError, match="outside bandwidth_range"):
        lookup_explorer(x, y, bandwidth=50.0)


def test_plots_draw_labelled_axes(data):
    x, y = data
    q = torch.linspace(0, 5, 30).unsqueeze(-1)
    pred, w = nadaraya_watson(q, x, y, 0.3)
    frame = lookup_frame(2.5, x, y, 0.3)
    top, bottom = plot_soft_lookup(
        x, y, frame.weights, frame.query, frame.prediction, truth=(q, true_function(q))
    )
    assert top.get_ylabel() and bottom.get_xlabel() and top.get_title()
    ax = plot_kernel_weights(w, q, x)
    assert ax.get_xlabel() and ax.get_ylabel()
    ax = plot_regression_fit(x, y, q, pred, truth=true_function(q))
    assert ax.get_legend() is not None
    ax = plot_mse_by_bandwidth([0.1, 1.0], {"test": [0.2, 0.5]}, references={"noise": 0.25})
    assert ax.get_xscale() == "log"
    with pytest.raises(ValueError, match=r"expected \(30, 40\)"):
        plot_kernel_weights(w.T, q, x)
    plt.close("all")
