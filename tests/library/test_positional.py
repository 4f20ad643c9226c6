"""Tests of attn_course.positional: sinusoidal, learned, rotary (RoPE) and ALiBi positions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_course.positional import (
    LearnedPositionalEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    sinusoidal_encoding,
)

# --------------------------------------------------------------------------- sinusoidal


def sinusoidal_loop(seq_len: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The paper's formula, one entry at a time (the naive twin)."""
    pe = torch.zeros(seq_len, dim, dtype=torch.float64)
    for pos in range(seq_len):
        for col in range(dim):
            i = col // 2
            angle = pos / base ** (2 * i / dim)
            pe[pos, col] = math.sin(angle) if col % 2 == 0 else math.cos(angle)
    return pe


@pytest.mark.parametrize("seq_len, dim", [(1, 1), (5, 2), (7, 3), (16, 8), (50, 33), (64, 64)])
def test_sinusoidal_matches_the_formula(seq_len, dim):
    pe = sinusoidal_encoding(seq_len, dim, dtype=torch.float64)
    assert pe.shape == (seq_len, dim) and pe.dtype == torch.float64
    torch.testing.assert_close(pe, sinusoidal_loop(seq_len, dim), rtol=0, atol=1e-12)


def test_sinusoidal_known_values():
    pe = sinusoidal_encoding(10, 6)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    # column pair 0 has frequency 1: PE[pos, 0] = sin(pos), PE[pos, 1] = cos(pos)
    torch.testing.assert_close(pe[:, 0], torch.sin(torch.arange(10.0)))
    torch.testing.assert_close(pe[:, 1], torch.cos(torch.arange(10.0)))
    # pair 1 of D = 6 has frequency 10000^(-2/6)
    assert pe[3, 2].item() == pytest.approx(math.sin(3 / 10000 ** (2 / 6)), abs=1e-6)
    assert sinusoidal_encoding(4, 8).dtype == torch.float32


def test_sinusoidal_odd_dim_ends_with_a_sine():
    pe = sinusoidal_encoding(20, 5, dtype=torch.float64)
    torch.testing.assert_close(pe[:, 4], torch.sin(torch.arange(20.0, dtype=torch.float64) / 10000 ** (4 / 5)))
    assert pe[0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]


def test_sinusoidal_is_bounded():
    pe = sinusoidal_encoding(2000, 64)
    assert pe.abs().max() <= 1.0
    # every (sin, cos) pair lies on the unit circle
    pairs = pe.view(2000, 32, 2)
    torch.testing.assert_close(pairs.pow(2).sum(-1), torch.ones(2000, 32))


@pytest.mark.parametrize("k", [1, 3, 17])
def test_sinusoidal_shift_is_a_fixed_rotation_per_pair(k):
    """PE[pos + k] = M_k PE[pos] for every pos, with M_k block-diagonal rotations by k * theta_i."""
    T, D = 60, 16
    pe = sinusoidal_encoding(T + k, D, dtype=torch.float64)
    theta = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
    c, s = torch.cos(k * theta), torch.sin(k * theta)
    # (sin(a + b), cos(a + b)) = [[cos b, sin b], [-sin b, cos b]] (sin a, cos a)
    blocks = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)  # (D/2, 2, 2)
    M = torch.block_diag(*blocks)  # (D, D), independent of pos
    torch.testing.assert_close(pe[k:], pe[:-k] @ M.T, rtol=0, atol=1e-10)


def test_sinusoidal_dot_product_depends_on_distance_only():
    pe = sinusoidal_encoding(100, 32, dtype=torch.float64)
    gram = pe @ pe.T  # (T, T)
    for offset in range(-10, 11):
        diagonal = torch.diagonal(gram, offset)
        assert (diagonal - diagonal[0]).abs().max() < 1e-9


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_sinusoidal_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="seq_len"):
        sinusoidal_encoding(bad, 8)
    with pytest.raises(ValueError, match="dim"):
        sinusoidal_encoding(8, bad)


# --------------------------------------------------------------------------- learned


def test_learned_adds_one_vector_per_position():
    torch.manual_seed(0)
    emb = LearnedPositionalEmbedding(10, 4)
    assert emb.weight.shape == (10, 4) and emb.weight.requires_grad
    x = torch.randn(3, 7, 4)
    out = emb(x)
    assert out.shape == (3, 7, 4)
    torch.testing.assert_close(out - x, emb.weight[:7].expand(3, 7, 4))
    # integer positions -> their embeddings, any shape
    positions = torch.tensor([[0, 2], [9, 9]])
    assert emb(positions).shape == (2, 2, 4)
    torch.testing.assert_close(emb(positions)[1, 0], emb.weight[9])
    assert emb(x[0]).shape == (7, 4)  # unbatched (T, D) works too
    assert "max_len=10, dim=4" in repr(emb)


def test_learned_gets_gradients():
    emb = LearnedPositionalEmbedding(5, 3)
    emb(torch.zeros(2, 4, 3)).sum().backward()
    assert torch.equal(emb.weight.grad[:4], torch.full((4, 3), 2.0)) and torch.equal(emb.weight.grad[4], torch.zeros(3))


def test_learned_errors():
    emb = LearnedPositionalEmbedding(6, 4)
    with pytest.raises(ValueError, match=r"T <= max_len = 6"):
        emb(torch.zeros(2, 7, 4))
    with pytest.raises(ValueError, match=r"\(2, 5, 3\); expected \(\.\.\., T, 4\)"):
        emb(torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        emb(torch.tensor([0, 6]))
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        emb(torch.tensor([-1]))
    with pytest.raises(TypeError, match="dtype torch.bool"):
        emb(torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="torch.Tensor"):
        emb([0, 1])
    with pytest.raises(ValueError, match="max_len"):
        LearnedPositionalEmbedding(0, 4)


# --------------------------------------------------------------------------- RoPE


def rope_matrix(position: float, d: int, base: float = 10000.0) -> torch.Tensor:
    """The (d, d) block-diagonal rotation of RoPE at one position, interleaved pairs (naive twin)."""
    R = torch.zeros(d, d, dtype=torch.float64)
    for i in range(d // 2):
        angle = position * base ** (-2 * i / d)
        c, s = math.cos(angle), math.sin(angle)
        R[2 * i, 2 * i], R[2 * i, 2 * i + 1] = c, -s
        R[2 * i + 1, 2 * i], R[2 * i + 1, 2 * i + 1] = s, c
    return R


def test_rope_matches_rotation_matrices():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 8, generator=g, dtype=torch.float64)  # (B, H, T, d)
    out = apply_rope(x)
    expected = torch.stack([x[..., t, :] @ rope_matrix(t, 8).T for t in range(5)], dim=-2)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_rope_matches_complex_multiplication():
    """RoFormer / LLaMA's complex form: pair (x_2i, x_2i+1) as x_2i + i x_2i+1 times e^{i m theta_i}."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 10, generator=g, dtype=torch.float64)
    pos = torch.arange(6, dtype=torch.float64)
    theta = 10000.0 ** (-torch.arange(0, 10, 2, dtype=torch.float64) / 10)
    z = torch.view_as_complex(x.reshape(4, 6, 5, 2).contiguous()) * torch.polar(torch.ones(6, 5, dtype=torch.float64), pos[:, None] * theta)
    torch.testing.assert_close(apply_rope(x), torch.view_as_real(z).reshape(4, 6, 10))


def test_rope_half_split_is_a_permutation_of_interleaved():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 7, 12, generator=g)
    perm = torch.cat([torch.arange(0, 12, 2), torch.arange(1, 12, 2)])  # interleaved -> half-split layout
    torch.testing.assert_close(apply_rope(x[..., perm], interleaved=False), apply_rope(x)[..., perm])
    # the half-split pairs (i, i + d/2), written out: x_a' = x_a cos - x_b sin, x_b' = x_a sin + x_b cos
    theta = 10000.0 ** (-torch.arange(0, 12, 2) / 12)
    angle = torch.arange(7.0)[:, None] * theta  # (T, 6)
    a, b = x[..., :6], x[..., 6:]
    expected = torch.cat([a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()], -1)
    torch.testing.assert_close(apply_rope(x, interleaved=False), expected)


@pytest.mark.parametrize("interleaved", [True, False])
def test_rope_preserves_norms_and_is_identity_at_zero(interleaved):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 50, 16, generator=g)
    out = apply_rope(x, interleaved=interleaved)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(out[..., 0, :], x[..., 0, :], rtol=0, atol=0)
    assert torch.equal(apply_rope(x, torch.zeros(50), interleaved=interleaved), x)


@pytest.mark.parametrize("interleaved", [True, False])
def test_rope_score_depends_only_on_the_offset(interleaved):
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 1, 32, generator=g)  # one query and one key vector, d = 32

    def score(m, n):
        qm = apply_rope(q, torch.tensor([m]), interleaved=interleaved)  # (1, 32)
        kn = apply_rope(k, torch.tensor([n]), interleaved=interleaved)
        return (qm @ kn.T).item()

    for m, n in [(0, 0), (3, 1), (1, 3), (10, 4), (7, 7)]:
        for shift in (1, 5, 20, 100):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-5)
    # and it really does depend on the offset
    assert abs(score(5, 0) - score(0, 0)) > 1e-2


def test_rope_score_matrix_is_toeplitz():
    """All pairwise scores at once: constant along each diagonal m - n."""
    g = torch.Generator().manual_seed(5)
    T = 40
    q = torch.randn(1, 16, generator=g, dtype=torch.float64).expand(T, 16)  # the same content at every position
    k = torch.randn(1, 16, generator=g, dtype=torch.float64).expand(T, 16)
    scores = apply_rope(q) @ apply_rope(k).T  # (T, T)
    for offset in range(-T + 1, T):
        diagonal = torch.diagonal(scores, offset)
        assert (diagonal - diagonal[0]).abs().max() < 1e-10


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(0, 500),
    n=st.integers(0, 500),
    shift=st.integers(-500, 500),
    half_d=st.integers(1, 16),
    base=st.sampled_from([100.0, 10000.0, 500000.0]),
    interleaved=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_rope_relative_invariance_property(m, n, shift, half_d, base, interleaved, seed):
    """q_m . k_n == q_{m+s} . k_{n+s} for any positions, shift, width, base and pairing (float64)."""
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 1, 2 * half_d, generator=g, dtype=torch.float64)
    pos_q = torch.tensor([float(m), float(m + shift)], dtype=torch.float64)
    pos_k = torch.tensor([float(n), float(n + shift)], dtype=torch.float64)
    rq = apply_rope(q.expand(2, -1), pos_q, base, interleaved=interleaved)  # (2, d): at m and at m + shift
    rk = apply_rope(k.expand(2, -1), pos_k, base, interleaved=interleaved)
    s0, s1 = (rq * rk).sum(-1).tolist()
    assert s1 == pytest.approx(s0, abs=1e-9 * (1 + q.norm().item() * k.norm().item()))


def test_rope_positions_broadcast_and_dtypes():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 5, 4, generator=g)  # (B, H, T, d)
    offsets = torch.tensor([0, 10])[:, None, None] + torch.arange(5)  # (B, 1, T): sequence b starts at 10 b
    out = apply_rope(x, offsets)
    torch.testing.assert_close(out[0], apply_rope(x[0]))
    torch.testing.assert_close(out[1], apply_rope(x[1], torch.arange(10, 15)))
    # float positions work (interpolation) and half precision keeps its dtype
    torch.testing.assert_close(apply_rope(x, torch.arange(5.0)), apply_rope(x))
    assert apply_rope(x.half()).dtype == torch.float16
    assert apply_rope(x.double()).dtype == torch.float64


def test_rope_errors():
    with pytest.raises(ValueError, match=r"\(3, 5\); expected \(\.\.\., T, d\) with d even"):
        apply_rope(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"expected \(\.\.\., T, d\)"):
        apply_rope(torch.zeros(4))
    with pytest.raises(TypeError, match="floating-point"):
        apply_rope(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"positions has shape \(4,\)"):
        apply_rope(torch.zeros(3, 4), torch.arange(4))
    with pytest.raises(TypeError, match="positions must be an integer or float"):
        apply_rope(torch.zeros(3, 4), torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="torch.Tensor"):
        apply_rope(torch.zeros(3, 4), [0, 1, 2])
    with pytest.raises(ValueError, match="base"):
        apply_rope(torch.zeros(3, 4), base=1.0)


# --------------------------------------------------------------------------- ALiBi


def test_alibi_slopes_power_of_two():
    assert alibi_slopes(8).tolist() == [2.0**-k for k in range(1, 9)]  # 1/2, 1/4, ..., 1/256
    assert alibi_slopes(1).tolist() == [2.0**-8]
    torch.testing.assert_close(alibi_slopes(16), torch.tensor([2.0 ** (-0.5 * k) for k in range(1, 17)]))


def test_alibi_slopes_other_head_counts():
    """The paper's interpolation: the 2^k slopes, then every other slope of the 2^(k+1) sequence."""
    s8, s16 = alibi_slopes(8).tolist(), alibi_slopes(16).tolist()
    assert alibi_slopes(12).tolist() == s8 + s16[0::2][:4]
    assert alibi_slopes(6).tolist() == alibi_slopes(4).tolist() + s8[0::2][:2]
    for h in (3, 5, 6, 7, 12, 20):
        s = alibi_slopes(h)
        assert s.shape == (h,) and len(set(s.tolist())) == h and ((s > 0) & (s < 1)).all()


@pytest.mark.parametrize("symmetric", [False, True])
def test_alibi_bias_values(symmetric):
    H, T = 4, 6
    bias = alibi_bias(H, T, symmetric=symmetric)
    assert bias.shape == (H, T, T) and bias.dtype == torch.float32
    slopes = alibi_slopes(H)
    for h in range(H):
        for i in range(T):
            for j in range(T):
                if j <= i:
                    expected = -slopes[h] * (i - j)
                else:
                    expected = -slopes[h] * (j - i) if symmetric else 0.0
                assert bias[h, i, j].item() == pytest.approx(float(expected))
    assert (torch.diagonal(bias, dim1=-2, dim2=-1) == 0).all()
    assert (bias <= 0).all()


def test_alibi_bias_broadcasts_against_scores():
    scores = torch.zeros(2, 8, 5, 5)  # (B, H, T, T)
    assert (scores + alibi_bias(8, 5)).shape == (2, 8, 5, 5)
    assert alibi_bias(8, 5, dtype=torch.float64).dtype == torch.float64
    # with a causal mask the causal bias makes each head prefer recent keys, more so for larger slopes
    w = torch.softmax((alibi_bias(8, 5) + torch.full((5, 5), float("-inf")).triu(1))[:, -1], dim=-1)  # (H, T)
    assert (w[:, -1] >= w[:, 0]).all() and w[0, -1] > w[-1, -1]


def test_alibi_errors():
    with pytest.raises(ValueError, match="num_heads"):
        alibi_bias(0, 4)
    with pytest.raises(ValueError, match="seq_len"):
        alibi_bias(4, 0)
    with pytest.raises(ValueError, match="num_heads"):
        alibi_slopes(2.0)
