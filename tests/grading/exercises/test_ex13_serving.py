"""Exercise 13 (serving): the references match the library (the scheduler step driven through a
trace equals ``scheduler.serve``; the paged decode equals attention over the gathered cache; the
speculative table's marginal is the target's distribution; the radix tree's matches are the
longest cached prefixes), and plausible wrong submissions lose their points with a message that
says where to look (the case's diagnosis or the rule; the task's hint only on request).

Whole notebooks (the solution source: full marks; the learner notebook: 0) are graded in
tests/grading/test_grading.py; wrong submissions through the sandbox in
tests/grading/test_wrong_submissions.py (tests/submissions/wrong/ex13_serving.py).
"""

import pytest
import torch
import torch.nn.functional as F

from attn_course.exercises.ex13_serving import (
    EXERCISE,
    RadixTreeReference,
    int8_per_token_reference,
    paged_decode_reference,
    schedule_step_reference,
    speculative_table_reference,
)
from attn_course.grading.compare import case_generator
from attn_course.grading.drivers import radix_replay, schedule_trace
from attn_course.scheduler import Request, StepCost, serve
from attn_course.speculative import emitted_distribution


def _cases(task, seed=0):
    return EXERCISE.task(task).cases(case_generator(seed))


# --------------------------------------------------------------------------- schedule_step


def _served(requests, num_blocks, block_size, token_budget, max_num_seqs, steps):
    """The library's chunked-prefill serving of the same trace, one model-clock unit per step."""
    reqs = [Request(r, tuple([1] * p), m, float(a)) for r, (p, m, a) in enumerate(requests)]
    result = serve(reqs, "chunked", num_blocks=num_blocks, block_size=block_size, max_num_seqs=max_num_seqs,
                   token_budget=token_budget, cost=StepCost(1.0, 0.0, 0.0))
    fed = torch.zeros(steps, len(requests), dtype=torch.long)
    for s in result.steps:
        for c in s.chunks:
            fed[int(s.start), c.rid] = len(c.tokens)
    return fed, torch.tensor([result.requests[r].preemptions for r in range(len(requests))])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_step_driven_through_a_trace_serves_as_the_library_does(seed):
    for case in _cases("schedule_step", seed):
        fed, preempted = schedule_trace(schedule_step_reference, *case.args)
        lib_fed, lib_preemptions = _served(*case.args)
        assert torch.equal(fed, lib_fed), case.name
        assert torch.equal(preempted.sum(0), lib_preemptions), case.name
        requests = case.args[0]
        needed = torch.tensor([p + m - 1 for p, m, _ in requests])
        assert (fed.sum(0) >= needed).all()  # everyone finished (a preempted request feeds some tokens twice)


def test_the_cases_chunk_prompts_limit_slots_and_preempt_repeatedly():
    by_name = {c.name: c for c in _cases("schedule_step")}
    fed, _ = schedule_trace(schedule_step_reference, *by_name["a long prompt in chunks"].args)
    budget = by_name["a long prompt in chunks"].args[3]
    assert (fed[:, 1] > 0).sum() > 1 and fed.sum(1).max() == budget  # the long prompt spans steps
    fed, _ = schedule_trace(schedule_step_reference, *by_name["arrivals over time, two slots"].args)
    assert ((fed > 0).sum(1) <= 2).all() and ((fed > 0).sum(1) == 2).any()
    _, preempted = schedule_trace(schedule_step_reference, *by_name["a small pool: preemption"].args)
    assert preempted.sum() >= 2
    _, preempted = schedule_trace(schedule_step_reference, *by_name["a tiny pool, blocks of 2: repeated preemption"].args)
    assert preempted.sum(0).max() >= 2  # one request preempted twice


# --------------------------------------------------------------------------- paged_decode


@pytest.mark.parametrize("case", _cases("paged_decode"), ids=lambda c: c.name)
def test_paged_reference_equals_attention_over_the_gathered_cache(case):
    q, k_pool, v_pool, table, lens = case.args
    B, H, d = q.shape
    H_kv = k_pool.shape[2]
    out = paged_decode_reference(*case.args)
    for b in range(B):
        n = int(lens[b])
        pos = torch.arange(n)
        blocks = table[b, pos // k_pool.shape[1]]
        k = k_pool[blocks, pos % k_pool.shape[1]].transpose(0, 1).repeat_interleave(H // H_kv, 0)  # (H, n, d)
        v = v_pool[blocks, pos % k_pool.shape[1]].transpose(0, 1).repeat_interleave(H // H_kv, 0)
        want = F.scaled_dot_product_attention(q[b][:, None], k, v)[:, 0]  # (H, d_v)
        assert torch.allclose(out[b], want, atol=1e-5), b


def test_the_long_case_cannot_hold_a_sequence_s_keys():
    long = [c for c in _cases("paged_decode") if c.max_numel][0]
    q, k_pool, _, _, lens = long.args
    one_sequence = int(lens.min()) * k_pool.shape[2] * k_pool.shape[3]  # the shorter sequence's keys alone
    assert one_sequence > long.max_numel
    assert k_pool.shape[0] * k_pool.shape[1] * k_pool.shape[2] * q.shape[-1] > long.max_numel  # the pool too


# --------------------------------------------------------------------------- speculative_table


@pytest.mark.parametrize("case", _cases("speculative_table"), ids=lambda c: c.name)
def test_the_table_is_a_joint_distribution_whose_marginals_are_q_and_p(case):
    p, q = case.args
    table = speculative_table_reference(p, q)
    assert table.shape == p.shape + p.shape[-1:] and (table >= 0).all()
    assert torch.allclose(table.sum(-1), q, atol=1e-12)  # the draft proposes x ~ q
    assert torch.allclose(table.sum(-2), p, atol=1e-12)  # the round emits y ~ p
    assert torch.allclose(table.sum(-2), emitted_distribution(p, q), atol=1e-12)


# --------------------------------------------------------------------------- int8_per_token


@pytest.mark.parametrize("case", _cases("int8_per_token"), ids=lambda c: c.name)
def test_int8_reference_is_symmetric_per_token_within_half_a_step(case):
    (x,) = case.args
    q, x_hat = int8_per_token_reference(x)
    assert q.dtype == torch.int8 and x_hat.dtype == x.dtype and not torch.isnan(x_hat).any()
    absmax = x.abs().amax(dim=-1, keepdim=True)
    step = absmax / 127
    assert ((x_hat - x).abs() <= step / 2 + 1e-12).all()
    assert torch.equal(q.abs().amax(dim=-1, keepdim=True) == 127, absmax > 0)  # the largest magnitude is +-127


# --------------------------------------------------------------------------- RadixTree


def _longest_cached(stored, tokens):
    best = 0
    for s in stored:
        n = 0
        while n < min(len(s), len(tokens)) and s[n] == tokens[n]:
            n += 1
        best = max(best, n)
    return best


@pytest.mark.parametrize("case", _cases("RadixTree"), ids=lambda c: c.name)
def test_matches_are_the_longest_cached_prefixes_and_the_tree_is_compressed(case):
    (operations,) = case.args
    results, edges = radix_replay(RadixTreeReference, operations)
    stored = []
    for (op, tokens), (got, _) in zip(operations, results.tolist()):
        longest = _longest_cached(stored, tokens)
        assert got == (longest if op == "match" else len(tokens) - longest)
        if op == "insert":
            stored.append(list(tokens))
    assert sum(len(e) for e in edges) == len({tuple(s[:i]) for s in stored for i in range(1, len(s) + 1)})
    assert any(len(e) > 1 for e in edges)  # a trie of one token per edge would not pass


# --------------------------------------------------------------------------- wrong submissions


def test_hints_come_on_request_only(check):
    result = check("speculative_table", _defined(_wrong_variants().SPEC_RESIDUAL_NAN, "speculative_table"), quiet=True)
    assert result.points == 0 and "Hint: q = p" in result.message
    assert EXERCISE.task("speculative_table").hint not in result.message
    assert check.hint("speculative_table") == EXERCISE.task("speculative_table").hint


def _wrong_variants():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "submissions" / "wrong" / "ex13_serving.py"
    spec = importlib.util.spec_from_file_location("ex13_wrong", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _defined(source, name):
    namespace = {}
    exec(source, namespace)
    return namespace[name]


def test_the_reference_classes_and_functions_pass(check):
    assert check("schedule_step", schedule_step_reference, quiet=True).passed
    assert check("paged_decode", _defined(_wrong_variants()._PAGED, "paged_decode"), quiet=True).passed  # the correct one
    assert check("speculative_table", _defined(_wrong_variants()._SPEC, "speculative_table"), quiet=True).passed
    assert check("RadixTree", RadixTreeReference, quiet=True).passed


@pytest.mark.parametrize("name, expected", [
    ("SCHEDULE_WHOLE_PROMPTS", "a long prompt in chunks"),
    ("SCHEDULE_ADMITS_AFTER_PREEMPTION", "preemption"),
    ("SCHEDULE_BLOCKS_PER_CHUNK", "a small pool: preemption"),
    ("SCHEDULE_ADMISSION_FIRST", "Hint:"),
])
def test_a_scheduler_that_bends_the_policy_fails_on_a_trace(check, name, expected):
    result = check("schedule_step", _defined(getattr(_wrong_variants(), name), "schedule_step"), quiet=True)
    assert result.points == 0 and expected in result.message


@pytest.mark.parametrize("name, expected", [
    ("PAGED_GATHER", "no contiguous copy of a sequence's cache"),
    ("PAGED_BLOCKS_IN_ORDER", "blocks scattered over the pool"),
    ("PAGED_STALE_SLOTS", "lengths not multiples of the block size"),
    ("PAGED_HEADS_INTERLEAVED", "grouped-query heads"),
    ("PAGED_SCALE_BY_DV", "d_v differs from d"),
])
def test_a_paged_decode_that_bends_the_idea_fails(check, name, expected):
    result = check("paged_decode", _defined(getattr(_wrong_variants(), name), "paged_decode"), quiet=True)
    assert result.points == 0 and expected in result.message


@pytest.mark.parametrize("name, expected", [
    ("SPEC_NO_MIN", "wrong values"), ("SPEC_RESIDUAL_UNCLIPPED", "wrong values"),
    ("SPEC_RESIDUAL_NOT_NORMALISED", "wrong values"), ("SPEC_RESAMPLE_FROM_P", "wrong values"),
    ("SPEC_RESIDUAL_NAN", "the draft equals the target"),
])
def test_a_bent_acceptance_rule_fails(check, name, expected):
    result = check("speculative_table", _defined(getattr(_wrong_variants(), name), "speculative_table"), quiet=True)
    assert result.points == 0 and expected in result.message


@pytest.mark.parametrize("name, expected", [
    ("INT8_PER_TENSOR", "tokens of very different sizes"), ("INT8_TRUNCATES", "differs"),
    ("INT8_ZERO_ROW_NAN", "an all-zero token"), ("INT8_SCALE_128", "differs"), ("INT8_ASYMMETRIC", "differs"),
])
def test_a_bent_int8_quantisation_fails(check, name, expected):
    result = check("int8_per_token", _defined(getattr(_wrong_variants(), name), "int8_per_token"), quiet=True)
    assert result.points == 0 and expected in result.message


@pytest.mark.parametrize("name, expected", [
    ("RADIX_TRIE", "Hint:"), ("RADIX_MATCH_NO_SPLIT", "splits it"),
    ("RADIX_MATCH_WHOLE_EDGES", "Hint:"), ("RADIX_INSERT_NO_SPLIT", "Hint:"),
    ("RADIX_EXTENDS_LEAF", "many turns of one conversation"),
])
def test_a_radix_tree_that_skips_the_split_or_the_compression_fails(check, name, expected):
    result = check("RadixTree", _defined(getattr(_wrong_variants(), name), "RadixTree"), quiet=True)
    assert result.points == 0 and expected in result.message

