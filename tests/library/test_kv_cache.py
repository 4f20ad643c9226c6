"""KV caches: the memory formula, what each cache returns, paging and prefix sharing."""

import pytest
import torch

from attn_course.decoding import generate_shared_prompt
from attn_course.gpt import GPT, GPTConfig
from attn_course.kv_cache import (
    PUBLISHED_SHAPES,
    DynamicCache,
    PagedCache,
    SlidingWindowCache,
    StaticCache,
    kv_cache_bytes,
)


def kv(B=2, H=2, T=1, d=4, start=0):
    """Keys whose every entry is its position, so returned positions can be read off."""
    k = torch.arange(start, start + T, dtype=torch.float32)[None, None, :, None].expand(B, H, T, d).clone()
    return k, -k


# --------------------------------------------------------------------------- formula


def test_kv_cache_bytes_formula_and_published_shapes():
    assert kv_cache_bytes(12, 12, 64, 1024) == 2 * 12 * 12 * 64 * 1024 * 2
    assert PUBLISHED_SHAPES["gpt2"].kv_bytes_per_token() == 36_864  # 36 KiB per token in fp16
    assert PUBLISHED_SHAPES["llama3-8b"].kv_bytes_per_token() == 131_072  # 128 KiB: GQA, 8 KV heads
    assert PUBLISHED_SHAPES["llama3-70b"].kv_bytes(8192) == 2 * 80 * 8 * 128 * 8192 * 2  # 2.5 GiB
    with pytest.raises(ValueError, match="num_kv_heads must be a positive int"):
        kv_cache_bytes(1, 0, 64, 10)


def test_allocated_bytes_match_the_formula():
    static = StaticCache(3, 2, 8, batch_size=4, max_len=32, dtype=torch.float16)
    assert static.allocated_bytes() == kv_cache_bytes(3, 2, 8, 32, batch=4, dtype_bytes=2)
    dynamic = DynamicCache(3, 2, 8)
    for _ in range(5):
        for layer in range(3):
            dynamic.update(layer, *kv(B=4, H=2, d=8))
    assert dynamic.allocated_bytes() == kv_cache_bytes(3, 2, 8, 5, batch=4, dtype_bytes=4)
    window = SlidingWindowCache(3, 2, 8, batch_size=4, window=6)
    assert window.allocated_bytes() == kv_cache_bytes(3, 2, 8, 6, batch=4, dtype_bytes=4)


# --------------------------------------------------------------------------- what update returns


@pytest.mark.parametrize("make", [
    lambda: DynamicCache(2, 2, 4),
    lambda: StaticCache(2, 2, 4, batch_size=2, max_len=20),
    lambda: PagedCache(2, 2, 4, batch_size=2, block_size=3, num_blocks=16),
], ids=["dynamic", "static", "paged"])
def test_full_caches_return_every_position_in_order(make):
    cache = make()
    for start, T in [(0, 5), (5, 1), (6, 1), (7, 4)]:
        for layer in range(2):
            k_all, v_all = cache.update(layer, *kv(T=T, start=start))
        assert cache.seq_len == start + T
        assert k_all[0, 0, :, 0].tolist() == list(range(start + T))
        assert torch.equal(v_all, -k_all)
        assert cache.key_positions(1).tolist() == list(range(start + T + 1))
    cache.reset()
    assert cache.seq_len == 0


def test_sliding_window_keeps_the_last_w_positions():
    cache = SlidingWindowCache(1, 2, 4, batch_size=2, window=4)
    k_all, _ = cache.update(0, *kv(T=3))  # filling
    assert k_all[0, 0, :, 0].tolist() == [0, 1, 2]
    k_all, _ = cache.update(0, *kv(T=1, start=3))
    assert k_all[0, 0, :, 0].tolist() == [0, 1, 2, 3]
    positions = cache.key_positions(1)
    k_all, _ = cache.update(0, *kv(T=1, start=4))  # overwrites slot 0
    assert k_all[0, 0, :, 0].tolist() == [4, 1, 2, 3] == positions.tolist()
    positions = cache.key_positions(3)
    k_all, _ = cache.update(0, *kv(T=3, start=5))  # a chunk: old keys in order, then the new ones
    assert k_all[0, 0, :, 0].tolist() == [1, 2, 3, 4, 5, 6, 7] == positions.tolist()
    k_all, _ = cache.update(0, *kv(T=1, start=8))
    assert sorted(k_all[0, 0, :, 0].tolist()) == [5, 6, 7, 8]
    assert cache.seq_len == 9


def test_update_checks_shapes_and_order():
    cache = StaticCache(2, 2, 4, batch_size=2, max_len=3)
    with pytest.raises(ValueError, match=r"k has shape \(2, 3, 1, 4\); expected \(B, 2, T, 4\)"):
        cache.update(0, torch.zeros(2, 3, 1, 4), torch.zeros(2, 3, 1, 4))
    with pytest.raises(ValueError, match="batch size 2"):
        cache.update(0, *kv(B=1))
    with pytest.raises(ValueError, match="out of turn"):
        cache.update(1, *kv())
    cache.update(0, *kv(T=3))
    cache.update(1, *kv(T=3))
    with pytest.raises(ValueError, match="StaticCache is full"):
        cache.update(0, *kv())


# --------------------------------------------------------------------------- paging


def test_paged_cache_allocates_blocks_on_demand():
    cache = PagedCache(1, 2, 4, batch_size=2, block_size=4, num_blocks=6)
    cache.update(0, *kv(T=5))  # 5 positions -> 2 blocks per sequence
    assert cache.blocks_in_use == 4
    for t in range(5, 8):
        cache.update(0, *kv(T=1, start=t))
    assert cache.blocks_in_use == 4  # positions 5..7 fit in the second block
    cache.update(0, *kv(T=1, start=8))
    assert cache.blocks_in_use == 6
    assert cache.used_bytes() == cache.allocated_bytes()
    with pytest.raises(RuntimeError, match="out of blocks"):
        for t in range(9, 13):
            cache.update(0, *kv(T=1, start=t))
    cache.reset()
    assert cache.blocks_in_use == 0


def test_prefix_sharing_and_copy_on_write():
    cache = PagedCache(1, 2, 4, batch_size=1, block_size=4, num_blocks=8)
    cache.update(0, *kv(B=1, T=6))  # blocks: [full, half-full]
    assert cache.blocks_in_use == 2
    cache.fork(0)
    cache.fork(0)
    assert cache.blocks_in_use == 2 and cache.ref_counts[cache.block_tables[0][0]] == 3
    k_new = torch.tensor([100.0, 200.0, 300.0])[:, None, None, None].expand(3, 2, 1, 4)
    k_all, _ = cache.update(0, k_new, -k_new)  # each appends into the shared half-full block
    assert cache.copies_on_write == 2  # the last one to write keeps the original
    assert cache.blocks_in_use == 1 + 3
    assert len({t[0] for t in cache.block_tables}) == 1  # the full prefix block is still shared
    for b, x in enumerate([100, 200, 300]):
        assert k_all[b, 0, :, 0].tolist() == [0, 1, 2, 3, 4, 5, x]
    cache.reset()
    assert cache.blocks_in_use == 0 and cache.batch_size == 1


def test_forked_sequences_decode_like_separate_ones():
    """One prompt prefilled once, forked three ways, continued differently: each row equals its own full run."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, context_length=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)).eval()
    prompt = torch.randint(0, 40, (1, 6))
    cache = model.new_cache("paged", batch_size=1, block_size=4, num_blocks=16)
    with torch.no_grad():
        model(prompt, cache)
        for _ in range(2):
            cache.fork(0)
        steps = torch.randint(0, 40, (3, 3))
        for t in range(3):
            logits = model(steps[:, t:t + 1], cache)
        full = model(torch.cat([prompt.expand(3, 6), steps], dim=1))
    torch.testing.assert_close(logits[:, -1], full[:, -1], atol=1e-5, rtol=0)
    assert cache.blocks_in_use < 3 * 3  # the prompt's full block is stored once


def test_generate_shared_prompt():
    """Samples share the prompt's blocks; each sample's last logits equal a full forward of its own sequence."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, context_length=40, n_layer=2, n_head=4, n_embd=32)).eval()
    prompt = torch.randint(0, 40, (1, 17))  # 4 full blocks of 4 and one partial one
    out, cache = generate_shared_prompt(model, prompt, 5, 6, temperature=1.0, seed=0, block_size=4)
    assert out.shape == (5, 23) and torch.equal(out[:, :17], prompt.expand(5, 17))
    assert len({tuple(row) for row in out[:, 17:].tolist()}) > 1  # different samples
    assert cache.copies_on_write == 4  # the partial prompt block, copied by all but the last writer
    # 5 samples x 23 tokens: 6 blocks each without sharing; the 4 full prompt blocks are stored once
    assert cache.blocks_in_use == 5 * 6 - 4 * 4
    with torch.no_grad():
        assert cache.seq_len == 22  # the last sampled token has not been fed back yet
        step = model(out[:, -1:], cache)  # feed it through the shared cache
        full = model(out)
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=0)
