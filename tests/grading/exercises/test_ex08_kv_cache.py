"""Exercise 8 (decoding with a KV cache): the references match the library and equal recomputation
without a cache, and plausible wrong submissions lose their points with a message that says
where to look (the case's diagnosis or the rule; the task's hint only on request).

Whole notebooks (the solution source: full marks; the learner notebook: 0) are graded in
tests/grading/test_grading.py; wrong submissions through the sandbox in
tests/grading/test_wrong_submissions.py (tests/submissions/wrong/ex08_kv_cache.py).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from attn_course.exercises.ex08_kv_cache import (
    EXERCISE,
    PagedCacheReference,
    RingCacheReference,
    cached_attention_step_reference,
    offset_causal_mask_reference,
)
from attn_course.grading.compare import case_generator
from attn_course.grading.drivers import chunked_attention, paged_generate, recompute_logits, ring_generate
from attn_course.grading.source_check import forbidden_in_source
from attn_course.kv_cache import PagedCache


def _cases(task):
    return EXERCISE.task(task).cases(case_generator(0))


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize("T, S", [(1, 0), (4, 0), (1, 7), (3, 5), (6, 2)])
def test_offset_mask_is_query_position_at_least_key_position(T, S):
    q_pos, k_pos = torch.arange(S, S + T), torch.arange(S + T)
    assert torch.equal(offset_causal_mask_reference(T, S), q_pos[:, None] >= k_pos[None, :])


@pytest.mark.parametrize("case", _cases("cached_attention_step"), ids=lambda c: c.name)
def test_chunked_steps_equal_causal_attention_over_the_whole_sequence(case):
    x, w_q, w_k, w_v, chunks = case.args
    out, cache_k, cache_v = chunked_attention(cached_attention_step_reference, *case.args)
    want = F.scaled_dot_product_attention(x @ w_q, x @ w_k, x @ w_v, is_causal=True)
    assert torch.allclose(out, want, atol=1e-5)
    assert torch.allclose(cache_k, x @ w_k) and torch.allclose(cache_v, x @ w_v)


@pytest.mark.parametrize("case", _cases("RingCache"), ids=lambda c: c.name)
def test_generating_with_the_ring_equals_recomputation_with_a_window_mask(case):
    weights, slope, window, chunks, steps = case.args
    tokens, logits = ring_generate(RingCacheReference, *case.args)
    sequence = [t for c in chunks for t in c] + tokens.tolist()
    assert logits.shape[0] == len(sequence)
    assert torch.allclose(logits, recompute_logits(weights, slope, window, sequence), atol=1e-5)
    # ... and the window matters: without it, the logits differ (the cases are not a growing cache in disguise)
    if len(sequence) > window:
        assert not torch.allclose(logits, recompute_logits(weights, slope, 0, sequence), atol=1e-3)


def _rows_per_sequence(program):
    """For each sequence, the indices of its rows in the driver's logits (a fork inherits its parent's)."""
    rows, n = [[]], 0
    for step in program:
        if step[0] == "fork":
            rows.append(list(rows[step[1]]))
            continue
        count = len(step[2]) if step[0] == "feed" else step[2]
        rows[step[1]] += list(range(n, n + count))
        n += count
    return rows


@pytest.mark.parametrize("case", _cases("PagedCache"), ids=lambda c: c.name)
def test_every_continuation_of_the_paged_cache_equals_recomputation(case):
    weights, slope, block_size, num_blocks, program = case.args
    logits, tokens, blocks = paged_generate(PagedCacheReference, *case.args)
    for seq, rows in enumerate(_rows_per_sequence(program)):
        want = recompute_logits(weights, slope, 0, tokens[seq].tolist())
        assert torch.allclose(logits[rows], want, atol=1e-5), seq
        assert blocks[seq] == math.ceil(len(tokens[seq]) / block_size)


def test_paged_reference_copies_on_write_as_the_library_does():
    g = torch.Generator().manual_seed(0)
    P, d = 4, 3
    lib = PagedCache(1, 1, d, batch_size=1, block_size=P, num_blocks=16)
    ref = PagedCacheReference(P, 16, d)
    ref.new_sequence()
    k, v = torch.randn(6, d, generator=g), torch.randn(6, d, generator=g)  # a prompt of 6: block 2 half full
    lib.update(0, k[None, None], v[None, None])
    ref.update(0, k, v)
    lib.fork(0)
    ref.fork(0)
    for _ in range(3):  # both sequences append: the shared half-full block is copied once
        k, v = torch.randn(2, 1, 1, d, generator=g), torch.randn(2, 1, 1, d, generator=g)
        lib_k, lib_v = lib.update(0, k, v)  # (2, 1, S, d)
        for seq in (0, 1):
            ref_k, ref_v, pos = ref.update(seq, k[seq, 0], v[seq, 0])
            assert torch.equal(ref_k, lib_k[seq, 0]) and torch.equal(ref_v, lib_v[seq, 0])
            assert torch.equal(pos, torch.arange(lib.seq_len))
    assert lib.copies_on_write == 1
    assert lib.blocks_in_use == len({b for t in ref.block_tables for b in t}) == 5


def test_the_ring_holds_its_window_only():
    ring = RingCacheReference(window=3, head_dim=2)
    for p in range(7):
        keys, _, pos = ring.update(torch.full((1, 2), float(p)), torch.zeros(1, 2))
        assert sorted(pos.tolist()) == list(range(max(0, p - 2), p + 1))
        assert torch.equal(keys[:, 0], pos.float())  # each key is reported with its own position


# --------------------------------------------------------------------------- wrong submissions


def test_hints_come_on_request_only(check, capsys):
    result = check("offset_causal_mask", lambda T, S_cached: torch.ones(T, S_cached + T, dtype=torch.bool).tril(),
                   quiet=True)
    assert result.points == 0 and "Hint:" in result.message
    assert EXERCISE.task("offset_causal_mask").hint not in result.message
    assert check.hint("offset_causal_mask") == EXERCISE.task("offset_causal_mask").hint


def _top_p(logits, p, keep_crossing=True):
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass = probs.cumsum(-1) - probs if keep_crossing else probs.cumsum(-1)
    drop = mass >= p if keep_crossing else mass > p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def test_a_careful_top_p_passes_and_dropping_the_crossing_token_fails(check):
    assert check("top_p_filter", _top_p, quiet=True).passed
    result = check("top_p_filter", lambda logits, p: _top_p(logits, p, keep_crossing=False), quiet=True)
    assert result.points == 0 and "inf at" in result.message  # a token the reference keeps was dropped


def test_a_mask_that_ignores_the_cache_is_caught(check):
    result = check("offset_causal_mask", lambda T, S_cached: torch.ones(T, T, dtype=torch.bool).tril(), quiet=True)
    assert result.points == 0 and "expected (1, 7)" in result.message and "sees every cached key" in result.message


def _step(x, cache_k, cache_v, w_q, w_k, w_v, append_first=True, offset=True):
    keys, values = torch.cat([cache_k, x @ w_k]), torch.cat([cache_v, x @ w_v])
    T, S = x.shape[0], cache_k.shape[0]
    seen = (keys, values) if append_first else (cache_k, cache_v)
    scores = (x @ w_q) @ seen[0].T / math.sqrt(w_q.shape[1])
    mask = torch.ones(T, seen[0].shape[0], dtype=torch.bool).tril(S if offset else 0)
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ seen[1], keys, values


def test_a_step_with_an_upper_left_mask_fails_on_a_chunk_after_a_cache(check):
    assert check("cached_attention_step", _step, quiet=True).passed
    result = check("cached_attention_step", lambda *a: _step(*a, offset=False), quiet=True)
    assert result.points == 0 and "prefill then one token" in result.message


def test_torch_attention_is_refused_in_the_step(check):
    def cached_attention_step(x, cache_k, cache_v, w_q, w_k, w_v):
        keys, values = torch.cat([cache_k, x @ w_k]), torch.cat([cache_v, x @ w_v])
        T, S = x.shape[0], cache_k.shape[0]
        mask = torch.ones(T, S + T, dtype=torch.bool).tril(S)
        return F.scaled_dot_product_attention(x @ w_q, keys, values, attn_mask=mask), keys, values

    result = check("cached_attention_step", cached_attention_step, quiet=True)
    assert result.points == 0 and "scaled_dot_product_attention" in result.message


class _KeepsEverything:
    """A 'sliding window' cache that never forgets: right logits, memory growing with the sequence."""

    def __init__(self, window, head_dim):
        self.keys, self.values = torch.zeros(0, head_dim), torch.zeros(0, head_dim)

    def update(self, k, v):
        self.keys, self.values = torch.cat([self.keys, k]), torch.cat([self.values, v])
        return self.keys, self.values, torch.arange(self.keys.shape[0])


class _RingInSlotOrder(RingCacheReference):
    """The ring's keys in slot order, labelled as if they were oldest first."""

    def update(self, k, v):
        keys, values, positions = super().update(k, v)
        return keys, values, torch.sort(positions).values


def test_a_ring_that_keeps_everything_breaks_the_rule(check):
    assert check("RingCache", RingCacheReference, quiet=True).passed
    result = check("RingCache", _KeepsEverything, quiet=True)
    assert result.points == 0 and "keeps only the last `window` positions" in result.message


def test_a_ring_that_mislabels_its_slots_is_caught(check):
    result = check("RingCache", _RingInSlotOrder, quiet=True)
    assert result.points == 0 and "wrong values" in result.message


class _NoCopyOnWrite(PagedCacheReference):
    """Forks share blocks, but an append writes into a shared block as if it were its own."""

    def update(self, seq, k, v):
        self.ref_counts = [min(c, 1) for c in self.ref_counts]  # forget the sharing: no copy ever
        return super().update(seq, k, v)


def test_a_paged_cache_without_copy_on_write_corrupts_the_sibling(check):
    assert check("PagedCache", PagedCacheReference, quiet=True).passed
    result = check("PagedCache", _NoCopyOnWrite, quiet=True)
    assert result.points == 0 and "fork inside a block" in result.message


def test_the_source_check_reads_a_class_task():
    task = EXERCISE.task("RingCache")
    own = "import torch\nclass RingCache:\n    def update(self, k, v):\n        return torch.cat([k, v])\n"
    assert forbidden_in_source([own], task) is None
    borrowed = "from attn_course.kv_cache import SlidingWindowCache\nclass RingCache(SlidingWindowCache):\n    pass\n"
    assert "SlidingWindowCache" in forbidden_in_source([borrowed], task)


class _SlottedKeepsEverything(_KeepsEverything):
    __slots__ = ("keys", "values")


def test_the_memory_rule_sees_slotted_attributes_too(check):
    assert "keeps only the last `window` positions" in check("RingCache", _SlottedKeepsEverything, quiet=True).message
