"""Quantised KV caches: codes within their error bounds, int4 packed two per byte, KIVI's groups
(keys per channel, values per token), the cache's bytes, and generation through it."""

import pytest
import torch

from attn_course.decoding import generate
from attn_course.gpt import GPT, GPTConfig
from attn_course.kv_cache import kv_cache_bytes
from attn_course.kv_quant import (
    QuantizedCache,
    dequantize_groups,
    dequantize_symmetric,
    quantize_groups,
    quantize_symmetric,
    quantized_bytes_per_token,
)


def test_int8_error_is_at_most_half_a_step():
    x = torch.randn(2, 3, 10, 16) * 3
    codes, scale = quantize_symmetric(x)
    assert codes.dtype == torch.int8 and scale.shape == (2, 3, 10, 1) and int(codes.abs().max()) == 127
    err = (dequantize_symmetric(codes, scale) - x).abs()
    assert bool((err <= scale.float() / 2 * 1.01 + 1e-6).all())


@pytest.mark.parametrize("dim", [2, 3])
def test_int4_groups_are_packed_and_bounded(dim):
    x = torch.randn(1, 2, 8, 16)
    q = quantize_groups(x, bits=4, group_size=4, dim=dim)
    assert q["codes"].dtype == torch.uint8 and q["codes"].shape[-1] == 8  # two codes per byte
    assert q["scale"].shape[dim] == x.shape[dim] // 4
    err = (dequantize_groups(q) - x).abs()
    step = q["scale"].float().repeat_interleave(4, dim=dim)
    assert bool((err <= step / 2 * 1.01 + 1e-3).all())


def test_per_channel_key_groups_survive_an_outlier_channel():
    torch.manual_seed(0)
    k = torch.randn(1, 1, 32, 16)
    k[..., 3] *= 40  # one outlier channel, as keys have
    per_channel = (dequantize_groups(quantize_groups(k, 4, 32, dim=2)) - k)[..., [c for c in range(16) if c != 3]]
    per_token = (dequantize_groups(quantize_groups(k, 4, 16, dim=3)) - k)[..., [c for c in range(16) if c != 3]]
    assert per_channel.abs().mean() * 5 < per_token.abs().mean()


@pytest.mark.parametrize("scheme,atol", [("int8", 0.05), ("int4", 0.5)])
def test_the_cache_returns_what_it_was_given_up_to_quantisation(scheme, atol):
    cache = QuantizedCache(1, 2, 8, scheme=scheme, group_size=4)
    ks, vs = [], []
    for T in (6, 1, 1, 3):
        k, v = torch.randn(1, 2, T, 8), torch.randn(1, 2, T, 8)
        ks.append(k), vs.append(v)
        k_all, v_all = cache.update(0, k, v)
    assert k_all.shape == (1, 2, 11, 8) and cache.seq_len == 11
    torch.testing.assert_close(k_all, torch.cat(ks, 2), rtol=0, atol=atol)
    torch.testing.assert_close(v_all, torch.cat(vs, 2), rtol=0, atol=atol)
    if scheme == "int4":
        assert cache.residual_len == 11 % 4
        torch.testing.assert_close(k_all[:, :, -3:], ks[-1])  # the residual is exact


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_bytes_per_token_match_the_formula(scheme):
    cache = QuantizedCache(2, 2, 16, scheme=scheme, group_size=8)
    for layer in range(2):
        cache.update(layer, torch.randn(3, 2, 32, 16), torch.randn(3, 2, 32, 16))
    assert cache.residual_len == 0
    assert cache.allocated_bytes() == 3 * 32 * quantized_bytes_per_token(2, 2, 16, scheme, group_size=8)
    fp16 = kv_cache_bytes(2, 2, 16, tokens=1)
    assert quantized_bytes_per_token(2, 2, 16, "int8") < fp16 * 0.6


def test_generation_through_a_quantised_cache():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, context_length=40, n_layer=2, n_head=2, n_embd=16)).eval()
    prompt = torch.randint(0, 11, (2, 5))
    ref, ref_logits = generate(model, prompt, 20, return_logits=True)
    out, logits = generate(model, prompt, 20, cache=QuantizedCache(2, 2, 8, "int8"), return_logits=True)
    assert out.shape == ref.shape and (logits - ref_logits).abs().max() < 0.05
    out4, _ = generate(model, prompt, 20, cache=QuantizedCache(2, 2, 8, "int4", group_size=4), return_logits=True)
    assert out4.shape == ref.shape


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="scheme"):
        QuantizedCache(1, 1, 8, scheme="int3")
    with pytest.raises(ValueError, match="group_size"):
        QuantizedCache(1, 1, 8, scheme="int4", group_size=3)
    with pytest.raises(ValueError, match="multiple of group_size"):
        quantize_groups(torch.randn(1, 1, 5, 8), 4, 4, dim=2)
