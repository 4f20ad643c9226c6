"""Tests for attn_course.combine: merging a context vector with the decoder state."""

from __future__ import annotations

import pytest
import torch

from attn_course.combine import GatedCombine, GRUInputCombine, LuongCombine


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


C, E, HS, OUT = 6, 3, 5, 4  # context, input (embedding), state and output widths


# --------------------------------------------------------------------------- shapes and formulas


@pytest.mark.parametrize("lead", [(2,), (2, 7), (1,), (2, 3, 4)])
def test_luong_shapes_and_formula(lead):
    torch.manual_seed(0)
    m = LuongCombine(C, HS, OUT)
    c, h = randn(*lead, C, seed=1), randn(*lead, HS, seed=2)
    out = m(c, h)
    assert out.shape == (*lead, OUT) and m.out_dim == OUT
    expected = torch.tanh(torch.cat([c, h], -1) @ m.W_c.weight.T)
    torch.testing.assert_close(out, expected)
    assert out.abs().max() < 1  # tanh


@pytest.mark.parametrize("bias", [False, True])
def test_luong_param_count(bias):
    assert n_params(LuongCombine(C, HS, OUT, bias=bias)) == OUT * (C + HS) + (OUT if bias else 0)


@pytest.mark.parametrize("lead", [(2,), (2, 7), (3, 1, 2)])
def test_gated_shapes_formula_and_param_count(lead):
    torch.manual_seed(0)
    m = GatedCombine(HS, HS)
    c, h = randn(*lead, HS, seed=3), randn(*lead, HS, seed=4)
    out = m(c, h)
    assert out.shape == (*lead, HS) and m.out_dim == HS
    g = torch.sigmoid(torch.cat([c, h], -1) @ m.W_g.weight.T + m.W_g.bias)
    torch.testing.assert_close(m.gate(c, h), g)
    torch.testing.assert_close(out, g * c + (1 - g) * h)
    assert n_params(m) == HS * 2 * HS + HS


def test_gated_output_lies_between_context_and_state():
    torch.manual_seed(0)
    m = GatedCombine(16, 16)
    c, h = randn(64, 16, seed=5) * 3, randn(64, 16, seed=6) * 3
    g = m.gate(c, h)
    assert (g > 0).all() and (g < 1).all()
    out = m(c, h)
    eps = 1e-6
    assert (out >= torch.minimum(c, h) - eps).all() and (out <= torch.maximum(c, h) + eps).all()


def test_gated_extremes_copy_context_or_state():
    m = GatedCombine(4, 4)
    c, h = randn(3, 4, seed=7), randn(3, 4, seed=8)
    with torch.no_grad():
        m.W_g.weight.zero_()
        m.W_g.bias.fill_(30.0)  # g ~ 1
    torch.testing.assert_close(m(c, h), c)
    with torch.no_grad():
        m.W_g.bias.fill_(-30.0)  # g ~ 0
    torch.testing.assert_close(m(c, h), h)


def test_gru_one_step_matches_grucell_on_concatenation():
    torch.manual_seed(0)
    m = GRUInputCombine(C, E, HS)
    c, s, y = randn(2, C, seed=9), randn(2, HS, seed=10), randn(2, E, seed=11)
    out = m(c, s, y)
    assert out.shape == (2, HS) and m.out_dim == HS
    torch.testing.assert_close(out, m.cell(torch.cat([y, c], -1), s))


def test_gru_sequence_form_equals_repeated_steps():
    torch.manual_seed(0)
    m = GRUInputCombine(C, E, HS)
    B, T = 2, 5
    c, y, s0 = randn(B, T, C, seed=12), randn(B, T, E, seed=13), randn(B, HS, seed=14)
    states = m(c, s0, y)
    assert states.shape == (B, T, HS)
    s = s0
    for t in range(T):
        s = m(c[:, t], s, y[:, t])
        torch.testing.assert_close(states[:, t], s)
    assert m(c[:, :0], s0, y[:, :0]).shape == (B, 0, HS)


def test_gru_param_count():
    m = GRUInputCombine(C, E, HS)
    assert n_params(m) == 3 * HS * (E + C) + 3 * HS * HS + 6 * HS


# --------------------------------------------------------------------------- gradients


def make_all():
    torch.manual_seed(0)
    return [
        (LuongCombine(C, HS, OUT, bias=True), (randn(2, C, seed=1), randn(2, HS, seed=2))),
        (GatedCombine(HS, HS), (randn(2, HS, seed=3), randn(2, HS, seed=4))),
        (GRUInputCombine(C, E, HS), (randn(2, C, seed=5), randn(2, HS, seed=6), randn(2, E, seed=7))),
    ]


@pytest.mark.parametrize("index", range(3))
def test_gradients_reach_every_parameter_and_input(index):
    module, inputs = make_all()[index]
    inputs = [x.requires_grad_(True) for x in inputs]
    module(*inputs).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for x in inputs:
        assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("index", range(3))
def test_float64_works(index):
    module, inputs = make_all()[index]
    module = module.double()
    assert module(*[x.double() for x in inputs]).dtype == torch.float64


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "make, args, match",
    [
        (lambda: LuongCombine(C, HS, OUT), (randn(2, C + 1), randn(2, HS)), r"context has shape \(2, 7\)"),
        (lambda: LuongCombine(C, HS, OUT), (randn(2, C), randn(2, HS + 1)), r"state has shape \(2, 6\)"),
        (
            lambda: LuongCombine(C, HS, OUT),
            (randn(2, 3, C), randn(2, HS)),
            r"state has shape \(2, 5\); expected \(2, 3, 5\)",
        ),
        (lambda: GatedCombine(HS, HS), (randn(2, HS), randn(3, HS)), r"state has shape \(3, 5\)"),
        (
            lambda: GRUInputCombine(C, E, HS),
            (randn(2, C), randn(2, HS), randn(2, E + 1)),
            r"prev_input has shape",
        ),
        (
            lambda: GRUInputCombine(C, E, HS),
            (randn(2, 4, C), randn(2, 4, HS), randn(2, 4, E)),
            r"state has shape \(2, 4, 5\)",
        ),
        (
            lambda: GRUInputCombine(C, E, HS),
            (randn(2, C), randn(3, HS), randn(2, E)),
            r"state has shape \(3, 5\)",
        ),
        (lambda: GRUInputCombine(C, E, HS), (randn(C), randn(HS), randn(E)), r"context has shape \(6,\)"),
        (
            lambda: GRUInputCombine(C, E, HS),
            (randn(2, 3, C), randn(2, HS), randn(2, 4, E)),
            r"prev_input has shape",
        ),
        (
            lambda: GRUInputCombine(C, E, HS),
            (randn(1, 2, 3, C), randn(1, HS), randn(1, 2, 3, E)),
            r"context has shape",
        ),
    ],
)
def test_shape_errors_name_the_argument(make, args, match):
    with pytest.raises(ValueError, match=match):
        make()(*args)


@pytest.mark.parametrize(
    "make, args, match",
    [
        (lambda: LuongCombine(C, HS, OUT), ([0.0] * C, randn(2, HS)), "context must be a torch.Tensor"),
        (lambda: LuongCombine(C, HS, OUT), (torch.ones(2, C, dtype=torch.long), randn(2, HS)), "floating"),
        (lambda: GatedCombine(HS, HS), (randn(2, HS), randn(2, HS, dtype=torch.float64)), "state has dtype"),
        (
            lambda: GRUInputCombine(C, E, HS),
            (randn(2, C), randn(2, HS, dtype=torch.float64), randn(2, E)),
            "state has dtype",
        ),
    ],
)
def test_type_errors(make, args, match):
    with pytest.raises(TypeError, match=match):
        make()(*args)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LuongCombine(0, HS, OUT), "context_dim must be a positive int"),
        (lambda: LuongCombine(C, HS, 2.5), "out_dim must be a positive int"),
        (lambda: GRUInputCombine(C, True, HS), "input_dim must be a positive int"),
        (lambda: GatedCombine(C, HS), "context_dim .* must equal state_dim"),
    ],
)
def test_constructor_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
