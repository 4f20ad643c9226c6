"""Property-based tests (hypothesis) of masked_softmax and scaled_dot_product_attention."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_course.attention import attention_loop, scaled_dot_product_attention
from attn_course.masking import masked_softmax

SETTINGS = settings(max_examples=50, deadline=None)


@st.composite
def attention_inputs(draw, dtype=torch.float64):
    """query/key/value with random (broadcasting) shapes and a random broadcastable mask."""
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    L, S = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    d_k, d_v = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    magnitude = draw(st.sampled_from([0.1, 1.0, 10.0, 100.0]))  # up to scores of order 1e4
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    query = torch.randn(*batch, L, d_k, generator=gen, dtype=dtype) * magnitude
    key = torch.randn(*batch, S, d_k, generator=gen, dtype=dtype) * magnitude
    value = torch.randn(*batch, S, d_v, generator=gen, dtype=dtype)
    mask = None
    if draw(st.booleans()):
        full = (*batch, L, S)
        shape = [n if draw(st.booleans()) else 1 for n in full]  # broadcast some dims ...
        shape = shape[draw(st.integers(0, len(batch))) :]  # ... and maybe drop leading ones
        density = draw(st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0]))  # 0.0: every row fully masked
        mask = torch.rand(*shape, generator=gen) < density
    is_causal = draw(st.booleans())
    return query, key, value, mask, is_causal


def effective_mask(query, key, mask, is_causal):
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2])
    L, S = query.shape[-2], key.shape[-2]
    m = torch.ones(*batch, L, S, dtype=torch.bool)
    if mask is not None:
        m = m & mask
    if is_causal:
        m = m & torch.ones(L, S, dtype=torch.bool).tril()
    return m  # (..., L, S)


@SETTINGS
@given(attention_inputs())
def test_weights_are_a_distribution_over_allowed_keys(inputs):
    query, key, value, mask, is_causal = inputs
    out, weights = scaled_dot_product_attention(query, key, value, mask, is_causal)
    allowed = effective_mask(query, key, mask, is_causal)
    live = allowed.any(-1)  # (..., L): rows with at least one allowed key
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1)[live], torch.ones_like(weights.sum(-1)[live]))
    assert torch.all(weights[~allowed] == 0)  # masked positions: exactly zero
    assert torch.all(weights[~live] == 0)  # fully masked rows: all zero ...
    out_live = live.expand(out.shape[:-1])
    assert torch.all(out[~out_live] == 0)  # ... and so is their output


@SETTINGS
@given(attention_inputs(), st.randoms(use_true_random=False))
def test_permuting_keys_and_values_together_leaves_output_unchanged(inputs, rnd):
    query, key, value, mask, _ = inputs  # no is_causal: causality depends on key order
    S = key.shape[-2]
    perm = list(range(S))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    p_key, p_value = key[..., perm, :], value[..., perm, :]  # (..., S, d): rows permuted
    p_mask = mask
    if mask is not None and mask.shape[-1] == S:  # (a last dim of 1 broadcasts: nothing to permute)
        p_mask = mask[..., perm]  # (..., L, S): columns permuted like the keys
    out, weights = scaled_dot_product_attention(query, key, value, mask)
    p_out, p_weights = scaled_dot_product_attention(query, p_key, p_value, p_mask)
    torch.testing.assert_close(p_out, out)
    torch.testing.assert_close(p_weights, weights[..., perm])


@SETTINGS
@given(attention_inputs())
def test_loop_twin_agrees(inputs):
    query, key, value, mask, is_causal = inputs
    mask = effective_mask(query, key, mask, is_causal)  # attention_loop has no is_causal flag
    torch.testing.assert_close(
        attention_loop(query, key, value, mask), scaled_dot_product_attention(query, key, value, mask)
    )


@SETTINGS
@given(
    st.integers(1, 4),
    st.integers(1, 8),
    st.sampled_from([1.0, 1e2, 1e4]),
    st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    st.sampled_from([0.0, 0.3, 0.7, 1.0]),
    st.integers(0, 2**31 - 1),
)
def test_masked_softmax_is_stable_and_shift_invariant(rows, cols, magnitude, dtype, density, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = (torch.randn(rows, cols, generator=gen) * magnitude).to(dtype)
    mask = torch.rand(rows, cols, generator=gen) < density
    w = masked_softmax(scores, mask)
    assert w.dtype == dtype and torch.isfinite(w).all() and (w >= 0).all()
    live = mask.any(-1)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(w.float().sum(-1)[live], torch.ones(int(live.sum())), atol=tol, rtol=0)
    assert torch.all(w[~mask] == 0)
    # softmax ignores a per-row shift (in float64 so that adding the shift is exact)
    exact = scores.double()
    shift = torch.randn(rows, 1, generator=gen, dtype=torch.float64).round() * 64.0  # (rows, 1)
    torch.testing.assert_close(masked_softmax(exact + shift, mask), masked_softmax(exact, mask))
