"""The scheduler: every request gets the tokens it would get alone, whatever the policy, budget or
memory pressure; steps respect their budget, slots and pool; bad input gets a clear error."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_course.decoding import generate
from attn_course.gpt import GPT, GPTConfig
from attn_course.scheduler import BlockAllocator, PagedRunner, Request, ScheduledChunk, StepCost, serve


def _model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=40, context_length=96, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    return GPT(cfg).to(dtype).eval()


def _requests(n=10, seed=0, max_prompt=30, max_new=20, spacing=1.5):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        T = int(torch.randint(1, max_prompt + 1, (1,), generator=g))
        new = int(torch.randint(1, max_new + 1, (1,), generator=g))
        out.append(Request(i, tuple(torch.randint(0, 40, (T,), generator=g).tolist()), new, arrival=i * spacing))
    return out


def _alone(model, requests):
    return {r.rid: tuple(generate(model, torch.tensor([r.prompt]), r.max_new_tokens)[0, len(r.prompt):].tolist())
            for r in requests}


@pytest.mark.parametrize("policy, kwargs", [
    ("static", {}),
    ("continuous", {"token_budget": 64}),
    ("chunked", {"token_budget": 7}),
    ("chunked", {"token_budget": 16, "num_blocks": 14, "block_size": 4}),  # tight pool: preemptions
    ("continuous", {"token_budget": 64, "num_blocks": 16, "block_size": 4}),
])
def test_every_request_gets_the_tokens_it_gets_alone(policy, kwargs):
    model, requests = _model(), _requests()
    result = serve(requests, policy, model, max_num_seqs=4, **{"num_blocks": 64, "block_size": 8, **kwargs})
    assert result.outputs() == _alone(model, requests)
    if kwargs.get("num_blocks", 64) < 20:
        assert result.preemptions > 0
        assert any(c.kind == "recompute" for s in result.steps for c in s.chunks)


def test_the_runner_matches_the_model_on_a_mixed_step():
    model = _model(torch.float32)
    alloc = BlockAllocator(16, 4)
    runner = PagedRunner(model, alloc)
    a, b = [3, 1, 4, 1, 5, 9, 2], [2, 7, 1, 8]
    for rid, toks in ((0, a), (1, b)):
        alloc.grow(rid, len(toks) + 1)
    runner.step([ScheduledChunk(0, 0, tuple(a), "prefill", True), ScheduledChunk(1, 0, tuple(b[:3]), "prefill", False)])
    logits = runner.step([ScheduledChunk(0, len(a), (6,), "decode", True),
                          ScheduledChunk(1, 3, tuple(b[3:]), "prefill", True)])  # a decode beside a prefill chunk
    want = torch.stack([model(torch.tensor([a + [6]]))[0, -1], model(torch.tensor([b]))[0, -1]])
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)


def test_steps_respect_budget_slots_and_pool():
    requests = _requests(30, seed=1, max_prompt=60, max_new=40, spacing=0.3)
    result = serve(requests, "chunked", None, num_blocks=40, block_size=4, max_num_seqs=5, token_budget=12)
    assert all(s.tokens <= 12 and len(s.chunks) <= 5 and s.blocks_in_use <= 40 for s in result.steps)
    assert result.preemptions > 0
    assert all(len(r.output) == q.max_new_tokens for r, q in zip(result.requests.values(), requests))
    # every prompt token of every request is fed, in chunks, before its first token
    for q in requests:
        first = result.requests[q.rid].first_token_step
        assert sum(len(c.tokens) for s in result.steps[:first + 1] for c in s.chunks if c.rid == q.rid) >= len(q.prompt)


def test_chunked_prefill_splits_a_long_prompt():
    r = Request(0, tuple(range(50)), 3)
    result = serve([r], "chunked", None, token_budget=16)
    assert [s.tokens for s in result.steps] == [16, 16, 16, 2, 1, 1]
    assert [s.chunks[0].emits for s in result.steps] == [False, False, False, True, True, True]


def test_static_batching_runs_every_row_as_long_as_the_longest():
    reqs = [Request(0, (1, 2), 3), Request(1, (3,), 10), Request(2, (4, 5, 6), 1)]
    result = serve(reqs, "static", None, max_num_seqs=3)
    assert len(result.steps) == 10 and result.extra_tokens == (10 - 3) + (10 - 1)
    cont = serve(reqs, "continuous", None, max_num_seqs=3, token_budget=32)
    assert cont.extra_tokens == 0 and len(cont.steps) == 10
    assert cont.metrics["tokens_fed"] < result.metrics["tokens_fed"]


def test_the_model_clock():
    cost = StepCost(1.0, 0.5, 0.25)
    assert cost(4, 8) == 1.0 + 2.0 + 2.0
    gpt2 = StepCost.for_model(124e6, 36864)
    assert 0.005 < gpt2.per_token < 0.02 and gpt2.per_key < gpt2.per_token


def test_block_allocator_is_all_or_nothing():
    alloc = BlockAllocator(5, 4)
    assert alloc.grow(0, 9) and alloc.tables[0] == [0, 1, 2]
    assert not alloc.grow(1, 9) and 1 not in alloc.tables and alloc.num_free == 2
    assert alloc.free(0) == 3 and alloc.num_free == 5


def test_errors():
    model = _model()
    with pytest.raises(ValueError, match="prompt"):
        Request(0, (), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        Request(0, (1,), 0)
    with pytest.raises(ValueError, match="pool has only"):
        serve([Request(0, tuple(range(30)), 10)], "chunked", None, num_blocks=2, block_size=4)
    with pytest.raises(ValueError, match="token_budget"):
        serve([Request(0, tuple(range(30)), 10)], "continuous", None, token_budget=16)
    with pytest.raises(ValueError, match="vocab_size"):
        serve([Request(0, (41,), 2)], "chunked", model)
    with pytest.raises(ValueError, match="context_length"):
        serve([Request(0, tuple(range(30)) * 3, 10)], "chunked", model, token_budget=512)
    with pytest.raises(ValueError, match="policy"):
        serve([Request(0, (1,), 2)], "fifo")
    with pytest.raises(ValueError, match="distinct"):
        serve([Request(0, (1,), 2), Request(0, (2,), 2)])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["static", "continuous", "chunked"]), st.integers(4, 40),
       st.integers(1, 6), st.sampled_from([2, 4, 8]))
def test_any_trace_completes_within_its_limits(seed, policy, num_blocks, max_num_seqs, block_size):
    g = torch.Generator().manual_seed(seed)
    reqs = []
    for i in range(8):
        T, new = int(torch.randint(1, 12, (1,), generator=g)), int(torch.randint(1, 10, (1,), generator=g))
        reqs.append(Request(i, tuple(range(T)), new, arrival=float(torch.rand(1, generator=g)) * 10))
    if max(-(-r.max_positions // block_size) for r in reqs) > num_blocks:
        return  # a request that cannot fit the pool is rejected (test_errors)
    result = serve(reqs, policy, None, num_blocks=num_blocks, block_size=block_size, max_num_seqs=max_num_seqs,
                   token_budget=24)
    assert all(len(result.requests[r.rid].output) == r.max_new_tokens for r in reqs)
    assert all(s.blocks_in_use <= num_blocks and len(s.chunks) <= max_num_seqs for s in result.steps)
    assert policy == "static" or all(s.tokens <= 24 for s in result.steps)
    assert all(result.requests[r.rid].first_token >= r.arrival for r in reqs)
    if policy != "static" and result.preemptions == 0:
        assert result.metrics["tokens_fed"] == sum(r.max_positions for r in reqs)  # every position fed once
