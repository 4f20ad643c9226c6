"""The radix tree of cached prefixes: matching, insertion, LRU eviction that spares referenced
prefixes, and generation from a cached prefix equal to generation from scratch."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_course.decoding import generate
from attn_course.gpt import GPT, GPTConfig
from attn_course.prefix_cache import RadixCache, cache_from_rows, generate_with_prefix_cache, kv_rows


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=40, context_length=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    return GPT(cfg).to(dtype).eval()


def test_match_and_insert_share_prefixes():
    t = RadixCache()
    assert t.insert([1, 2, 3, 4]) == 4 and t.insert([1, 2, 5]) == 1 and t.insert([1, 2, 3]) == 0
    assert t.size == 5 and sorted(t.prefixes()) == [(1, 2, 3, 4), (1, 2, 5)]
    m = t.match_prefix([1, 2, 3, 9])
    assert m.length == 3 and m.node.key == (3,)  # the edge (3, 4) was split so the match ends on a node
    assert t.size == 5 and t.match_prefix([7]).length == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=8), min_size=1, max_size=12),
       st.lists(st.integers(0, 3), max_size=8))
def test_the_match_is_the_longest_common_prefix_with_anything_inserted(seqs, query):
    t = RadixCache()
    for s in seqs:
        t.insert(s)
    best = max(next((i for i, (a, b) in enumerate(zip(s, query)) if a != b), min(len(s), len(query))) for s in seqs)
    assert t.match_prefix(query).length == best
    assert t.size == len({tuple(s[:i + 1]) for s in seqs for i in range(len(s))})  # one node per distinct prefix


def test_payload_rows_follow_the_tokens():
    t = RadixCache()
    t.insert([1, 2, 3], torch.tensor([[10.0], [20.0], [30.0]]))
    t.insert([1, 2, 4], torch.tensor([[10.0], [20.0], [40.0]]))
    assert t.match_prefix([1, 2, 4, 5]).value.flatten().tolist() == [10.0, 20.0, 40.0]
    assert t.match_prefix([1, 2]).value.flatten().tolist() == [10.0, 20.0]


def test_lru_eviction_spares_referenced_prefixes():
    t = RadixCache(capacity=8)
    t.insert([1, 2, 3])
    t.insert([4, 5, 6])
    t.lock(t.match_prefix([1, 2, 3]).node)  # in flight; also the most recently used
    t.match_prefix([4, 5, 6])  # now the most recently used
    t.insert([7, 8, 9])  # 9 tokens > 8: the least recently used unreferenced leaf goes
    assert sorted(t.prefixes()) == [(1, 2, 3), (7, 8, 9)] and t.size == 6 and t.evicted == 3
    t.evict(100)  # everything unreferenced
    assert t.prefixes() == [(1, 2, 3)]
    t.unlock(t.match_prefix([1, 2, 3]).node)
    t.evict(100)
    assert t.size == 0 and t.prefixes() == []


def test_eviction_climbs_to_parents_that_become_leaves():
    t = RadixCache()
    t.insert([1, 2, 3])
    t.insert([1, 2, 4])
    assert t.size == 4 and t.evict(3) == 4 and t.size == 0  # both leaves, then their parent: whole edges


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_generation_from_a_cached_prefix_equals_generation_from_scratch(dtype):
    model, tree = _model(dtype), RadixCache(capacity=500)
    system = list(range(1, 25))
    conversation = system + [30, 31]
    for turn in range(3):
        for user in ([32, 33], [34]):  # two requests sharing the system prompt and the history
            prompt = conversation + user
            out, stats = generate_with_prefix_cache(model, tree, prompt, 6)
            ref = generate(model, torch.tensor([prompt]), 6)[0, len(prompt):].tolist()
            assert out == tuple(ref)
            assert stats.matched + stats.computed == len(prompt)
        assert turn == 0 or stats.matched >= len(conversation)  # the history came from the tree
        conversation = prompt + list(out) + [35]


def test_rows_round_trip():
    model = _model(torch.float32)
    cache = model.new_cache("dynamic")
    logits = model(torch.tensor([[1, 2, 3, 4]]), cache)
    rows = kv_rows(cache)
    assert rows.shape == (4, 2, 2, 2, 8)
    again = cache_from_rows(rows, model)
    nxt = torch.tensor([[5]])
    torch.testing.assert_close(model(nxt, again), model(nxt, cache))
    del logits


def test_errors():
    t = RadixCache()
    with pytest.raises(ValueError, match="token ids"):
        t.insert([1, -2])
    with pytest.raises(TypeError, match="sequence"):
        t.insert("abc")
    with pytest.raises(ValueError, match="value"):
        t.insert([1, 2], torch.zeros(3, 1))
    with pytest.raises(ValueError, match="capacity"):
        RadixCache(capacity=0)
    t.insert([1, 2])
    with pytest.raises(ValueError, match="unlock"):
        t.unlock(t.match_prefix([1, 2]).node)
    model = _model()
    with pytest.raises(ValueError, match="vocab_size"):
        generate_with_prefix_cache(model, RadixCache(), [1, 99], 2)
    with pytest.raises(ValueError, match="context_length"):
        generate_with_prefix_cache(model, RadixCache(), [1] * 120, 20)
    with pytest.raises(ValueError, match="no keys and values"):
        generate_with_prefix_cache(model, t, [1, 2, 3], 2)  # a tree of tokens only
    with pytest.raises(ValueError, match="rows"):
        cache_from_rows(torch.zeros(3, 2, 2, 2, 7), model)
