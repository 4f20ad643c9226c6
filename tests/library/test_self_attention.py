"""Tests for attn_course.self_attention: the layers and the RNN/CNN/attention measurements."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attn_course.attention import attention_loop
from attn_course.labs.self_attention_vs_rnn import (
    LAYER_KINDS,
    ConvStack,
    GRULayer,
    RNNLayer,
    count_flops,
    influence_matrix,
    layer_flops,
    layers_to_connect,
    make_layer,
    reach,
    receptive_field_layers,
    sequential_depth,
    time_forward,
    time_sweep,
)
from attn_course.masking import causal_mask
from attn_course.self_attention import SelfAttention


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------- SelfAttention


@pytest.mark.parametrize("shape", [(5, 8), (2, 5, 8), (2, 3, 7, 8)])
@pytest.mark.parametrize("bias", [False, True])
def test_self_attention_matches_torch_sdpa_on_its_projections(shape, bias):
    layer = SelfAttention(8, 6, bias=bias)
    x = randn(*shape, seed=1)
    out, weights = layer(x)
    q, k, v = layer.project(x)
    assert q.shape == k.shape == v.shape == (*shape[:-1], 6)
    assert out.shape == (*shape[:-1], 6) and weights.shape == (*shape[:-1], shape[-2])
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(q, x @ layer.W_q.weight.T + (layer.W_q.bias if bias else 0))
    torch.testing.assert_close(weights.sum(-1), torch.ones(shape[:-1]))


def test_self_attention_matches_the_loop_twin_with_a_mask():
    layer = SelfAttention(4, 4)
    x = randn(2, 6, 4, seed=2)
    mask = randn(2, 6, 6, seed=3) > -0.5
    out, weights = layer(x, mask=mask)
    q, k, v = layer.project(x)
    out_loop, weights_loop = attention_loop(q, k, v, mask)
    torch.testing.assert_close(out, out_loop)
    torch.testing.assert_close(weights, weights_loop)


def test_self_attention_is_causal_equals_the_causal_mask():
    layer = SelfAttention(4, 3)
    x = randn(2, 5, 4, seed=4)
    a, wa = layer(x, is_causal=True)
    b, wb = layer(x, mask=causal_mask(5))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(wa, wb)
    assert torch.all(wa[..., ~causal_mask(5)] == 0)
    torch.testing.assert_close(a, F.scaled_dot_product_attention(*layer.project(x), is_causal=True))


def test_self_attention_validates_its_input():
    layer = SelfAttention(4, 3)
    with pytest.raises(ValueError, match=r"x has shape \(2, 5, 3\); expected \(\.\.\., T, 4\)"):
        layer(randn(2, 5, 3))
    with pytest.raises(ValueError, match="x has shape"):
        layer(randn(4))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        layer(torch.ones(2, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="d_in must be a positive int"):
        SelfAttention(0, 3)


# --------------------------------------------------------------------------- the other layers


def test_rnn_layer_matches_torch_rnn():
    rnn = RNNLayer(5, 7)
    ref = nn.RNN(5, 7, nonlinearity="tanh", batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(rnn.W_x.weight)
        ref.bias_ih_l0.copy_(rnn.W_x.bias)
        ref.weight_hh_l0.copy_(rnn.W_h.weight)
        ref.bias_hh_l0.zero_()
    x = randn(3, 9, 5, seed=5)
    torch.testing.assert_close(rnn(x), ref(x)[0])
    # leading dims are flattened and restored
    x4 = randn(2, 3, 9, 5, seed=6)
    torch.testing.assert_close(rnn(x4)[1, 2], rnn(x4[1, 2:3])[0])


def test_gru_layer_shape_and_default_width():
    layer = GRULayer(6)
    assert layer(randn(2, 3, 4, 6)).shape == (2, 3, 4, 6)
    assert GRULayer(6, 2)(randn(4, 6)).shape == (4, 2)


@pytest.mark.parametrize("causal, k", [(True, 2), (True, 3), (False, 3), (False, 5)])
def test_conv_stack_keeps_length_and_its_receptive_field(causal, k):
    stack = ConvStack(3, 4, num_layers=2, kernel_size=k, causal=causal).double()
    x = randn(2, 11, 3, dtype=torch.float64)
    y = stack(x)
    assert y.shape == (2, 11, 4)
    x2 = x.clone()
    x2[:, 3] += 1.0  # change input 3 only
    lo, hi = (3, 3 + 2 * (k - 1)) if causal else (3 - 2 * ((k - 1) // 2), 3 + 2 * ((k - 1) // 2))  # 2 layers
    changed = (stack(x2) - y).abs().amax(dim=(0, 2)) > 0  # (T,)
    assert changed.tolist() == [lo <= t <= hi for t in range(11)]


def test_conv_stack_rejects_even_centred_kernels():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ConvStack(3, kernel_size=4, causal=False)


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_make_layer_maps_d_to_d(kind):
    layer = make_layer(kind, 8)
    out = layer(randn(2, 5, 8))
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape == (2, 5, 8)


def test_make_layer_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="kind must be one of"):
        make_layer("transformer", 8)


# --------------------------------------------------------------------------- influence


def test_influence_patterns_of_one_layer():
    T = 7
    lower = torch.ones(T, T, dtype=torch.bool).tril()
    band = lower & ~torch.ones(T, T, dtype=torch.bool).tril(-3)  # t - 2 <= s <= t
    patterns = {
        "self_attention": torch.ones(T, T, dtype=torch.bool),
        "rnn": lower,
        "gru": lower,
        "cnn": band,
    }
    for kind, expected in patterns.items():
        influence = influence_matrix(make_layer(kind, 3), T)
        assert influence.shape == (T, T) and influence.dtype == torch.float64
        assert torch.equal(influence > 0, expected), kind


def test_influence_of_a_causal_attention_layer_is_lower_triangular():
    class CausalSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = SelfAttention(3, 3)

        def forward(self, x):
            return self.attention(x, is_causal=True)

    influence = influence_matrix(CausalSelfAttention(), 6, 3)
    assert torch.equal(influence > 0, torch.ones(6, 6, dtype=torch.bool).tril())


def test_influence_matrix_needs_a_width():
    with pytest.raises(ValueError, match="d_in is needed"):
        influence_matrix(nn.Identity(), 4)


@pytest.mark.parametrize("kind", ["self_attention", "rnn", "cnn"])
@pytest.mark.parametrize("source", [0, 3, 8])
def test_reach_is_a_column_of_the_influence_matrix(kind, source):
    layer = make_layer(kind, 3)
    assert torch.equal(reach(layer, 9, source), influence_matrix(layer, 9)[:, source] > 0)


def test_reach_validates_source():
    with pytest.raises(ValueError, match="source must be an int in"):
        reach(make_layer("rnn", 2), 4, source=4)


@pytest.mark.parametrize(
    "k, T, causal, expected",
    [
        (3, 1, True, 0),
        (2, 5, True, 4),
        (3, 16, True, 8),
        (3, 17, True, 8),
        (5, 64, True, 16),
        (3, 16, False, 15),
        (5, 16, False, 8),
        (7, 100, False, 33),
    ],
)
def test_receptive_field_layers(k, T, causal, expected):
    assert receptive_field_layers(k, T, causal=causal) == expected


def test_receptive_field_layers_rejects_kernels_that_never_connect():
    with pytest.raises(ValueError, match="kernel_size must be >= 2"):
        receptive_field_layers(1, 5)
    with pytest.raises(ValueError, match="odd"):
        receptive_field_layers(4, 5, causal=False)


@pytest.mark.parametrize("k, causal", [(2, True), (3, True), (5, True), (3, False), (5, False)])
@pytest.mark.parametrize("T", [2, 9, 33, 600])
def test_layers_to_connect_measures_the_formula(k, causal, T):
    # T = 600 needs up to 599 layers: the per-layer rescaling must keep the tangent from underflowing
    assert layers_to_connect(k, T, causal=causal) == receptive_field_layers(k, T, causal=causal)


def test_layers_to_connect_gives_up_after_max_layers():
    assert layers_to_connect(3, 20, max_layers=5) is None
    assert layers_to_connect(3, 1) == 0


@pytest.mark.threads(2)  # more than the function under test sets, so that restoring shows
def test_layers_to_connect_restores_the_thread_count():
    n = torch.get_num_threads()
    layers_to_connect(3, 10)
    assert torch.get_num_threads() == n


# --------------------------------------------------------------------------- sequential depth


@pytest.mark.parametrize("T", [1, 5, 40])
def test_sequential_depth(T):
    assert sequential_depth(make_layer("rnn", 4), T) == T  # W_x once, then W_h at steps 1..T-1
    assert sequential_depth(make_layer("gru", 4), T) == T
    assert sequential_depth(make_layer("self_attention", 4), T) == 3  # projection, q k^T, weights @ v
    assert sequential_depth(ConvStack(4, num_layers=3), T) == 3


def test_sequential_depth_of_a_function_that_ignores_its_input():
    w = torch.randn(3, 3, requires_grad=True)
    assert sequential_depth(lambda x: torch.zeros(1, 4, 3) @ w, 4, 3) == 0
    assert sequential_depth(lambda x: torch.zeros(1, 4, 3), 4, 3) == 0


# --------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("kind", LAYER_KINDS)
@pytest.mark.parametrize("T, d", [(1, 4), (7, 5), (32, 16)])
def test_layer_flops_match_torch_flop_counter(kind, T, d):
    assert count_flops(make_layer(kind, d), T) == layer_flops(kind, T, d)


def test_layer_flops_of_a_wider_kernel_and_batch():
    assert count_flops(make_layer("cnn", 4, kernel_size=5), 9) == layer_flops("cnn", 9, 4, k=5)
    assert count_flops(make_layer("rnn", 4), 9, batch=3) == 3 * layer_flops("rnn", 9, 4)


def test_attention_flops_are_quadratic_and_the_others_linear():
    d = 64
    for T in (64, 128, 1024):
        quadratic = layer_flops("self_attention", 2 * T, d) - 2 * layer_flops("self_attention", T, d)
        assert quadratic == 8 * T * T * d  # 4 (2T)^2 d - 2 * 4 T^2 d
        for kind in ("rnn", "gru", "cnn"):
            assert layer_flops(kind, 2 * T, d) == 2 * layer_flops(kind, T, d)
    # attention's T^2 d term equals the RNN's T d^2 term at T = d
    assert layer_flops("self_attention", d, d) - 6 * d**3 == layer_flops("rnn", d, d)


def test_layer_flops_rejects_unknown_kinds_and_sizes():
    with pytest.raises(ValueError, match="kind must be one of"):
        layer_flops("lstm", 4, 4)
    with pytest.raises(ValueError, match="T must be a positive int"):
        layer_flops("rnn", 0, 4)


# --------------------------------------------------------------------------- timing


@pytest.mark.threads(2)  # more than the function under test sets, so that restoring shows
def test_time_forward_and_sweep():
    layer = make_layer("self_attention", 4)
    t = time_forward(layer, 8, batch=1, repeats=2)
    assert isinstance(t, float) and t > 0
    n = torch.get_num_threads()
    times = time_sweep({"a": layer, "r": make_layer("rnn", 4)}, [4, 8], repeats=1, threads=1, progress=False)
    assert list(times) == ["a", "r"] and all(len(v) == 2 and min(v) > 0 for v in times.values())
    assert torch.get_num_threads() == n  # restored


def test_time_sweep_needs_models():
    with pytest.raises(TypeError, match="non-empty dict"):
        time_sweep({}, [4])
    with pytest.raises(ValueError, match="repeats must be a positive int"):
        time_forward(make_layer("rnn", 2), 4, repeats=0)
    with pytest.raises(ValueError, match="threads must be a positive int"):
        time_forward(make_layer("rnn", 2), 4, threads=0)
