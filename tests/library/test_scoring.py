"""Tests for attn_course.scoring: the four score functions and their cost model."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attn_course.scoring import AdditiveScore, GeneralScore, dot_score, scaled_dot_score, score_cost


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------- dot products

SHAPES = [  # (q batch, k batch, L, S, d)
    ((), (), 1, 1, 1),
    ((), (), 5, 7, 3),
    ((2,), (2,), 3, 4, 5),
    ((2, 3), (2, 3), 5, 2, 7),
    ((2, 3), (3,), 4, 6, 8),  # keys shared across the batch
    ((2, 1), (1, 3), 3, 3, 4),  # both broadcast
]


@pytest.mark.parametrize("qb, kb, L, S, d", SHAPES)
def test_dot_score_matches_einsum(qb, kb, L, S, d):
    q, k = randn(*qb, L, d, seed=1), randn(*kb, S, d, seed=2)
    expected = torch.einsum("...ld,...sd->...ls", q, k)
    out = dot_score(q, k)
    assert out.shape == torch.broadcast_shapes(qb, kb) + (L, S)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("qb, kb, L, S, d", SHAPES)
def test_scaled_dot_score_divides_by_sqrt_dk(qb, kb, L, S, d):
    q, k = randn(*qb, L, d, seed=3), randn(*kb, S, d, seed=4)
    torch.testing.assert_close(scaled_dot_score(q, k), dot_score(q, k) / math.sqrt(d))
    torch.testing.assert_close(scaled_dot_score(q, k, scale=0.3), dot_score(q, k) * 0.3)


def test_scaling_keeps_unit_variance():
    # The reason for the scale: q . k has variance d_k for unit-variance entries.
    d = 256
    q, k = randn(64, d, seed=5), randn(64, d, seed=6)
    assert dot_score(q, k).std().item() == pytest.approx(math.sqrt(d), rel=0.1)
    assert scaled_dot_score(q, k).std().item() == pytest.approx(1.0, rel=0.1)


# --------------------------------------------------------------------------- learned scores


def test_general_score_is_q_W_k():
    torch.manual_seed(0)
    score = GeneralScore(query_dim=5, key_dim=3)
    q, k = randn(2, 4, 5, seed=7), randn(2, 6, 3, seed=8)
    expected = torch.einsum("bld,de,bse->bls", q, score.W, k)
    out = score(q, k)
    assert out.shape == (2, 4, 6)
    torch.testing.assert_close(out, expected)


def test_general_score_with_identity_is_dot_score():
    score = GeneralScore(4, 4)
    with torch.no_grad():
        score.W.copy_(torch.eye(4))
    q, k = randn(3, 5, 4, seed=9), randn(3, 2, 4, seed=10)
    torch.testing.assert_close(score(q, k), dot_score(q, k))


def test_additive_score_matches_pairwise_loop():
    torch.manual_seed(0)
    score = AdditiveScore(query_dim=3, key_dim=5, hidden_dim=4)
    q, k = randn(2, 3, 3, seed=11), randn(2, 4, 5, seed=12)
    out = score(q, k)
    assert out.shape == (2, 3, 4)
    Wq, Wk, v = score.W_q.weight, score.W_k.weight, score.v.weight[0]  # (h, d_q), (h, d_k), (h,)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                expected = v @ torch.tanh(Wq @ q[b, i] + Wk @ k[b, j])
                torch.testing.assert_close(out[b, i, j], expected)


def test_learned_scores_broadcast_batch_dims():
    q, k = randn(2, 3, 4, 5, seed=13), randn(3, 6, 7, seed=14)  # keys shared over the first dim
    assert AdditiveScore(5, 7, 8)(q, k).shape == (2, 3, 4, 6)
    assert GeneralScore(5, 7)(q, k).shape == (2, 3, 4, 6)


def test_additive_score_gradcheck():
    torch.manual_seed(0)
    score = AdditiveScore(3, 2, 4).double()
    q = randn(2, 3, dtype=torch.float64, seed=15).requires_grad_()
    k = randn(3, 2, dtype=torch.float64, seed=16).requires_grad_()
    assert torch.autograd.gradcheck(score, (q, k))


def test_general_score_gradcheck():
    torch.manual_seed(0)
    score = GeneralScore(3, 2).double()
    q = randn(2, 3, dtype=torch.float64, seed=17).requires_grad_()
    k = randn(4, 2, dtype=torch.float64, seed=18).requires_grad_()
    assert torch.autograd.gradcheck(score, (q, k))


def test_inputs_not_mutated():
    q, k = randn(2, 3, 4, seed=19), randn(2, 5, 4, seed=20)
    q0, k0 = q.clone(), k.clone()
    scaled_dot_score(q, k)
    GeneralScore(4, 4)(q, k)
    AdditiveScore(4, 4, 3)(q, k)
    assert torch.equal(q, q0) and torch.equal(k, k0)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", [dot_score, scaled_dot_score])
def test_dot_scores_reject_mismatched_widths(fn):
    with pytest.raises(ValueError, match=r"k has shape \(2, 5, 7\); expected \(\.\.\., S, 8\)"):
        fn(randn(2, 4, 8), randn(2, 5, 7))


@pytest.mark.parametrize("fn", [dot_score, scaled_dot_score])
def test_dot_scores_reject_1d(fn):
    with pytest.raises(ValueError, match=r"q has shape \(8,\); expected \(\.\.\., L, d_k\)"):
        fn(randn(8), randn(5, 8))


def test_dot_score_rejects_non_broadcasting_batch():
    with pytest.raises(ValueError, match=r"k has shape \(3, 5, 8\).*batch.*\(2,\)"):
        dot_score(randn(2, 4, 8), randn(3, 5, 8))


def test_dot_score_type_errors():
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        dot_score([[1.0]], randn(1, 1))
    with pytest.raises(TypeError, match="k must be a floating-point tensor"):
        dot_score(randn(2, 3), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="k has dtype torch.float64"):
        dot_score(randn(2, 3), randn(2, 3, dtype=torch.float64))


def test_learned_scores_check_configured_widths():
    with pytest.raises(ValueError, match=r"q has shape \(2, 4, 6\); expected \(\.\.\., L, 5\)"):
        GeneralScore(5, 3)(randn(2, 4, 6), randn(2, 2, 3))
    with pytest.raises(ValueError, match=r"k has shape \(2, 2, 4\); expected \(\.\.\., S, 3\)"):
        AdditiveScore(5, 3, 8)(randn(2, 4, 5), randn(2, 2, 4))


@pytest.mark.parametrize("args", [(0, 3), (3, -1), (2.0, 3)])
def test_learned_scores_reject_bad_dims(args):
    with pytest.raises(ValueError, match="must be a positive int"):
        GeneralScore(*args)
    with pytest.raises(ValueError, match="must be a positive int"):
        AdditiveScore(*args, 4)


# --------------------------------------------------------------------------- cost model


def _matmul_flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


@pytest.mark.parametrize("L, S, d_q, d_k, h", [(3, 5, 4, 4, 6), (7, 2, 3, 3, 5)])
def test_score_cost_matches_counted_flops_and_params(L, S, d_q, d_k, h):
    q, k = randn(L, d_q), randn(S, d_k)
    # FlopCounterMode counts only matrix products (2 per multiply-add); add the elementwise part.
    assert score_cost("dot", L, S, d_q, d_k)["flops"] == _matmul_flops(dot_score, q, k)
    assert score_cost("scaled_dot", L, S, d_q, d_k)["flops"] == _matmul_flops(scaled_dot_score, q, k) + L * S
    general = GeneralScore(d_q, d_k)
    assert score_cost("general", L, S, d_q, d_k) == {
        "flops": _matmul_flops(general, q, k),
        "params": sum(p.numel() for p in general.parameters()),
    }
    additive = AdditiveScore(d_q, d_k, h)
    assert score_cost("additive", L, S, d_q, d_k, hidden=h) == {
        "flops": _matmul_flops(additive, q, k) + 2 * L * S * h,  # + broadcast add and tanh
        "params": sum(p.numel() for p in additive.parameters()),
    }
    assert score_cost("dot", L, S, d_q, d_k)["params"] == 0


def test_score_cost_general_with_different_widths():
    cost = score_cost("general", L=4, S=6, d_q=5, d_k=3)
    assert cost == {"flops": 2 * 4 * 5 * 3 + 2 * 4 * 6 * 3, "params": 15}


def test_score_cost_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        score_cost("bilinear", 2, 2, 2, 2)
    with pytest.raises(ValueError, match="d_q == d_k"):
        score_cost("dot", 2, 2, 3, 4)
    with pytest.raises(ValueError, match="hidden"):
        score_cost("additive", 2, 2, 3, 4)
    with pytest.raises(ValueError, match="L must be a positive int"):
        score_cost("dot", 0, 2, 3, 3)
