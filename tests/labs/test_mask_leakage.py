"""Tests for attn_course.masking.combine_masks and neg_inf_softmax, and the leakage checks of attn_course.labs.mask_leakage."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attn_course.labs.mask_leakage import (
    MaskedAttentionModel,
    causal_leakage,
    padding_leakage,
    perturb,
    position_changes,
)
from attn_course.masking import causal_mask, combine_masks, masked_softmax, neg_inf_softmax, padding_mask


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------- combine_masks


def test_combine_padding_and_causal_broadcasts_to_batch_heads_queries_keys():
    pad = padding_mask([4, 2, 0], max_len=4)  # (3, 1, 1, 4)
    causal = causal_mask(4)  # (4, 4)
    combined = combine_masks(pad, causal)
    assert combined.shape == (3, 1, 4, 4) and combined.dtype == torch.bool
    for b, n in enumerate([4, 2, 0]):
        for i in range(4):
            for j in range(4):
                assert bool(combined[b, 0, i, j]) == (j < n and j <= i)


def test_combine_masks_skips_none_and_is_an_and():
    a = torch.tensor([True, True, False])
    b = torch.tensor([True, False, False])
    assert combine_masks(a, None) is a
    assert combine_masks(None, None) is None and combine_masks() is None
    assert combine_masks(a, b).tolist() == [True, False, False]
    assert combine_masks(a, b, torch.tensor(False)).tolist() == [False, False, False]


def test_combine_masks_errors_name_the_mask():
    with pytest.raises(TypeError, match=r"masks\[1\] must be a boolean tensor"):
        combine_masks(causal_mask(3), torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"masks have shapes \(3, 3\), \(4, 4\)"):
        combine_masks(causal_mask(3), causal_mask(4))
    with pytest.raises(TypeError, match=r"masks\[0\] must be a torch.Tensor"):
        combine_masks([True, False])


# --------------------------------------------------------------------------- neg_inf_softmax


def test_neg_inf_softmax_nans_exactly_the_fully_masked_rows():
    scores = torch.randn(4, 5, generator=gen(1))
    mask = torch.rand(4, 5, generator=gen(2)) > 0.4
    mask[2] = False
    mask[0, 0] = True
    plain = neg_inf_softmax(scores, mask)
    assert plain.isnan().all(dim=-1).tolist() == [False, False, True, False]
    live = mask.any(-1)
    torch.testing.assert_close(plain[live], masked_softmax(scores, mask)[live])
    assert torch.all(masked_softmax(scores, mask)[2] == 0)
    torch.testing.assert_close(neg_inf_softmax(scores), torch.softmax(scores, -1))


# --------------------------------------------------------------------------- the model


def tokens(B=3, T=6, V=11, seed=3):
    return torch.randint(0, V, (B, T), generator=gen(seed))


def test_model_shapes_and_weights():
    model = MaskedAttentionModel(11, 8, 3)
    logits, weights = model(tokens(), need_weights=True)
    assert logits.shape == (3, 6, 11) and len(weights) == 3
    assert all(w.shape == (3, 1, 6, 6) for w in weights)
    assert model(tokens()).shape == (3, 6, 11)


def test_model_softmaxes_agree_without_fully_masked_rows():
    masked = MaskedAttentionModel(11, 8, causal=True)
    plain = MaskedAttentionModel(11, 8, causal=True, softmax="neg_inf")
    plain.load_state_dict(masked.state_dict())
    pad = padding_mask([6, 3, 1], 6)  # right padding: every causal row keeps key 0
    torch.testing.assert_close(masked(tokens(), pad), plain(tokens(), pad))


def test_a_fully_masked_row_poisons_the_neg_inf_model_only():
    plain = MaskedAttentionModel(11, 8, causal=True, softmax="neg_inf")
    masked = MaskedAttentionModel(11, 8, causal=True)
    masked.load_state_dict(plain.state_dict())
    real = torch.arange(6) >= torch.tensor([0, 2, 4])[:, None]  # left padding: (3, 6)
    mask = real[:, None, None, :]  # (B, 1, 1, S); causal rows of the left pads see nothing
    target = tokens(seed=4)
    for model, finite in ((plain, False), (masked, True)):
        logits = model(tokens(), mask)
        # row 0 has no padding: unaffected either way; rows 1, 2 become NaN everywhere after 2 layers
        assert torch.isfinite(logits[0]).all()
        assert bool(torch.isfinite(logits).all()) == finite
        loss = F.cross_entropy(logits[real], target[real])
        loss.backward()
        assert bool(torch.isfinite(loss)) == finite
        for p in model.parameters():
            assert bool(torch.isfinite(p.grad).all()) == finite


def test_the_finite_fill_model_keeps_real_positions_exact_and_everything_finite():
    finite = MaskedAttentionModel(11, 8, causal=True, softmax="finite")
    masked = MaskedAttentionModel(11, 8, causal=True)
    masked.load_state_dict(finite.state_dict())
    real = torch.arange(6) >= torch.tensor([0, 2, 4])[:, None]  # left padding: (3, 6)
    mask = real[:, None, None, :]  # (B, 1, 1, S)
    logits_f, logits_m = finite(tokens(), mask), masked(tokens(), mask)
    assert torch.isfinite(logits_f).all()
    # real queries give fully masked padding keys zero weight: their outputs agree exactly ...
    torch.testing.assert_close(logits_f[real], logits_m[real])
    # ... the padding queries themselves average every value uniformly instead of returning zero
    assert (logits_f[~real] - logits_m[~real]).abs().max() > 1e-3


def test_model_validates():
    with pytest.raises(ValueError, match="softmax must be"):
        MaskedAttentionModel(5, softmax="plain")
    with pytest.raises(ValueError, match="vocab_size must be a positive int"):
        MaskedAttentionModel(0)
    with pytest.raises(ValueError, match="tokens has shape"):
        MaskedAttentionModel(5)(torch.zeros(2, 3, 4))


# --------------------------------------------------------------------------- perturbation checks


def test_perturb_changes_exactly_the_selected_positions():
    x = tokens(B=4, T=7, V=3)
    where = torch.rand(4, 7, generator=gen(5)) > 0.5
    y = perturb(x, where, vocab_size=3, generator=gen(6))
    assert torch.equal(y != x, where) and int(y.min()) >= 0 and int(y.max()) < 3
    xf = torch.randn(2, 5, 3)
    yf = perturb(xf, torch.arange(5) > 2)  # broadcast over the batch
    assert ((yf != xf).any(-1) == (torch.arange(5) > 2)).all()


def test_perturb_validates():
    with pytest.raises(ValueError, match="vocab_size"):
        perturb(tokens(), torch.ones(6, dtype=torch.bool))
    with pytest.raises(TypeError, match="where must be a boolean tensor"):
        perturb(tokens(), torch.ones(6), vocab_size=11)
    with pytest.raises(ValueError, match="where has shape"):
        perturb(tokens(), torch.ones(5, dtype=torch.bool), vocab_size=11)
    with pytest.raises(ValueError, match="x has shape"):
        perturb(torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.bool), vocab_size=11)


def test_position_changes_per_position():
    x = torch.zeros(2, 4, 3)
    x2 = x.clone()
    x2[1, 2, 0] = -5.0
    assert position_changes(lambda t: 2 * t, x, x2).tolist() == [0.0, 0.0, 10.0, 0.0]
    assert position_changes(lambda t: (t, None), x, x).tolist() == [0.0] * 4  # tuple outputs
    with pytest.raises(ValueError, match="x_other has shape"):
        position_changes(lambda t: t, x, x[:, :3])


@pytest.mark.parametrize("t", [0, 2, 5])
def test_causal_model_does_not_leak_and_bidirectional_does(t):
    causal = MaskedAttentionModel(11, 8, causal=True)
    assert causal_leakage(causal, tokens(), t, vocab_size=11, generator=gen(7)) == 0.0
    bidirectional = MaskedAttentionModel(11, 8)
    leak = causal_leakage(bidirectional, tokens(), t, vocab_size=11, generator=gen(7))
    assert leak > 1e-3 if t < 5 else leak == 0.0  # nothing after the last position


def test_an_off_by_one_causal_mask_leaks():
    model = MaskedAttentionModel(11, 8)
    peek = torch.ones(6, 6, dtype=torch.bool).tril(1)  # sees one token ahead
    assert causal_leakage(lambda x: model(x, peek), tokens(), 2, vocab_size=11) > 1e-3
    with pytest.raises(ValueError, match="t must be an int in"):
        causal_leakage(model, tokens(), 6, vocab_size=11)


def test_padding_leakage():
    lengths = [6, 3, 1]
    model = MaskedAttentionModel(11, 8, num_layers=2)
    pad = padding_mask(lengths, 6)
    assert padding_leakage(lambda x: model(x, pad), tokens(), lengths, vocab_size=11) == 0.0
    assert padding_leakage(model, tokens(), lengths, vocab_size=11) > 1e-3
    assert padding_leakage(model, tokens(), [6, 6, 6], vocab_size=11) == 0.0  # no padding to change
    with pytest.raises(ValueError, match="lengths has shape"):
        padding_leakage(model, tokens(), [6, 3], vocab_size=11)
