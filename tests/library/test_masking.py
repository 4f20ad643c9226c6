"""Tests for attn_course.masking: masked_softmax, naive_softmax, causal_mask, padding_mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attn_course.masking import causal_mask, masked_softmax, naive_softmax, padding_mask


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rand_mask(*shape, p=0.6, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p


def reference_softmax(scores, mask, dim=-1):
    """torch.softmax with masked entries at -inf (NaN on fully masked rows)."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=dim)


# --------------------------------------------------------------------------- masked_softmax


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 4, 9)])
@pytest.mark.parametrize("dim", [-1, 0])
def test_no_mask_matches_torch_softmax(shape, dim):
    x = randn(*shape, seed=1) * 5
    torch.testing.assert_close(masked_softmax(x, dim=dim), torch.softmax(x, dim=dim))


@pytest.mark.parametrize(
    "scores_shape, mask_shape",
    [
        ((4, 6), (4, 6)),
        ((2, 3, 4, 6), (2, 3, 4, 6)),
        ((2, 3, 4, 6), (4, 6)),  # same mask for every batch and head
        ((2, 3, 4, 6), (2, 1, 1, 6)),  # padding-style, per batch element
        ((2, 3, 4, 6), (1, 3, 4, 1)),  # per head and query
        ((5, 7), (7,)),  # per key
    ],
)
def test_mask_matches_torch_on_rows_with_an_allowed_key(scores_shape, mask_shape):
    scores, mask = randn(*scores_shape, seed=2), rand_mask(*mask_shape, seed=3)
    out = masked_softmax(scores, mask)
    full_mask = mask.expand(scores_shape)
    live = full_mask.any(-1)  # rows with at least one allowed key
    assert live.any()
    torch.testing.assert_close(out[live], reference_softmax(scores, full_mask)[live])
    assert torch.all(out[~full_mask] == 0)  # masked positions get exactly zero


def test_mask_along_other_dim():
    scores, mask = randn(4, 5, seed=4), rand_mask(4, 5, p=0.8, seed=5)
    mask[0] = True  # every column has an allowed row
    torch.testing.assert_close(masked_softmax(scores, mask, dim=0), reference_softmax(scores, mask, dim=0))


def test_fully_masked_rows_are_zero_not_nan():
    scores = randn(2, 3, 4, seed=6)
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[0, 1] = False
    mask[1] = False
    out = masked_softmax(scores, mask)
    assert not out.isnan().any()
    assert torch.all(out[0, 1] == 0) and torch.all(out[1] == 0)
    torch.testing.assert_close(out[0, 0].sum(), torch.tensor(1.0))


def test_all_neg_inf_row_is_zero():
    scores = torch.tensor([[float("-inf")] * 3, [0.0, float("-inf"), 1.0]])
    out = masked_softmax(scores)
    assert torch.all(out[0] == 0)
    torch.testing.assert_close(out[1], torch.softmax(scores[1], -1))


def test_large_logits_float32_stable_where_naive_is_not():
    scores = torch.tensor([[1e4, 1e4 - 1.0, 0.0], [-1e4, -1e4, -1e4]])
    out = masked_softmax(scores)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], torch.softmax(torch.tensor([1.0, 0.0, -1e4]), -1))
    torch.testing.assert_close(out[1], torch.full((3,), 1 / 3))
    naive = naive_softmax(scores)
    assert naive[0].isnan().any()  # exp(1e4) = inf, inf / inf = nan
    assert naive[1].isnan().all()  # exp(-1e4) = 0, 0 / 0 = nan


def test_naive_softmax_agrees_on_small_logits():
    x = randn(3, 4, 5, seed=7)
    torch.testing.assert_close(naive_softmax(x), torch.softmax(x, -1))
    torch.testing.assert_close(naive_softmax(x, dim=1), masked_softmax(x, dim=1))


def test_naive_softmax_overflow_threshold_float32():
    # exp overflows float32 just above 88.7: the stable version does not care.
    x = torch.tensor([89.0, 0.0])
    assert torch.isinf(torch.exp(x[0]))
    assert naive_softmax(x).isnan().any()
    torch.testing.assert_close(masked_softmax(x), torch.softmax(x.double(), -1).float())


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_low_precision_keeps_dtype_and_accuracy(dtype, tol):
    scores, mask = randn(3, 4, 16, seed=8) * 4, rand_mask(3, 4, 16, seed=9)
    mask[..., 0] = True
    out = masked_softmax(scores.to(dtype), mask)
    assert out.dtype == dtype
    expected = reference_softmax(scores.to(dtype).double(), mask)
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=0)
    assert torch.all(out[~mask] == 0)


def test_float16_large_logits():
    # exp overflows float16 above ~11; the naive version fails, ours computes in float32.
    scores = torch.tensor([6e4, 6e4 - 1, 12.0, -6e4], dtype=torch.float16)
    out = masked_softmax(scores)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), torch.softmax(scores.float(), -1), atol=1e-3, rtol=0)
    assert naive_softmax(scores).isnan().any()


def test_float64_stays_float64():
    assert masked_softmax(randn(2, 3, dtype=torch.float64)).dtype == torch.float64


def test_inputs_not_mutated():
    scores, mask = randn(2, 3, 4, seed=10), rand_mask(2, 3, 4, seed=11)
    scores_before, mask_before = scores.clone(), mask.clone()
    masked_softmax(scores, mask)
    masked_softmax(scores.half(), mask)
    naive_softmax(scores)
    assert torch.equal(scores, scores_before) and torch.equal(mask, mask_before)


def test_gradcheck_with_fully_masked_row():
    scores = randn(3, 4, dtype=torch.float64, seed=12).requires_grad_()
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda s: masked_softmax(s, mask), (scores,))
    masked_softmax(scores, mask).sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert torch.all(scores.grad[~mask] == 0)


def test_gradcheck_without_mask_dim0():
    scores = randn(3, 2, dtype=torch.float64, seed=13).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: masked_softmax(s, dim=0), (scores,))


def test_mask_errors():
    scores = randn(2, 4, 6)
    with pytest.raises(ValueError, match=r"mask has shape \(5, 6\); expected .*broadcastable to \(2, 4, 6\)"):
        masked_softmax(scores, torch.ones(5, 6, dtype=torch.bool))
    # A mask that would *grow* the scores (here a (B, 1, 1, S) mask against 3-D scores) is refused.
    with pytest.raises(ValueError, match=r"mask has shape \(2, 1, 1, 6\)"):
        masked_softmax(scores, torch.ones(2, 1, 1, 6, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a boolean tensor"):
        masked_softmax(scores, torch.ones(4, 6))
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        masked_softmax(scores, [[True] * 6] * 4)


def test_scores_type_errors():
    with pytest.raises(TypeError, match="scores must be a floating-point tensor"):
        masked_softmax(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="scores must be a torch.Tensor"):
        masked_softmax([1.0, 2.0])


# --------------------------------------------------------------------------- causal_mask


@pytest.mark.parametrize("L, S", [(1, 1), (4, 4), (3, 5), (5, 3), (1, 6)])
def test_causal_mask_is_top_left_tril(L, S):
    m = causal_mask(L, S)
    assert m.dtype == torch.bool and m.shape == (L, S)
    assert torch.equal(m, torch.ones(L, S, dtype=torch.bool).tril())


def test_causal_mask_square_default():
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    assert causal_mask(3, device="cpu").device.type == "cpu"


@pytest.mark.parametrize("L, S", [(3, 5), (5, 3), (4, 4)])
def test_causal_mask_matches_torch_is_causal(L, S):
    q, k, v = randn(2, L, 8, seed=14), randn(2, S, 8, seed=15), randn(2, S, 8, seed=16)
    ours = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(L, S))
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, theirs)


def test_causal_mask_lower_right():
    assert torch.equal(
        causal_mask(2, 4, align="lower_right"),
        torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool),
    )
    m = causal_mask(4, 2, align="lower_right")
    assert not m[:2].any() and torch.equal(m[2:], torch.tensor([[1, 0], [1, 1]], dtype=torch.bool))
    assert torch.equal(causal_mask(3, 3, align="lower_right"), causal_mask(3, 3))


@pytest.mark.parametrize("L, S", [(3, 5), (4, 4)])
def test_causal_mask_lower_right_matches_torch_bias(L, S):
    bias = pytest.importorskip("torch.nn.attention.bias")
    q, k, v = randn(1, L, 8, seed=17), randn(1, S, 8, seed=18), randn(1, S, 8, seed=19)
    ours = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(L, S, align="lower_right"))
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.causal_lower_right(L, S))
    torch.testing.assert_close(ours, theirs)


def test_causal_mask_errors():
    with pytest.raises(ValueError, match="L must be a positive int"):
        causal_mask(0)
    with pytest.raises(ValueError, match="S must be a positive int"):
        causal_mask(3, 2.5)
    with pytest.raises(ValueError, match="align must be"):
        causal_mask(3, align="bottom_right")


# --------------------------------------------------------------------------- padding_mask


def test_padding_mask_values_and_shape():
    m = padding_mask(torch.tensor([2, 0, 4]), max_len=4)
    assert m.shape == (3, 1, 1, 4) and m.dtype == torch.bool
    expected = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m[:, 0, 0], expected)


def test_padding_mask_accepts_list_and_defaults_max_len():
    assert torch.equal(padding_mask([1, 3]), padding_mask(torch.tensor([1, 3]), 3))
    assert padding_mask([1, 3]).shape == (2, 1, 1, 3)


def test_padding_mask_broadcasts_against_multihead_scores():
    B, H, L, S = 3, 2, 4, 5
    lengths = torch.tensor([5, 2, 1])
    w = masked_softmax(randn(B, H, L, S, seed=20), padding_mask(lengths, S))
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(w[b, ..., n:] == 0)
        torch.testing.assert_close(w[b].sum(-1), torch.ones(H, L))
    # single-head scores (B, L, S): take [:, 0]
    w3 = masked_softmax(randn(B, L, S, seed=21), padding_mask(lengths, S)[:, 0])
    assert torch.all(w3[1, :, 2:] == 0)


def test_padding_mask_does_not_mutate_lengths():
    lengths = torch.tensor([3, 1])
    padding_mask(lengths, 4)
    assert torch.equal(lengths, torch.tensor([3, 1]))


def test_padding_mask_errors():
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, max_len=3\]"):
        padding_mask([1, 4], 3)
    with pytest.raises(ValueError, match=r"lengths must lie"):
        padding_mask([-1, 2], 3)
    with pytest.raises(ValueError, match=r"lengths has shape \(2, 1\); expected \(B,\)"):
        padding_mask(torch.tensor([[1], [2]]), 3)
    with pytest.raises(TypeError, match="lengths must be an integer tensor"):
        padding_mask(torch.tensor([1.0, 2.0]), 3)


# --------------------------------------------------------------------------- finite fill value


def test_finite_masked_softmax_equals_masked_softmax_on_rows_with_an_allowed_key():
    from attn_course.masking import finite_masked_softmax

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 4, 5, generator=g) * 10  # (B, H, L, S)
    mask = torch.rand(2, 1, 4, 5, generator=g) > 0.4
    mask[..., 0] = True  # every row keeps key 0
    before = scores.clone()
    for fill in (None, -1e9):
        torch.testing.assert_close(finite_masked_softmax(scores, mask, fill=fill), masked_softmax(scores, mask))
    assert torch.equal(scores, before)  # not modified in place
    torch.testing.assert_close(finite_masked_softmax(scores), torch.softmax(scores, -1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_finite_masked_softmax_gives_a_fully_masked_row_uniform_weights(dtype):
    from attn_course.masking import finite_masked_softmax

    scores = torch.randn(3, 6).to(dtype)  # (L, S)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1] = False  # row 1 may attend to nothing
    w = finite_masked_softmax(scores, mask)
    assert not w.isnan().any()
    torch.testing.assert_close(w[1], torch.full((6,), 1 / 6, dtype=dtype))  # uniform, not zeros
    assert torch.all(masked_softmax(scores, mask)[1] == 0)


def test_finite_masked_softmax_checks_its_inputs():
    from attn_course.masking import finite_masked_softmax

    with pytest.raises(TypeError):
        finite_masked_softmax(torch.arange(4), None)
    with pytest.raises((TypeError, ValueError)):
        finite_masked_softmax(torch.randn(2, 3), torch.ones(2, 3))  # not a boolean mask
