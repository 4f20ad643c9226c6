"""Multi-head latent attention: the absorbed form equals the explicit one, the latent cache equals
recomputation, the cache's size is the formula, and bad input gets clear errors."""

import pytest
import torch

from attn_course.kv_cache import kv_cache_bytes
from attn_course.mla import MLA_SHAPES, LatentCache, MultiHeadLatentAttention, mla_bytes_per_token


def _layer(rope_dim=4, seed=0):
    torch.manual_seed(seed)
    return MultiHeadLatentAttention(d_model=24, n_head=3, head_dim=8, latent_dim=6, rope_dim=rope_dim).double()


@pytest.mark.parametrize("rope_dim", [0, 4])
def test_absorbed_projections_give_the_same_output(rope_dim):
    mla = _layer(rope_dim)
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    torch.testing.assert_close(mla(x, absorbed=True), mla(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("absorbed", [False, True])
def test_decoding_from_the_latent_cache_equals_recomputing(absorbed):
    mla = _layer()
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    full = mla(x)
    cache = mla.new_cache()
    steps = [mla(x[:, :4], cache)] + [mla(x[:, t:t + 1], cache, absorbed=absorbed) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-12)
    assert cache.seq_len == 9 and cache.latents[0].shape == (2, 9, 6) and cache.rope_keys[0].shape == (2, 9, 4)
    assert cache.allocated_bytes() == 2 * 9 * (6 + 4) * 8


def test_the_rotary_part_makes_scores_depend_on_position_only_through_offsets():
    mla = _layer()
    x = torch.randn(1, 5, 24, dtype=torch.float64)
    out = mla(x)
    assert not torch.allclose(out[:, 1], mla(x[:, 1:2])[:, 0])  # position 1 is not position 0
    no_rope = _layer(rope_dim=0)
    torch.testing.assert_close(no_rope(x)[:, 0], no_rope(x[:, :1])[:, 0])


def test_bytes_per_token():
    ds = MLA_SHAPES["deepseek-v2"]
    assert ds.bytes_per_token() == 60 * 576 * 2 == mla_bytes_per_token(60, 512, 64)
    mha = kv_cache_bytes(60, 128, 128, tokens=1)
    assert mha / ds.bytes_per_token() == pytest.approx(2 * 128 * 128 / 576)
    # The paper's comparison: MLA's cache equals GQA's with 2.25 groups.
    assert ds.bytes_per_token() == pytest.approx(kv_cache_bytes(60, 1, 128, tokens=1) * 2.25)


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="rope_dim"):
        MultiHeadLatentAttention(16, 2, 8, 4, rope_dim=3)
    with pytest.raises(ValueError, match="x"):
        _layer()(torch.randn(2, 5, 23, dtype=torch.float64))
    with pytest.raises(ValueError, match="latent_dim"):
        LatentCache(1, 0, 2)
