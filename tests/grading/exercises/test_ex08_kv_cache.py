"""Exercise 8 (decoding with a KV cache): the references match the library, and plausible wrong
submissions lose their points with a message that says where to look.

Whole notebooks (the solution source: full marks; the learner notebook: 0) are graded in
tests/grading/test_grading.py.
"""

import math

import torch
import torch.nn.functional as F

from attn_course.exercises.ex08_kv_cache import attend_one_query_reference, cache_append_reference
from attn_course.kv_cache import DynamicCache


def test_cache_append_is_what_the_dynamic_cache_does():
    g = torch.Generator().manual_seed(0)
    cache = DynamicCache(num_layers=1, num_kv_heads=2, head_dim=4)
    k0, v0 = torch.randn(1, 2, 3, 4, generator=g), torch.randn(1, 2, 3, 4, generator=g)
    k1, v1 = torch.randn(1, 2, 1, 4, generator=g), torch.randn(1, 2, 1, 4, generator=g)
    cache.update(0, k0, v0)
    got = cache.update(0, k1, v1)
    want = cache_append_reference(k0, v0, k1, v1)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_attend_one_query_is_torch_sdpa_with_a_padding_mask():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, 2, 1, 8, generator=g), torch.randn(3, 2, 6, 8, generator=g), torch.randn(3, 2, 6, 8, generator=g)
    key_mask = torch.arange(6)[None] >= torch.tensor([0, 4, 2])[:, None]  # (B, S): left padding
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
    assert torch.allclose(attend_one_query_reference(q, k, v, key_mask), want, atol=1e-6)


def _top_p(logits, p, keep_crossing=True):
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass = probs.cumsum(-1) - probs if keep_crossing else probs.cumsum(-1)
    drop = mass >= p if keep_crossing else mass > p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def test_a_careful_top_p_passes_and_dropping_the_crossing_token_fails(check):
    assert check("top_p_filter", _top_p, quiet=True).passed
    result = check("top_p_filter", lambda logits, p: _top_p(logits, p, keep_crossing=False), quiet=True)
    assert result.points == 0 and "Hint:" in result.message


def test_forgetting_the_padding_mask_is_caught(check):
    def attend_one_query(q, k_cache, v_cache, key_mask):
        w = torch.softmax(q @ k_cache.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        return w @ v_cache

    result = check("attend_one_query", attend_one_query, quiet=True)
    assert result.points == 0 and "left padding" in result.message and "-inf" in result.message


def test_torch_attention_is_refused(check):
    def attend_one_query(q, k_cache, v_cache, key_mask):
        return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=key_mask[:, None, None, :])

    result = check("attend_one_query", attend_one_query, quiet=True)
    assert result.points == 0 and "scaled_dot_product_attention" in result.message


def test_tiling_instead_of_interleaving_kv_heads_fails(check):
    result = check("repeat_kv", lambda x, n_rep: x.repeat(1, n_rep, 1, 1), quiet=True)
    assert result.points == 0 and "wrong values" in result.message and "repeat_interleave" in result.message
    assert check("repeat_kv", lambda x, n_rep: x.repeat_interleave(n_rep, dim=1), quiet=True).passed


def test_forgetting_the_two_in_the_cache_size_fails(check):
    def kv_cache_bytes(num_layers, num_kv_heads, head_dim, tokens, batch, dtype_bytes):
        return num_layers * num_kv_heads * head_dim * tokens * batch * dtype_bytes

    result = check("kv_cache_bytes", kv_cache_bytes, quiet=True)
    assert result.points == 0 and "one K and one V" in result.message


def test_an_in_place_append_is_caught(check):
    def cache_append(cache_k, cache_v, k, v):
        out = torch.cat([cache_k, k], 2), torch.cat([cache_v, v], 2)
        cache_k.zero_()  # the right result, but the caller's cache is overwritten
        return out

    assert check("cache_append", lambda ck, cv, k, v: (torch.cat([ck, k], 2), torch.cat([cv, v], 2)),
                 quiet=True).passed
    result = check("cache_append", cache_append, quiet=True)
    assert result.points == 0 and "in place" in result.message
