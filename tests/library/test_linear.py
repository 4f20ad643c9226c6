"""Linear attention: the quadratic twin, the associative form, the cumsum form, the recurrence and the
chunkwise form agree, with and without a decay."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_course.linear import (
    FEATURE_MAPS,
    LinearAttentionState,
    causal_decay_matrix,
    causal_linear_attention,
    causal_linear_attention_chunkwise,
    causal_linear_attention_recurrent,
    elu_feature_map,
    linear_attention,
    linear_attention_quadratic,
    linear_attention_step,
    linear_attention_weights,
)


def qkv(B=2, H=3, L=11, S=11, d=8, d_v=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, L, d, generator=g, dtype=dtype), torch.randn(B, H, S, d, generator=g, dtype=dtype),
            torch.randn(B, H, S, d_v, generator=g, dtype=dtype))


@pytest.mark.parametrize("fmap", sorted(FEATURE_MAPS))
@pytest.mark.parametrize("L,S", [(11, 11), (4, 9), (9, 4)])
def test_noncausal_linear_equals_quadratic(fmap, L, S):
    q, k, v = qkv(L=L, S=S)
    torch.testing.assert_close(linear_attention(q, k, v, fmap), linear_attention_quadratic(q, k, v, False, fmap))


@pytest.mark.parametrize("fmap", sorted(FEATURE_MAPS))
def test_causal_forms_agree(fmap):
    q, k, v = qkv(L=13, S=13)
    ref = linear_attention_quadratic(q, k, v, causal=True, feature_map=fmap)
    torch.testing.assert_close(causal_linear_attention(q, k, v, fmap), ref)
    out, state = causal_linear_attention_recurrent(q, k, v, fmap)
    torch.testing.assert_close(out, ref)
    assert state.kv.shape == (2, 3, 8, 5) and state.z.shape == (2, 3, 8)


def test_float32_agreement_and_last_row_is_noncausal():
    q, k, v = qkv(L=16, S=16, dtype=torch.float32)
    causal = causal_linear_attention(q, k, v)
    torch.testing.assert_close(causal, linear_attention_quadratic(q, k, v, causal=True), atol=1e-5, rtol=1e-5)
    # the last query sees every key: the causal and non-causal outputs coincide there
    torch.testing.assert_close(causal[:, :, -1], linear_attention(q, k, v)[:, :, -1], atol=1e-5, rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(N=st.integers(1, 12), d=st.integers(1, 6), d_v=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_causal_forms_agree_property(N, d, d_v, seed):
    q, k, v = qkv(B=1, H=2, L=N, S=N, d=d, d_v=d_v, seed=seed)
    ref = linear_attention_quadratic(q, k, v, causal=True)
    torch.testing.assert_close(causal_linear_attention(q, k, v), ref)
    torch.testing.assert_close(causal_linear_attention_recurrent(q, k, v)[0], ref)


def test_state_is_constant_size_and_decoding_continues():
    q, k, v = qkv(L=10, S=10)
    full, _ = causal_linear_attention_recurrent(q, k, v)
    first, state = causal_linear_attention_recurrent(q[:, :, :6], k[:, :, :6], v[:, :, :6])
    size = state.nbytes()
    outs = [first]
    for t in range(6, 10):  # decode one token at a time
        out_t, state = linear_attention_step(state, q[:, :, t], k[:, :, t], v[:, :, t])
        assert state.nbytes() == size
        outs.append(out_t.unsqueeze(2))
    torch.testing.assert_close(torch.cat(outs, dim=2), full)


def test_step_does_not_modify_state():
    q, k, v = qkv(L=1, S=1)
    state = LinearAttentionState.zeros(2, 3, 8, 5, dtype=torch.float64)
    linear_attention_step(state, q[:, :, 0], k[:, :, 0], v[:, :, 0])
    assert (state.kv == 0).all() and (state.z == 0).all()


def test_custom_feature_map_changes_width():
    q, k, v = qkv(L=7, S=7)
    phi = lambda x: torch.cat([elu_feature_map(x), elu_feature_map(-x)], dim=-1)  # D = 2d
    ref = linear_attention_quadratic(q, k, v, causal=True, feature_map=phi)
    out, state = causal_linear_attention_recurrent(q, k, v, phi)
    torch.testing.assert_close(out, ref)
    assert state.kv.shape[-2] == 16


def test_errors():
    q, k, v = qkv(L=5, S=7)
    with pytest.raises(ValueError, match="causal attention needs as many keys as queries"):
        causal_linear_attention(q, k, v)
    with pytest.raises(ValueError, match="feature_map must be one of"):
        linear_attention(q, k, v, feature_map="softmax")
    with pytest.raises(ValueError, match=r"q_t has shape"):
        linear_attention_step(LinearAttentionState.zeros(2, 3, 8, 5), q, k, v)
    with pytest.raises(ValueError, match="state.kv"):
        linear_attention_step(LinearAttentionState.zeros(2, 3, 4, 5, dtype=torch.float64),
                              q[:, :, 0], k[:, :, 0], v[:, :, 0])


@pytest.mark.parametrize("fmap", sorted(FEATURE_MAPS))
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 13, 64])  # 13 = N: the quadratic form; 64 > N: one chunk
def test_chunkwise_equals_the_other_causal_forms(fmap, chunk_size):
    q, k, v = qkv(L=13, S=13)
    out, state = causal_linear_attention_chunkwise(q, k, v, chunk_size, fmap)
    torch.testing.assert_close(out, linear_attention_quadratic(q, k, v, causal=True, feature_map=fmap))
    torch.testing.assert_close(out, causal_linear_attention(q, k, v, fmap))
    rec, rec_state = causal_linear_attention_recurrent(q, k, v, fmap)
    torch.testing.assert_close(state.kv, rec_state.kv)
    torch.testing.assert_close(state.z, rec_state.z)


@pytest.mark.parametrize("decay", [1.0, 0.9, 0.5])
@pytest.mark.parametrize("chunk_size", [1, 3, 8, 20])
def test_decayed_forms_agree(decay, chunk_size):
    q, k, v = qkv(L=17, S=17, d_v=4)
    ref = linear_attention_quadratic(q, k, v, causal=True, decay=decay)
    rec, rec_state = causal_linear_attention_recurrent(q, k, v, decay=decay)
    out, state = causal_linear_attention_chunkwise(q, k, v, chunk_size, decay=decay)
    torch.testing.assert_close(rec, ref)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(state.kv, rec_state.kv)
    torch.testing.assert_close(linear_attention_weights(q, k, causal=True, decay=decay) @ v, ref)


@settings(max_examples=20, deadline=None)
@given(N=st.integers(1, 20), C=st.integers(1, 8), decay=st.sampled_from([1.0, 0.95, 0.7]), seed=st.integers(0, 2**16))
def test_chunkwise_property(N, C, decay, seed):
    q, k, v = qkv(B=1, H=2, L=N, S=N, d=3, d_v=2, seed=seed)
    torch.testing.assert_close(causal_linear_attention_chunkwise(q, k, v, C, decay=decay)[0],
                               linear_attention_quadratic(q, k, v, causal=True, decay=decay))


def test_decay_fades_old_keys():
    assert causal_decay_matrix(3, 0.5).tolist() == [[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.25, 0.5, 1.0]]
    assert torch.equal(causal_decay_matrix(4, 1.0), torch.ones(4, 4).tril())
    q, k, _ = qkv(L=9, S=9)
    plain = linear_attention_weights(q, k, causal=True)
    faded = linear_attention_weights(q, k, causal=True, decay=0.8)
    torch.testing.assert_close(faded.sum(-1), torch.ones(2, 3, 9, dtype=torch.float64))  # still an average
    # relative to the newest key, key j of the last query is faded by 0.8^(8 - j)
    ratio = (faded[..., -1, :] / faded[..., -1, -1:]) / (plain[..., -1, :] / plain[..., -1, -1:])
    torch.testing.assert_close(ratio, (0.8 ** torch.arange(8, -1, -1, dtype=torch.float64)).expand_as(ratio))


def test_chunkwise_prefill_then_decode():
    q, k, v = qkv(L=12, S=12)
    full, _ = causal_linear_attention_recurrent(q, k, v, decay=0.9)
    first, state = causal_linear_attention_chunkwise(q[:, :, :7], k[:, :, :7], v[:, :, :7], 4, decay=0.9)
    second, state = causal_linear_attention_chunkwise(q[:, :, 7:10], k[:, :, 7:10], v[:, :, 7:10], 2, decay=0.9,
                                                      state=state)
    outs = [first, second]
    for t in (10, 11):
        out_t, state = linear_attention_step(state, q[:, :, t], k[:, :, t], v[:, :, t], decay=0.9)
        outs.append(out_t.unsqueeze(2))
    torch.testing.assert_close(torch.cat(outs, dim=2), full)


def test_decay_and_chunk_errors():
    q, k, v = qkv(L=6, S=6)
    for bad in (0, 0.0, 1.5, -0.2, True):
        with pytest.raises(ValueError, match=r"decay must be a number in \(0, 1\]"):
            causal_linear_attention_chunkwise(q, k, v, 2, decay=bad)
    with pytest.raises(ValueError, match="decay needs causal=True"):
        linear_attention_quadratic(q, k, v, decay=0.9)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        causal_linear_attention_chunkwise(q, k, v, 0)
    with pytest.raises(ValueError, match="state.kv"):
        causal_linear_attention_chunkwise(q, k, v, 2, state=LinearAttentionState.zeros(2, 3, 8, 7))
