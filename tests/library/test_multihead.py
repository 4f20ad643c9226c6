"""Tests for attn_course.multihead: against torch.nn.MultiheadAttention, F.scaled_dot_product_attention
and the head-by-head loop twin, on odd sizes and every kind of mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attn_course.masking import causal_mask
from attn_course.multihead import (
    MultiHeadAttention,
    MultiHeadAttentionLoop,
    from_torch_attn_mask,
    from_torch_key_padding_mask,
    merge_heads,
    split_heads,
    to_torch_masks,
)

# (embed_dim, num_heads, kdim, vdim, bias, B, L, S)
CONFIGS = [
    (12, 3, None, None, True, 2, 4, 4),
    (10, 5, None, None, True, 2, 3, 7),  # d = 2, L != S
    (12, 3, 5, 7, True, 3, 4, 6),  # separate q/k/v weights in torch
    (8, 2, None, None, False, 2, 5, 5),  # no biases
    (6, 1, 3, None, True, 2, 2, 9),  # one head, only kdim differs
    (16, 4, 16, 16, True, 1, 6, 3),  # kdim == vdim == embed_dim given explicitly: packed
    (9, 9, 4, 4, True, 2, 1, 5),  # d = 1, a single query
]
CONFIG_IDS = [f"D{c[0]}-H{c[1]}-k{c[2]}-v{c[3]}-{'bias' if c[4] else 'nobias'}-B{c[5]}-L{c[6]}-S{c[7]}" for c in CONFIGS]

MASK_KINDS = [
    "none",
    "key_padding",
    "attn_2d",
    "attn_4d_per_seq",  # (B, 1, L, S)
    "attn_4d_per_head",  # (1, H, L, S)
    "attn_4d_full",  # (B, H, L, S)
    "causal",
    "key_padding+causal",
    "key_padding+attn_2d",
    "key_padding+attn_4d_full+causal",
]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def make_pair(D, H, kdim, vdim, bias, seed=0, dtype=torch.float32):
    """A torch module (random non-zero biases) and ours with its weights, both in eval mode."""
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(D, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=True, dtype=dtype).eval()
    if bias:  # torch zeroes the biases at init; make them matter
        with torch.no_grad():
            ref.in_proj_bias.normal_(generator=gen(seed + 100))
            ref.out_proj.bias.normal_(generator=gen(seed + 101))
    return ref, MultiHeadAttention.from_torch(ref)


def make_inputs(D, kdim, vdim, B, L, S, seed=0, dtype=torch.float32):
    return (
        randn(B, L, D, seed=seed, dtype=dtype),
        randn(B, S, kdim or D, seed=seed + 1, dtype=dtype),
        randn(B, S, vdim or D, seed=seed + 2, dtype=dtype),
    )


def make_masks(kind, B, H, L, S, seed=0):
    """Our masks (True = may attend) for a mask kind: (key_padding_mask, attn_mask, is_causal)."""
    g = gen(seed + 7)
    kpm = attn = None
    if "key_padding" in kind:
        lengths = torch.randint(1, S + 1, (B,), generator=g)
        lengths[0] = S  # one full sequence
        if B > 1:
            lengths[-1] = 1  # and one with a single real token
        kpm = torch.arange(S) < lengths[:, None]  # (B, S)
    if "attn_2d" in kind:
        attn = torch.rand(L, S, generator=g) < 0.7
    elif "attn_4d_per_seq" in kind:
        attn = torch.rand(B, 1, L, S, generator=g) < 0.7
    elif "attn_4d_per_head" in kind:
        attn = torch.rand(1, H, L, S, generator=g) < 0.7
    elif "attn_4d_full" in kind:
        attn = torch.rand(B, H, L, S, generator=g) < 0.7
    return kpm, attn, "causal" in kind


def effective_mask(kpm, attn, is_causal, B, H, L, S):
    """The combined (B, H, L, S) mask, True = may attend."""
    m = torch.ones(B, H, L, S, dtype=torch.bool)
    if kpm is not None:
        m = m & kpm[:, None, None, :]
    if attn is not None:
        m = m & attn
    if is_causal:
        m = m & causal_mask(L, S)
    return m


def assert_live_rows_close(ours, theirs, live, atol=1e-5, rtol=1e-4):
    torch.testing.assert_close(ours[live], theirs[live], atol=atol, rtol=rtol)


# --------------------------------------------------------------------------- split / merge


@pytest.mark.parametrize("B,T,D,H", [(2, 3, 8, 2), (1, 1, 5, 5), (3, 7, 15, 3), (2, 4, 6, 1)])
def test_split_heads_cuts_features_into_consecutive_chunks(B, T, D, H):
    x = randn(B, T, D)
    heads = split_heads(x, H)
    d = D // H
    assert heads.shape == (B, H, T, d)
    for h in range(H):
        torch.testing.assert_close(heads[:, h], x[..., h * d : (h + 1) * d], rtol=0, atol=0)
    merged = merge_heads(heads)
    assert merged.shape == (B, T, D)
    torch.testing.assert_close(merged, x, rtol=0, atol=0)  # exact round trip
    torch.testing.assert_close(merge_heads(heads), torch.cat([heads[:, h] for h in range(H)], dim=-1))


def test_merge_then_split_round_trip():
    x = randn(2, 3, 5, 4)  # (B, H, T, d)
    torch.testing.assert_close(split_heads(merge_heads(x), 3), x, rtol=0, atol=0)


def test_split_heads_keeps_gradients():
    x = randn(2, 3, 6).requires_grad_()
    split_heads(x, 3).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach())


def test_split_merge_errors():
    with pytest.raises(ValueError, match=r"x has shape \(3, 4\); expected \(B, T, D\)"):
        split_heads(randn(3, 4), 2)
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 10\); expected \(B, T, D\) with D divisible by num_heads = 4"):
        split_heads(randn(2, 3, 10), 4)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        split_heads(randn(2, 3, 4), 0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        split_heads([[1.0]], 1)
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 4\); expected \(B, H, T, d\)"):
        merge_heads(randn(2, 3, 4))


# --------------------------------------------------------------------------- configuration


def test_divisibility_error_names_both_numbers_and_suggests_head_counts():
    with pytest.raises(ValueError, match=r"embed_dim \(10\) must be divisible by num_heads \(4\).*\[1, 2, 5, 10\]"):
        MultiHeadAttention(10, 4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(embed_dim=0, num_heads=1), "embed_dim must be a positive int"),
    (dict(embed_dim=8, num_heads=0), "num_heads must be a positive int"),
    (dict(embed_dim=8.0, num_heads=2), "embed_dim must be a positive int"),
    (dict(embed_dim=8, num_heads=2, kdim=0), "kdim must be a positive int"),
    (dict(embed_dim=8, num_heads=2, vdim=-1), "vdim must be a positive int"),
    (dict(embed_dim=8, num_heads=2, dropout=1.0), r"dropout must be a float in \[0, 1\)"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(**kwargs)


@pytest.mark.parametrize("H", [1, 2, 3, 4, 6, 12])
def test_parameter_count_does_not_depend_on_heads(H):
    count = sum(p.numel() for p in MultiHeadAttention(12, H, kdim=5, vdim=7).parameters())
    assert count == (12 * 12 + 12) + (12 * 5 + 12) + (12 * 7 + 12) + (12 * 12 + 12)
    torch_count = sum(p.numel() for p in nn.MultiheadAttention(12, H, kdim=5, vdim=7).parameters())
    assert count == torch_count


# --------------------------------------------------------------------------- against torch.nn.MultiheadAttention


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_matches_torch_multihead_attention(config, kind):
    D, H, kdim, vdim, bias, B, L, S = config
    ref, ours = make_pair(D, H, kdim, vdim, bias, seed=L * S)
    q, k, v = make_inputs(D, kdim, vdim, B, L, S, seed=B)
    kpm, attn, is_causal = make_masks(kind, B, H, L, S)
    out, w = ours(q, k, v, key_padding_mask=kpm, attn_mask=attn, is_causal=is_causal)
    torch_kwargs = to_torch_masks(kpm, attn, is_causal=is_causal, num_heads=H, batch_size=B, L=L, S=S)
    with torch.no_grad():
        ref_out, ref_w = ref(q, k, v, need_weights=True, average_attn_weights=False, **torch_kwargs)
        _, ref_w_avg = ref(q, k, v, need_weights=True, **torch_kwargs)  # torch's default: mean over heads
    assert out.shape == (B, L, D) and w.shape == (B, H, L, S)
    eff = effective_mask(kpm, attn, is_causal, B, H, L, S)  # (B, H, L, S)
    live_head_rows = eff.any(-1)  # (B, H, L)
    live_rows = live_head_rows.all(1)  # (B, L): every head has an allowed key
    assert_live_rows_close(w, ref_w, live_head_rows)
    assert_live_rows_close(w.mean(1), ref_w_avg, live_rows)
    assert_live_rows_close(out, ref_out, live_rows)
    # rows of ours are distributions over the allowed keys, or all zero
    torch.testing.assert_close(w.sum(-1), live_head_rows.float())
    assert torch.all(w[~eff] == 0)


@pytest.mark.parametrize("config", CONFIGS[:3], ids=CONFIG_IDS[:3])
def test_need_weights_false_returns_none_and_the_same_output(config):
    D, H, kdim, vdim, bias, B, L, S = config
    ref, ours = make_pair(D, H, kdim, vdim, bias)
    q, k, v = make_inputs(D, kdim, vdim, B, L, S)
    kpm, attn, is_causal = make_masks("key_padding+causal", B, H, L, S)
    out, w = ours(q, k, v, key_padding_mask=kpm, is_causal=is_causal)
    out2, w2 = ours(q, k, v, key_padding_mask=kpm, is_causal=is_causal, need_weights=False)
    assert w is not None and w2 is None
    torch.testing.assert_close(out, out2, rtol=0, atol=0)
    with torch.no_grad():
        ref_out, ref_w = ref(q, k, v, need_weights=False, **to_torch_masks(kpm, is_causal=True, L=L, S=S))
    assert ref_w is None
    live = effective_mask(kpm, None, is_causal, B, H, L, S).any(-1).all(1)
    assert_live_rows_close(out, ref_out, live)


def test_float64_matches_torch_closely():
    ref, ours = make_pair(12, 3, 5, 7, True, dtype=torch.float64)
    assert ours.q_proj.weight.dtype == torch.float64
    q, k, v = make_inputs(12, 5, 7, 2, 4, 6, dtype=torch.float64)
    out, w = ours(q, k, v, is_causal=True)
    with torch.no_grad():
        ref_out, ref_w = ref(q, k, v, average_attn_weights=False, **to_torch_masks(is_causal=True, L=4, S=6))
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(w, ref_w, atol=1e-12, rtol=1e-12)


def test_gradients_match_torch():
    ref, ours = make_pair(10, 5, None, None, True)
    q, k, v = make_inputs(10, None, None, 2, 3, 7)
    kpm, attn, _ = make_masks("key_padding+attn_2d", 2, 5, 3, 7)
    attn[:, 0] = True  # key 0 is real in every sequence: no fully masked row (torch's NaN would spread)
    live = effective_mask(kpm, attn, False, 2, 5, 3, 7).any(-1).all(1)  # (B, L)
    assert live.all()
    grads = []
    for module, kwargs in ((ours, dict(key_padding_mask=kpm, attn_mask=attn)), (ref, to_torch_masks(kpm, attn))):
        x = q.clone().requires_grad_()
        out, _ = module(x, k, v, **kwargs)
        out[live].square().sum().backward()
        grads.append((x.grad, module.out_proj.weight.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- against F.scaled_dot_product_attention


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_matches_functional_sdpa(config, kind):
    """Project, split, torch's fused attention with our (True = may attend) mask, merge, project."""
    D, H, kdim, vdim, bias, B, L, S = config
    _, ours = make_pair(D, H, kdim, vdim, bias, seed=3)
    q, k, v = make_inputs(D, kdim, vdim, B, L, S, seed=5)
    kpm, attn, is_causal = make_masks(kind, B, H, L, S, seed=1)
    out, _ = ours(q, k, v, key_padding_mask=kpm, attn_mask=attn, is_causal=is_causal)
    with torch.no_grad():
        qh, kh, vh = (split_heads(p(x), H) for p, x in ((ours.q_proj, q), (ours.k_proj, k), (ours.v_proj, v)))
        eff = effective_mask(kpm, attn, is_causal, B, H, L, S)
        ref = ours.out_proj(merge_heads(F.scaled_dot_product_attention(qh, kh, vh, attn_mask=eff)))
    assert_live_rows_close(out, ref, eff.any(-1).all(1))


@pytest.mark.parametrize("L,S", [(3, 7), (7, 3), (5, 5)])
def test_is_causal_matches_functional_is_causal_upper_left(L, S):
    _, ours = make_pair(8, 2, None, None, True)
    q, k, v = make_inputs(8, None, None, 2, L, S)
    out, _ = ours(q, k, v, is_causal=True)
    with torch.no_grad():
        qh, kh, vh = (split_heads(p(x), 2) for p, x in ((ours.q_proj, q), (ours.k_proj, k), (ours.v_proj, v)))
        ref = ours.out_proj(merge_heads(F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- the loop twin


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_loop_twin_equals_batched(config, kind):
    D, H, kdim, vdim, bias, B, L, S = config
    _, ours = make_pair(D, H, kdim, vdim, bias, seed=11)
    loop = MultiHeadAttentionLoop(D, H, bias=bias, kdim=kdim, vdim=vdim)
    loop.load_state_dict(ours.state_dict())
    q, k, v = make_inputs(D, kdim, vdim, B, L, S, seed=13)
    kpm, attn, is_causal = make_masks(kind, B, H, L, S, seed=2)
    out, w = ours(q, k, v, key_padding_mask=kpm, attn_mask=attn, is_causal=is_causal)
    out_loop, w_loop = loop(q, k, v, key_padding_mask=kpm, attn_mask=attn, is_causal=is_causal)
    # everything, fully masked rows included: both give zero weights there
    torch.testing.assert_close(out_loop, out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w_loop, w, atol=1e-6, rtol=1e-5)
    assert loop(q, k, v, need_weights=False)[1] is None


def test_loop_head_uses_its_own_rows_of_the_projections():
    """Head h of the batched module equals attention with rows h*d..(h+1)*d of W_Q, W_K, W_V."""
    _, ours = make_pair(12, 3, None, None, True)
    x = randn(2, 5, 12)
    _, w = ours(x, x, x)
    d = 4
    for h in range(3):
        rows = slice(h * d, (h + 1) * d)
        q_h = x @ ours.q_proj.weight[rows].T + ours.q_proj.bias[rows]  # (B, T, d)
        k_h = x @ ours.k_proj.weight[rows].T + ours.k_proj.bias[rows]
        w_h = torch.softmax(q_h @ k_h.transpose(-1, -2) / d**0.5, dim=-1)  # (B, T, T)
        torch.testing.assert_close(w[:, h], w_h)


# --------------------------------------------------------------------------- fully masked rows


def test_fully_masked_rows_give_zero_weights_and_the_output_bias_not_nan():
    ref, ours = make_pair(12, 3, None, None, True)
    q, k, v = make_inputs(12, None, None, 2, 4, 5)
    kpm = torch.ones(2, 5, dtype=torch.bool)
    kpm[1] = False  # sequence 1: no real key at all
    attn = torch.ones(4, 5, dtype=torch.bool)
    attn[2] = False  # query 2: may attend to nothing
    x = q.clone().requires_grad_()
    out, w = ours(x, k, v, key_padding_mask=kpm, attn_mask=attn)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert torch.all(w[1] == 0) and torch.all(w[:, :, 2] == 0)
    bias = ours.out_proj.bias.detach()
    torch.testing.assert_close(out[1], bias.expand(4, 12))  # attention result 0 -> out_proj(0) = bias
    torch.testing.assert_close(out[0, 2], bias)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.all(x.grad[1] == 0)
    # torch gives NaN on those rows (which is why we compare live rows only); the others agree
    with torch.no_grad():
        ref_out, _ = ref(q, k, v, **to_torch_masks(kpm, attn))
    live = torch.tensor([[True, True, False, True], [False] * 4])
    assert_live_rows_close(out, ref_out, live)


def test_fully_masked_rows_without_bias_are_zero():
    _, ours = make_pair(8, 2, None, None, False)
    q, k, v = make_inputs(8, None, None, 1, 3, 4)
    out, _ = ours(q, k, v, key_padding_mask=torch.zeros(1, 4, dtype=torch.bool))
    assert torch.all(out == 0)


# --------------------------------------------------------------------------- dropout


def test_dropout_only_in_training_and_weights_returned_before_dropout():
    _, plain = make_pair(12, 3, None, None, True)
    drop = MultiHeadAttention(12, 3, dropout=0.5)
    drop.load_state_dict(plain.state_dict())
    x = randn(2, 6, 12)
    drop.eval()
    torch.testing.assert_close(drop(x, x, x)[0], plain(x, x, x)[0], rtol=0, atol=0)
    drop.train()
    torch.manual_seed(0)
    out, w = drop(x, x, x)
    assert not torch.allclose(out, plain(x, x, x)[0])
    torch.testing.assert_close(w, plain(x, x, x)[1])  # weights before dropout
    loop = MultiHeadAttentionLoop(12, 3, dropout=0.5)
    loop.load_state_dict(plain.state_dict())
    loop.train()
    assert not torch.allclose(loop(x, x, x)[0], plain(x, x, x)[0])


def test_from_torch_copies_dropout_and_training_mode():
    ref = nn.MultiheadAttention(8, 2, dropout=0.25, batch_first=True)
    ours = MultiHeadAttention.from_torch(ref)
    assert ours.dropout == 0.25 and ours.training
    assert not MultiHeadAttention.from_torch(ref.eval()).training


# --------------------------------------------------------------------------- from_torch


def test_from_torch_copies_packed_and_separate_weights():
    packed = nn.MultiheadAttention(12, 3, batch_first=True)
    ours = MultiHeadAttention.from_torch(packed)
    torch.testing.assert_close(
        torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]), packed.in_proj_weight
    )
    separate = nn.MultiheadAttention(12, 3, kdim=5, vdim=7, batch_first=True)
    ours = MultiHeadAttention.from_torch(separate)
    torch.testing.assert_close(ours.k_proj.weight, separate.k_proj_weight)
    torch.testing.assert_close(ours.v_proj.weight, separate.v_proj_weight)
    assert (ours.kdim, ours.vdim) == (5, 7)
    # a copy, not shared storage
    with torch.no_grad():
        separate.q_proj_weight.zero_()
    assert ours.q_proj.weight.abs().sum() > 0


def test_from_torch_seq_first_module_copies_the_same_weights():
    ref = nn.MultiheadAttention(8, 2, batch_first=False).eval()
    ours = MultiHeadAttention.from_torch(ref)
    q = randn(2, 5, 8)
    with torch.no_grad():
        ref_out, _ = ref(q.transpose(0, 1), q.transpose(0, 1), q.transpose(0, 1))  # (L, B, D)
    torch.testing.assert_close(ours(q, q, q)[0], ref_out.transpose(0, 1), atol=1e-5, rtol=1e-4)


def test_from_torch_errors():
    with pytest.raises(TypeError, match="module must be a torch.nn.MultiheadAttention, got Linear"):
        MultiHeadAttention.from_torch(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="add_bias_kv"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(ValueError, match="add_zero_attn"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, add_zero_attn=True))


def test_default_initialisation_like_torch():
    ours = MultiHeadAttention(64, 4)
    for p in (ours.q_proj, ours.k_proj, ours.v_proj):
        assert p.weight.abs().max() <= (6 / (64 + 3 * 64)) ** 0.5 and torch.all(p.bias == 0)
    assert torch.all(ours.out_proj.bias == 0)
    assert "head_dim=16" in repr(ours)


# --------------------------------------------------------------------------- mask converters


def test_to_torch_masks_flips_both_conventions():
    kpm = torch.tensor([[True, True, False], [True, False, False]])
    attn = torch.tensor([[True, False, True], [True, True, True]])
    out = to_torch_masks(kpm, attn)
    assert torch.equal(out["key_padding_mask"], ~kpm)  # torch: True = padding, ignore
    assert torch.equal(out["attn_mask"], ~attn)  # torch: True = NOT allowed
    assert to_torch_masks() == {"key_padding_mask": None, "attn_mask": None}
    causal = to_torch_masks(is_causal=True, L=2, S=3)["attn_mask"]
    assert torch.equal(causal, ~causal_mask(2, 3))
    assert torch.equal(to_torch_masks(kpm, is_causal=True)["attn_mask"], ~causal_mask(3))  # L defaults to S


def test_to_torch_masks_4d_layout_is_batch_major():
    B, H, L, S = 2, 3, 4, 5
    attn = torch.rand(B, H, L, S, generator=gen(0)) < 0.5
    flat = to_torch_masks(attn_mask=attn, num_heads=H)["attn_mask"]
    assert flat.shape == (B * H, L, S)
    for b in range(B):
        for h in range(H):
            assert torch.equal(flat[b * H + h], ~attn[b, h])
    per_seq = torch.rand(B, 1, L, S, generator=gen(1)) < 0.5
    flat = to_torch_masks(attn_mask=per_seq, num_heads=H)["attn_mask"]
    assert torch.equal(flat[H + 2], ~per_seq[1, 0])
    assert torch.equal(from_torch_attn_mask(flat, num_heads=H), per_seq.expand(B, H, L, S))


def test_to_torch_masks_errors():
    with pytest.raises(ValueError, match="needs num_heads"):
        to_torch_masks(attn_mask=torch.ones(2, 1, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="pass batch_size"):
        to_torch_masks(attn_mask=torch.ones(1, 2, 3, 3, dtype=torch.bool), num_heads=2)
    one = torch.rand(1, 1, 3, 4, generator=gen(0)) < 0.5
    assert torch.equal(to_torch_masks(attn_mask=one)["attn_mask"], ~one[0, 0])  # (1, 1, L, S) -> (L, S)
    with pytest.raises(ValueError, match="pass L and S"):
        to_torch_masks(is_causal=True)
    with pytest.raises(TypeError, match="key_padding_mask must be a boolean tensor"):
        to_torch_masks(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"attn_mask has shape \(2, 3, 3\)"):
        to_torch_masks(attn_mask=torch.ones(2, 3, 3, dtype=torch.bool))


def test_from_torch_masks_convert_bool_and_float():
    torch_kpm = torch.tensor([[False, False, True]])  # last token is padding
    assert torch.equal(from_torch_key_padding_mask(torch_kpm), torch.tensor([[True, True, False]]))
    additive = torch.tensor([[0.0, float("-inf")], [0.0, 0.0]])
    assert torch.equal(from_torch_attn_mask(additive), torch.tensor([[True, False], [True, True]]))
    assert torch.equal(from_torch_key_padding_mask(torch.tensor([[0.0, float("-inf")]])), torch.tensor([[True, False]]))
    with pytest.raises(ValueError, match="additive bias"):
        from_torch_attn_mask(torch.tensor([[0.0, -1.5]]))
    with pytest.raises(ValueError, match="needs num_heads"):
        from_torch_attn_mask(torch.ones(6, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible by num_heads = 4"):
        from_torch_attn_mask(torch.ones(6, 2, 2, dtype=torch.bool), num_heads=4)
    with pytest.raises(ValueError, match=r"mask has shape \(3,\); expected \(B, S\)"):
        from_torch_key_padding_mask(torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean or floating"):
        from_torch_attn_mask(torch.ones(2, 2, dtype=torch.long))


def test_round_trip_through_torch_module_with_torch_masks():
    """Masks written in torch's convention, converted with from_torch_*, give torch's result."""
    B, H, L, S = 2, 2, 3, 4
    ref, ours = make_pair(8, H, None, None, True)
    q, k, v = make_inputs(8, None, None, B, L, S)
    torch_kpm = torch.tensor([[False, False, False, True], [False, True, True, True]])  # True = padding
    torch_attn = torch.rand(B * H, L, S, generator=gen(4)) < 0.3  # True = NOT allowed
    torch_attn[..., 0] = False  # key 0 always allowed: no fully masked row
    with torch.no_grad():
        ref_out, ref_w = ref(q, k, v, key_padding_mask=torch_kpm, attn_mask=torch_attn, average_attn_weights=False)
    out, w = ours(q, k, v, key_padding_mask=from_torch_key_padding_mask(torch_kpm),
                  attn_mask=from_torch_attn_mask(torch_attn, num_heads=H))
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- input validation


@pytest.fixture
def mha():
    return MultiHeadAttention(12, 3, kdim=5, vdim=7)


def good_inputs():
    return randn(2, 4, 12), randn(2, 6, 5), randn(2, 6, 7)


@pytest.mark.parametrize("which,bad,exc,match", [
    ("query", randn(4, 12), ValueError, r"query has shape \(4, 12\); expected \(B, L, 12\)"),
    ("query", randn(2, 4, 10), ValueError, r"query has shape \(2, 4, 10\); expected \(B, L, 12\)"),
    ("key", randn(2, 6, 12), ValueError, r"key has shape \(2, 6, 12\); expected \(2, S, 5\).*kdim = 5"),
    ("key", randn(3, 6, 5), ValueError, r"key has shape \(3, 6, 5\); expected \(2, S, 5\)"),
    ("value", randn(2, 5, 7), ValueError, r"value has shape \(2, 5, 7\); expected \(2, 6, 7\)"),
    ("value", randn(2, 6, 12), ValueError, r"value has shape \(2, 6, 12\); expected \(2, 6, 7\).*vdim = 7"),
    ("query", torch.ones(2, 4, 12, dtype=torch.long), TypeError, "query must be a floating-point tensor"),
    ("key", randn(2, 6, 5, dtype=torch.float64), TypeError, "key has dtype torch.float64; expected query's"),
    ("value", [[1.0]], TypeError, "value must be a torch.Tensor"),
])
def test_input_errors(mha, which, bad, exc, match):
    q, k, v = good_inputs()
    args = {"query": q, "key": k, "value": v}
    args[which] = bad
    with pytest.raises(exc, match=match):
        mha(**args)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(key_padding_mask=torch.ones(2, 5, dtype=torch.bool)), ValueError,
     r"key_padding_mask has shape \(2, 5\); expected \(2, 6\) = \(B, S\)"),
    (dict(key_padding_mask=torch.ones(2, 1, 1, 6, dtype=torch.bool)), ValueError,
     r"key_padding_mask has shape \(2, 1, 1, 6\); expected \(2, 6\)"),
    (dict(key_padding_mask=torch.ones(2, 6)), TypeError, "key_padding_mask must be a boolean tensor"),
    (dict(attn_mask=torch.ones(4, 5, dtype=torch.bool)), ValueError,
     r"attn_mask has shape \(4, 5\); expected \(4, 6\) = \(L, S\)"),
    (dict(attn_mask=torch.ones(2, 4, 6, dtype=torch.bool)), ValueError,
     r"attn_mask has shape \(2, 4, 6\); expected .*attn_mask\[:, None\]"),
    (dict(attn_mask=torch.ones(2, 2, 4, 6, dtype=torch.bool)), ValueError,
     r"attn_mask has shape \(2, 2, 4, 6\); expected \(B or 1, H or 1, L, S\) = \(2 or 1, 3 or 1, 4, 6\)"),
    (dict(attn_mask=torch.zeros(4, 6)), TypeError, "attn_mask must be a boolean tensor.*from_torch_attn_mask"),
])
def test_mask_errors(mha, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mha(*good_inputs(), **kwargs)
