"""Tests for attn_course.attention, mostly against torch.nn.functional.scaled_dot_product_attention."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from attn_course.attention import (
    attention_loop,
    attention_weights,
    context_vector,
    scaled_dot_product_attention,
)
from attn_course.masking import causal_mask, padding_mask


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rand_mask(*shape, p=0.6, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p


def qkv(qb, kb, vb, L, S, d_k, d_v, dtype=torch.float32, seed=0):
    return (
        randn(*qb, L, d_k, dtype=dtype, seed=seed),
        randn(*kb, S, d_k, dtype=dtype, seed=seed + 1),
        randn(*vb, S, d_v, dtype=dtype, seed=seed + 2),
    )


def assert_matches_torch(query, key, value, mask=None, is_causal=False, scale=None, atol=None, rtol=None):
    """Compare with torch on rows that have an allowed key; fully masked rows must be exactly zero."""
    out, weights = scaled_dot_product_attention(query, key, value, mask, is_causal, scale)
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2])
    L, S = query.shape[-2], key.shape[-2]
    effective = torch.ones(*batch, L, S, dtype=torch.bool)  # (..., L, S)
    if mask is not None:
        effective = effective & mask
    if is_causal:
        effective = effective & causal_mask(L, S)
    # Pass torch the combined mask (it also ANDs is_causal with attn_mask in recent versions, but
    # older ones refuse both), expanded to the output's batch shape.
    out_batch = torch.broadcast_shapes(batch, value.shape[:-2])
    expected = F.scaled_dot_product_attention(
        query.expand(*out_batch, L, query.shape[-1]),
        key.expand(*out_batch, S, key.shape[-1]),
        value.expand(*out_batch, S, value.shape[-1]),
        attn_mask=effective.expand(*out_batch, L, S),
        scale=scale,
    )
    assert out.shape == (*out_batch, L, value.shape[-1]) and out.dtype == query.dtype
    assert weights.shape == (*batch, L, S) and weights.dtype == query.dtype
    live = effective.expand(*out_batch, L, S).any(-1)  # (..., L)
    torch.testing.assert_close(out[live], expected[live], atol=atol, rtol=rtol)
    assert torch.all(out[~live] == 0)
    assert torch.all(weights[~effective] == 0)
    return out, weights


# --------------------------------------------------------------------------- agreement with torch

CASES = [  # (query batch, key batch, value batch, L, S, d_k, d_v)
    ((), (), (), 1, 1, 1, 1),
    ((), (), (), 5, 7, 3, 2),
    ((3,), (3,), (3,), 4, 4, 8, 8),
    ((2, 3), (2, 3), (2, 3), 5, 9, 7, 5),  # L != S, d_k != d_v, odd sizes
    ((2, 3), (2, 3), (2, 3), 9, 5, 4, 6),  # L > S
    ((2, 4), (2, 1), (2, 1), 3, 6, 8, 8),  # one key/value head shared by all query heads
    ((2, 3), (3,), (3,), 4, 5, 6, 3),  # keys/values shared over the batch
]


@pytest.mark.parametrize("qb, kb, vb, L, S, d_k, d_v", CASES)
def test_no_mask(qb, kb, vb, L, S, d_k, d_v):
    assert_matches_torch(*qkv(qb, kb, vb, L, S, d_k, d_v, seed=1))


@pytest.mark.parametrize("qb, kb, vb, L, S, d_k, d_v", CASES)
def test_is_causal(qb, kb, vb, L, S, d_k, d_v):
    q, k, v = qkv(qb, kb, vb, L, S, d_k, d_v, seed=2)
    out, _ = assert_matches_torch(q, k, v, is_causal=True)
    # and against torch's own is_causal (upper-left aligned when L != S), not just our mask
    batch = torch.broadcast_shapes(qb, kb, vb)
    expected = F.scaled_dot_product_attention(
        q.expand(*batch, L, d_k), k.expand(*batch, S, d_k), v.expand(*batch, S, d_v), is_causal=True
    )
    live = causal_mask(L, S).any(-1)  # with L > S every row still sees key 0
    torch.testing.assert_close(out[..., live, :], expected[..., live, :])


@pytest.mark.parametrize(
    "mask_shape",
    [
        (4, 6),  # same for every batch element and head
        (6,),  # per key only
        (2, 1, 4, 6),  # per batch element, shared by heads
        (1, 3, 4, 6),  # per head, shared by batch elements
        (2, 3, 4, 6),  # full
        (2, 3, 4, 1),  # whole rows on/off
    ],
)
@pytest.mark.parametrize("is_causal", [False, True])
def test_broadcast_masks(mask_shape, is_causal):
    q, k, v = qkv((2, 3), (2, 3), (2, 3), 4, 6, 5, 7, seed=3)
    mask = rand_mask(*mask_shape, seed=4)
    assert_matches_torch(q, k, v, mask=mask, is_causal=is_causal)


def test_padding_mask_with_multihead_shapes():
    q, k, v = qkv((3, 2), (3, 2), (3, 2), 4, 5, 8, 8, seed=5)
    assert_matches_torch(q, k, v, mask=padding_mask([5, 3, 1], 5), is_causal=True)


@pytest.mark.parametrize("scale", [0.1, 1.0, 2.5])
def test_custom_scale(scale):
    q, k, v = qkv((2,), (2,), (2,), 3, 4, 6, 5, seed=6)
    assert_matches_torch(q, k, v, mask=rand_mask(3, 4, seed=7), scale=scale)


def test_weights_are_the_softmax_of_scaled_scores():
    q, k, v = qkv((2,), (2,), (2,), 3, 4, 16, 5, seed=8)
    _, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(weights, torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1))


def test_building_blocks_compose_to_sdpa():
    q, k, v = qkv((2, 3), (2, 3), (2, 3), 4, 6, 5, 7, seed=9)
    mask = rand_mask(2, 1, 4, 6, seed=10)
    out, weights = scaled_dot_product_attention(q, k, v, mask, is_causal=True, scale=0.7)
    w = attention_weights(q, k, mask, 0.7, is_causal=True)
    torch.testing.assert_close(w, weights)
    torch.testing.assert_close(context_vector(w, v), out)


# --------------------------------------------------------------------------- fully masked rows


def test_fully_masked_rows_give_zeros_and_finite_gradients():
    q, k, v = (t.requires_grad_() for t in qkv((2,), (2,), (2,), 3, 4, 5, 6, seed=11))
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[0, 1] = False  # one row
    mask[1] = False  # a whole batch element
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert not out.isnan().any() and not weights.isnan().any()
    assert torch.all(out[0, 1] == 0) and torch.all(out[1] == 0)
    assert torch.all(weights[0, 1] == 0) and torch.all(weights[1] == 0)
    (out.sum() + weights.sum()).backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.all(q.grad[1] == 0)


def test_lower_right_causal_with_l_greater_than_s_masks_first_rows():
    q, k, v = qkv((), (), (), 5, 3, 4, 4, seed=12)
    out, weights = scaled_dot_product_attention(q, k, v, causal_mask(5, 3, align="lower_right"))
    assert torch.all(out[:2] == 0) and torch.all(weights[:2] == 0)
    torch.testing.assert_close(weights[2:].sum(-1), torch.ones(3))


# --------------------------------------------------------------------------- precision


def test_large_logits_float32():
    q, k, v = qkv((2,), (2,), (2,), 4, 5, 8, 3, seed=13)
    q = q * 300  # scores of order 1e3-1e4: naive exp would overflow
    out, weights = scaled_dot_product_attention(q, k, v)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_low_precision(dtype, tol):
    q, k, v = qkv((2, 3), (2, 3), (2, 3), 5, 7, 8, 4, seed=14)
    mask = rand_mask(5, 7, seed=15)
    mask[:, 0] = True
    out, weights = scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask, is_causal=True)
    assert out.dtype == dtype and weights.dtype == dtype
    ref, ref_w = scaled_dot_product_attention(q, k, v, mask, is_causal=True)
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(weights.float(), ref_w, atol=tol, rtol=tol)
    assert_matches_torch(q.to(dtype), k.to(dtype), v.to(dtype), mask, True, atol=tol, rtol=tol)


# --------------------------------------------------------------------------- naive twin, context_vector


@pytest.mark.parametrize("qb, kb, vb, L, S, d_k, d_v", CASES)
def test_attention_loop_matches_vectorised(qb, kb, vb, L, S, d_k, d_v):
    q, k, v = qkv(qb, kb, vb, L, S, d_k, d_v, seed=16)
    mask = rand_mask(L, S, seed=17)
    for m in (None, mask):
        out, weights = scaled_dot_product_attention(q, k, v, m)
        out_loop, weights_loop = attention_loop(q, k, v, m)
        torch.testing.assert_close(out_loop, out)
        torch.testing.assert_close(weights_loop, weights)


def test_attention_loop_with_broadcast_mask_and_empty_rows():
    q, k, v = qkv((2, 3), (2, 3), (2, 3), 4, 5, 6, 3, seed=18)
    mask = rand_mask(2, 1, 4, 5, p=0.3, seed=19)
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(attention_loop(q, k, v, mask), (out, weights))


def test_context_vector_is_weighted_sum():
    w = torch.softmax(randn(2, 3, 4, seed=20), -1)
    values = randn(2, 4, 5, seed=21)
    expected = torch.einsum("bls,bsd->bld", w, values)
    torch.testing.assert_close(context_vector(w, values), expected)
    one_hot = torch.zeros(1, 4)
    one_hot[0, 2] = 1.0
    torch.testing.assert_close(context_vector(one_hot, values[0]), values[0, 2:3])  # picks value 2


def test_context_vector_errors():
    with pytest.raises(ValueError, match=r"values has shape \(2, 5, 3\); expected \(\.\.\., 4, d_v\)"):
        context_vector(randn(2, 3, 4), randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"values has shape \(3, 4, 2\).*broadcast.*\(2,\)"):
        context_vector(randn(2, 3, 4), randn(3, 4, 2))
    with pytest.raises(ValueError, match=r"weights has shape \(4,\)"):
        context_vector(randn(4), randn(4, 2))
    with pytest.raises(TypeError, match="values must be a torch.Tensor"):
        context_vector(randn(2, 3), [[1.0]])


# --------------------------------------------------------------------------- errors

Q, K, V = qkv((2, 3), (2, 3), (2, 3), 4, 6, 8, 5)


@pytest.mark.parametrize(
    "args, name, shape",
    [
        ((Q, K[..., :7], V), "key", "(2, 3, 6, 7)"),  # key's d_k != query's
        ((Q, K, V[..., :5, :]), "value", "(2, 3, 5, 5)"),  # value's S != key's S
        ((Q, K.expand(2, 3, 6, 8)[:1].expand(4, 3, 6, 8), V), "key", "(4, 3, 6, 8)"),  # batch mismatch
        ((Q, K, V[:1].expand(5, 3, 6, 5)), "value", "(5, 3, 6, 5)"),  # value batch mismatch
        ((Q[0, 0, 0], K, V), "query", "(8,)"),  # too few dims
        ((Q, K[0, 0, 0], V), "key", "(8,)"),
        ((Q, K, V[0, 0, 0]), "value", "(5,)"),
    ],
)
def test_shape_errors_name_argument_and_shape(args, name, shape):
    with pytest.raises(ValueError) as info:
        scaled_dot_product_attention(*args)
    message = str(info.value)
    assert message.startswith(f"{name} has shape {shape}; expected"), message
    with pytest.raises(ValueError, match=rf"^{name} has shape"):
        attention_loop(*args)


@pytest.mark.parametrize("mask_shape", [(5, 6), (3, 1, 4, 6), (1, 2, 3, 4, 6)])
def test_mask_shape_errors(mask_shape):
    mask = torch.ones(mask_shape, dtype=torch.bool)
    expected = r"^mask has shape \(" + ", ".join(map(str, mask_shape)) + r"\); expected .*\(2, 3, 4, 6\)"
    with pytest.raises(ValueError, match=expected):
        scaled_dot_product_attention(Q, K, V, mask)
    with pytest.raises(ValueError, match=expected):
        scaled_dot_product_attention(Q, K, V, mask, is_causal=True)


def test_type_errors():
    with pytest.raises(TypeError, match="query must be a torch.Tensor"):
        scaled_dot_product_attention(Q.numpy(), K, V)
    with pytest.raises(TypeError, match="value must be a torch.Tensor"):
        scaled_dot_product_attention(Q, K, None)
    with pytest.raises(TypeError, match="key must be a floating-point tensor"):
        scaled_dot_product_attention(Q, K.long(), V)
    with pytest.raises(TypeError, match="value has dtype torch.float64"):
        scaled_dot_product_attention(Q, K, V.double())
    with pytest.raises(TypeError, match="mask must be a boolean tensor"):
        scaled_dot_product_attention(Q, K, V, torch.zeros(4, 6))


def test_inputs_not_mutated():
    q, k, v = qkv((2,), (2,), (2,), 3, 4, 5, 6, seed=22)
    mask = rand_mask(3, 4, seed=23)
    before = [t.clone() for t in (q, k, v, mask)]
    scaled_dot_product_attention(q, k, v, mask, is_causal=True, scale=0.5)
    attention_loop(q, k, v, mask)
    scaled_dot_product_attention(q.half(), k.half(), v.half(), mask)
    for t, t0 in zip((q, k, v, mask), before, strict=True):
        assert torch.equal(t, t0)


# --------------------------------------------------------------------------- gradients


def test_gradcheck():
    q, k, v = (t.requires_grad_() for t in qkv((2,), (2,), (2,), 3, 4, 2, 3, dtype=torch.float64, seed=24))
    mask = rand_mask(2, 3, 4, seed=25)
    mask[0, 0] = False  # include a fully masked row

    def f(q, k, v):
        return scaled_dot_product_attention(q, k, v, mask, is_causal=True, scale=0.9)

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_gradients_match_torch():
    q, k, v = (t.requires_grad_() for t in qkv((2,), (2,), (2,), 3, 5, 4, 3, dtype=torch.float64, seed=26))
    mask = rand_mask(3, 5, p=0.8, seed=27)
    mask[:, 0] = True
    (scaled_dot_product_attention(q, k, v, mask)[0] ** 2).sum().backward()
    ours = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    (F.scaled_dot_product_attention(q, k, v, attn_mask=mask) ** 2).sum().backward()
    for g, t in zip(ours, (q, k, v), strict=True):
        torch.testing.assert_close(g, t.grad)


def test_default_scale_is_inverse_sqrt_dk():
    q, k, v = qkv((), (), (), 3, 4, 9, 2, seed=28)
    a = scaled_dot_product_attention(q, k, v)
    b = scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(9))
    torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- validate once (issue 19)


@pytest.mark.parametrize("bad", [True, 2.0, 0, -1, "3", None])
def test_require_int_names_the_argument_and_the_value(bad):
    from attn_course._validation import require_int

    with pytest.raises(ValueError, match=rf"num_heads must be a positive int, got {re.escape(repr(bad))}"):
        require_int(bad, "num_heads")


def test_require_int_bounds_and_optional():
    from attn_course._validation import require_int, require_optional_int

    assert require_int(0, "t", 0) == 0 and require_int(4, "t", 0, 4) == 4
    with pytest.raises(ValueError, match=r"t must be an int in \[0, 4\], got 5"):
        require_int(5, "t", 0, 4)
    with pytest.raises(ValueError, match="window must be a non-negative int, got -1"):
        require_int(-1, "window", 0)
    with pytest.raises(ValueError, match="n_symbols must be an int >= 2, got 1"):
        require_int(1, "n_symbols", 2)
    assert require_optional_int(None, "max_len") is None and require_optional_int(3, "max_len") == 3
    with pytest.raises(ValueError, match="max_len must be a positive int or None, got False"):
        require_optional_int(False, "max_len")


def test_default_scale():
    from attn_course.scoring import default_scale

    assert default_scale(16) == 0.25 and default_scale(16, None) == 0.25
    assert default_scale(16, 2) == 2.0 and isinstance(default_scale(16, 2), float)


def test_naive_path_validates_each_input_once(monkeypatch):
    import attn_course._validation as checks
    import attn_course.attention as attention

    calls = {"check_query_key": 0, "check_mask": 0, "check_value": 0}

    def counted(name):
        original = getattr(checks, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    for name in calls:
        monkeypatch.setattr(attention, name, counted(name))
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 6)
    mask = torch.rand(2, 3, 5) > 0.3
    out, w = attention.scaled_dot_product_attention(q, k, v, mask, is_causal=True)
    assert calls == {"check_query_key": 1, "check_mask": 1, "check_value": 1}
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask & causal_mask(3, 5))
    rows = (mask & causal_mask(3, 5)).any(-1)  # rows with at least one allowed key
    torch.testing.assert_close(out[rows], ref[rows])


def test_multihead_dropout_is_applied_once_to_the_weights():
    """The output is W_O merge(dropout(weights) @ v) with the dropout drawn once; weights are pre-dropout."""
    from attn_course.attention import attention_weights
    from attn_course.multihead import MultiHeadAttention, merge_heads, split_heads

    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, dropout=0.5).train()
    x = torch.randn(2, 5, 8)
    torch.manual_seed(1)
    out, weights = mha(x, x, x, is_causal=True)
    q, k, v = (split_heads(p(x), 2) for p in (mha.q_proj, mha.k_proj, mha.v_proj))  # (B, H, T, d)
    expected_w = attention_weights(q, k, is_causal=True)  # (B, H, T, T)
    torch.testing.assert_close(weights, expected_w)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 5))  # pre-dropout rows sum to 1
    torch.manual_seed(1)  # the forward's only random draw is the dropout mask: redraw it
    dropped = torch.nn.functional.dropout(expected_w, 0.5)
    torch.testing.assert_close(out, mha.out_proj(merge_heads(dropped @ v)))
    assert not torch.allclose(out, mha.out_proj(merge_heads(expected_w @ v)))  # dropout did act
