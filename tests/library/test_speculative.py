"""Speculative decoding: the acceptance rule keeps the target's distribution exactly, greedy output
equals the target's alone, and bad input gets a clear error."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_course.decoding import generate
from attn_course.gpt import GPT, GPTConfig
from attn_course.kv_cache import DynamicCache
from attn_course.speculative import (
    emitted_distribution,
    expected_speedup,
    expected_tokens_per_call,
    output_distribution,
    residual_distribution,
    speculative_generate,
    target_output_distribution,
    verify,
)


def _model(seed, n_layer=2, vocab=11):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, context_length=64, n_layer=n_layer, n_head=2, n_embd=16)).eval()


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 9))
def test_the_emitted_distribution_is_the_targets_for_any_draft(seed, V):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(V, generator=g, dtype=torch.float64) * 2, -1)
    q = torch.softmax(torch.randn(V, generator=g, dtype=torch.float64) * 2, -1)
    torch.testing.assert_close(emitted_distribution(p, q), p, rtol=0, atol=1e-12)
    assert residual_distribution(p, q).sum().item() == pytest.approx(1.0)


def test_sampled_first_tokens_follow_the_target():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    q = torch.tensor([[0.1, 0.1, 0.4, 0.4]], dtype=torch.float64)
    n, counts = 20_000, torch.zeros(4)
    for _ in range(n):
        x = int(torch.multinomial(q[0], 1, generator=g))
        accepted, nxt = verify(p, q, torch.tensor([x]), g)
        counts[x if accepted else nxt] += 1
    # 3 standard errors of a proportion near 0.5 over 20,000 draws is about 0.011.
    torch.testing.assert_close(counts / n, p[0].float(), rtol=0, atol=0.015)


def test_greedy_verification_stops_at_the_first_disagreement():
    p = torch.eye(5)[[1, 2, 3]]  # the target wants 1, then 2, then (after two drafts) 3
    q = torch.full((2, 5), 0.2)
    assert verify(p, q, torch.tensor([1, 2]), greedy=True) == (2, 3)
    assert verify(p, q, torch.tensor([1, 4]), greedy=True) == (1, 2)
    assert verify(p, q, torch.tensor([0, 2]), greedy=True) == (0, 1)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_output_equals_the_target_alone(k):
    target, draft = _model(0, n_layer=2), _model(1, n_layer=1)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    alone = generate(target, prompt, 20)
    fast, stats = speculative_generate(target, draft, prompt, 20, k=k)
    assert torch.equal(fast, alone)
    assert stats.target_calls == stats.rounds and stats.accepted + stats.rounds == 20


def test_a_draft_that_is_the_target_is_always_accepted():
    target = _model(0)
    fast, stats = speculative_generate(target, target, torch.tensor([[2, 7]]), 16, k=4)
    assert torch.equal(fast, generate(target, torch.tensor([[2, 7]]), 16))
    assert stats.acceptance_rate == 1.0 and stats.target_calls == 4  # 5 tokens a call: 4 drafts + 1


def test_sampling_is_reproducible_and_stays_in_the_vocabulary():
    target, draft = _model(0), _model(1, n_layer=1)
    a, _ = speculative_generate(target, draft, torch.tensor([[1]]), 12, k=3, temperature=1.0, seed=5)
    b, _ = speculative_generate(target, draft, torch.tensor([[1]]), 12, k=3, temperature=1.0, seed=5)
    assert torch.equal(a, b) and a.shape == (1, 13) and int(a.max()) < 11


def test_bad_input_gets_clear_errors():
    target = _model(0)
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(target, _model(1, vocab=12), torch.tensor([[1]]), 4)
    with pytest.raises(ValueError, match="idx"):
        speculative_generate(target, target, torch.tensor([[1], [2]]), 4)
    with pytest.raises(ValueError, match="context_length"):
        speculative_generate(target, target, torch.tensor([[1]]), 100)
    with pytest.raises(ValueError, match="another vocabulary"):
        verify(torch.full((2, 4), 0.25), torch.full((1, 5), 0.2), torch.tensor([0]))


def test_crop_forgets_the_rejected_positions():
    cache = DynamicCache(2, 1, 4)
    for layer in range(2):
        cache.update(layer, torch.randn(1, 1, 6, 4), torch.randn(1, 1, 6, 4))
    cache.crop(4)
    assert cache.seq_len == 4 and cache.keys[1].shape == (1, 1, 4, 4)
    with pytest.raises(ValueError, match="length"):
        cache.crop(5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_whole_output_has_the_targets_law_exactly(k):
    target, draft = _model(0, vocab=5), _model(1, n_layer=1, vocab=5)
    prompt = torch.tensor([[3, 1]])
    spec = output_distribution(target, draft, prompt, 3, k=k, temperature=1.0)
    alone = target_output_distribution(target, prompt, 3, temperature=1.0)
    assert spec.shape == (5, 5, 5) and alone.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(spec, alone, rtol=0, atol=1e-12)


def test_a_long_run_near_the_context_keeps_both_caches_in_step():
    """The draft's cache holds exactly the tokens so far: a draft that is the target is always
    accepted, and a run up to the context length never feeds a position twice."""
    target = _model(0)
    prompt = torch.tensor([[2, 7, 1]])
    fast, stats = speculative_generate(target, target, prompt, 61, k=8)
    assert torch.equal(fast, generate(target, prompt, 61))
    assert stats.alpha == 1.0 and stats.rejections == 0 and stats.draft_calls == stats.drafted


def test_the_stats_count_rejections_and_estimate_alpha():
    target, draft = _model(0), _model(1, n_layer=1)
    _, stats = speculative_generate(target, draft, torch.tensor([[1, 2]]), 40, k=4, temperature=1.0, seed=0)
    assert stats.rejections <= stats.rounds and stats.draft_calls == stats.drafted
    assert stats.alpha == stats.accepted / (stats.accepted + stats.rejections)
    assert stats.acceptance_rate <= stats.alpha  # untested drafts count as drafted


def test_expected_tokens_per_call_is_the_geometric_sum():
    assert expected_tokens_per_call(0.0, 5) == 1.0
    assert expected_tokens_per_call(1.0, 5) == 6.0
    assert expected_tokens_per_call(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_speedup(0.5, 2, 0.0) == pytest.approx(1.75)
    assert expected_speedup(0.5, 2, 0.5) == pytest.approx(1.75 / 2)
    with pytest.raises(ValueError, match="alpha"):
        expected_tokens_per_call(1.5, 2)
