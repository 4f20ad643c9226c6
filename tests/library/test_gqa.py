"""Grouped-query attention: repeat_kv, naive vs fused paths, GQA as MHA with tied heads, cached decoding."""

import pytest
import torch
import torch.nn.functional as F

from attn_course.decoding import generate
from attn_course.gpt import GPT, GPTConfig
from attn_course.gqa import GroupedQueryAttention, grouped_query_attention, repeat_kv

H = 4


def test_repeat_kv_is_repeat_interleave():
    x = torch.randn(2, 2, 5, 3)
    assert torch.equal(repeat_kv(x, 3), x.repeat_interleave(3, dim=1))
    assert repeat_kv(x, 1) is x
    with pytest.raises(ValueError, match="n_rep must be a positive int"):
        repeat_kv(x, 0)


@pytest.mark.parametrize("num_kv_heads", [1, 2, H], ids=["MQA", "GQA", "MHA"])
def test_attention_paths_agree(num_kv_heads):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, H, 6, 8, generator=g)
    k, v = (torch.randn(2, num_kv_heads, 6, 8, generator=g) for _ in range(2))
    mask = torch.rand(2, 1, 6, 6, generator=g) > 0.3
    mask[..., 0] = True
    fast = grouped_query_attention(q, k, v, mask)
    naive = grouped_query_attention(q, k, v, mask, naive=True)
    # a loop over query heads, each with its group's key/value head
    n_rep = H // num_kv_heads
    loop = torch.stack([F.scaled_dot_product_attention(q[:, h], k[:, h // n_rep], v[:, h // n_rep],
                                                       attn_mask=mask[:, 0]) for h in range(H)], dim=1)
    torch.testing.assert_close(fast, loop, atol=1e-5, rtol=0)
    torch.testing.assert_close(naive, loop, atol=1e-5, rtol=0)
    causal = grouped_query_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(causal, grouped_query_attention(q, k, v, is_causal=True, naive=True), atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_kv_heads", [1, 2, H], ids=["MQA", "GQA", "MHA"])
def test_gqa_module_is_mha_with_shared_kv_heads(num_kv_heads):
    """Copy each KV head's projection to every query head of its group: an MHA module gives the same output."""
    torch.manual_seed(0)
    D, d = 32, 32 // H
    gqa = GroupedQueryAttention(D, H, num_kv_heads)
    mha = GroupedQueryAttention(D, H, H)
    n_rep = H // num_kv_heads
    with torch.no_grad():
        w, b = gqa.qkv.weight, gqa.qkv.bias
        q_w, k_w, v_w = w.split([H * d, num_kv_heads * d, num_kv_heads * d])
        q_b, k_b, v_b = b.split([H * d, num_kv_heads * d, num_kv_heads * d])
        rep_w = lambda t: t.view(num_kv_heads, d, D).repeat_interleave(n_rep, 0).reshape(H * d, D)
        rep_b = lambda t: t.view(num_kv_heads, d).repeat_interleave(n_rep, 0).reshape(H * d)
        mha.qkv.weight.copy_(torch.cat([q_w, rep_w(k_w), rep_w(v_w)]))
        mha.qkv.bias.copy_(torch.cat([q_b, rep_b(k_b), rep_b(v_b)]))
        mha.out.load_state_dict(gqa.out.state_dict())
    x = torch.randn(2, 7, D)
    torch.testing.assert_close(gqa(x, is_causal=True), mha(x, is_causal=True), atol=1e-5, rtol=0)
    assert gqa.qkv.weight.shape == ((H + 2 * num_kv_heads) * d, D)


@pytest.mark.parametrize("num_kv_heads", [1, 2, H], ids=["MQA", "GQA", "MHA"])
def test_gqa_model_cached_equals_uncached(num_kv_heads):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, context_length=32, n_layer=2, n_head=H, n_kv_head=num_kv_heads,
                          n_embd=32)).eval()
    idx = torch.randint(0, 50, (2, 5))
    ref, ref_logits = generate(model, idx, 8, cache=None, return_logits=True)
    out, logits = generate(model, idx, 8, cache="static", return_logits=True)
    assert torch.equal(out, ref)
    assert (logits - ref_logits).abs().max() <= 1e-5
    cache = model.new_cache("static", batch_size=2, max_len=13)
    assert cache.keys[0].shape == (2, num_kv_heads, 13, 8)  # the cache shrinks with the KV heads


def test_heads_that_do_not_divide():
    with pytest.raises(ValueError, match="num_kv_heads = 3 must divide num_heads = 4"):
        GroupedQueryAttention(32, 4, 3)
    with pytest.raises(ValueError, match="num_heads = 3 must divide embed_dim = 32"):
        GroupedQueryAttention(32, 3, 1)
    with pytest.raises(ValueError, match="H_kv dividing the 4 query heads"):
        grouped_query_attention(torch.zeros(1, 4, 2, 8), torch.zeros(1, 3, 2, 8), torch.zeros(1, 3, 2, 8))
