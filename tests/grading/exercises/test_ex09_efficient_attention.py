"""Exercise 9 (efficient attention): the references match the library, the rules of each core
task separate the idea from the values, and plausible wrong submissions lose their points with a
message that says what was wrong (the case's diagnosis, or the rule), never the code.

Whole notebooks (the solution source: full marks; the learner notebook: 0) are graded in
tests/grading/test_grading.py; the wrong submissions of tests/submissions/wrong/ go through the
sandboxed grader in tests/grading/test_wrong_submissions.py (the rules the OS enforces included).
"""

import dataclasses
import math

import torch
import torch.nn.functional as F

from attn_course import sparse
from attn_course.exercises.ex09_efficient_attention import EXERCISE
from attn_course.linear import causal_linear_attention, linear_attention_quadratic


def test_step_reference_replays_causal_linear_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 3, 6, 4, generator=g), torch.randn(2, 3, 6, 4, generator=g), torch.randn(2, 3, 6, 5, generator=g)
    step = EXERCISE.task("linear_attention_step").reference
    kv, z = torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4)
    outs = []
    for t in range(6):
        out, kv, z = step(kv, z, q[:, :, t], k[:, :, t], v[:, :, t])
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, 2), causal_linear_attention(q, k, v))
    torch.testing.assert_close(torch.stack(outs, 2), linear_attention_quadratic(q, k, v, causal=True))


def test_references_match_their_naive_twins_on_the_small_cases():
    g = torch.Generator().manual_seed(1)
    for case in EXERCISE.task("block_sparse_attention").cases(g)[:-1]:
        q, k, v, layout, b = case.args
        mask = sparse.layout_to_mask(layout, b, q.shape[2], k.shape[2])
        torch.testing.assert_close(EXERCISE.task("block_sparse_attention").reference(*case.args),
                                   sparse.dense_masked_attention(q, k, v, mask))
    for case in EXERCISE.task("chunkwise_linear_attention").cases(g)[:-1]:
        q, k, v, _ = case.args
        torch.testing.assert_close(EXERCISE.task("chunkwise_linear_attention").reference(*case.args),
                                   linear_attention_quadratic(q, k, v, causal=True))


def _layout(mask, block_size, ceil=True):
    b = block_size
    L, S = mask.shape
    Lb, Sb = (math.ceil(L / b), math.ceil(S / b)) if ceil else (L // b, S // b)
    padded = torch.zeros(Lb * b, Sb * b, dtype=torch.bool)
    padded[: min(L, Lb * b), : min(S, Sb * b)] = mask[: Lb * b, : Sb * b]
    return padded.view(Lb, b, Sb, b).any(dim=3).any(dim=1)


def test_a_careful_layout_passes_and_floor_division_fails_on_the_partial_block(check):
    assert check("block_layout", _layout, quiet=True).passed
    result = check("block_layout", lambda m, b: _layout(m, b, ceil=False), quiet=True)
    assert result.points == 0 and "N not a multiple of the block" in result.message
    assert "the last block holds 2 positions" in result.message  # the case's diagnosis
    assert "view" not in result.message  # the task hint comes only on request
    assert "view with two more dimensions" in check.hint("block_layout")


def _sparse(q, k, v, layout, b, every_tile=False, empty_rows_nan=False):
    B, H, L, d = q.shape
    out = torch.zeros(B, H, L, v.shape[3])
    for i in range(layout.shape[0]):
        blocks = list(range(layout.shape[1])) if every_tile else layout[i].nonzero().flatten().tolist()
        i0, i1 = i * b, min((i + 1) * b, L)
        if not blocks:
            if empty_rows_nan:
                out[:, :, i0:i1] = float("nan")
            continue
        idx = torch.cat([torch.arange(j * b, min((j + 1) * b, k.shape[2])) for j in blocks])
        s = q[:, :, i0:i1] @ k[:, :, idx].transpose(-2, -1) / math.sqrt(d)
        if every_tile:  # computed, then masked
            allowed = layout[i].repeat_interleave(b)[: k.shape[2]]
            if not allowed.any():
                continue
            s = s.masked_fill(~allowed, float("-inf"))
        out[:, :, i0:i1] = torch.softmax(s, dim=-1) @ v[:, :, idx]
    return out


def test_block_sparse_passes_and_computing_every_tile_breaks_the_rule(check):
    assert check("block_sparse_attention", _sparse, quiet=True).passed
    result = check("block_sparse_attention", lambda *a: _sparse(*a, every_tile=True), quiet=True)
    assert result.points == 0 and result.message.startswith("right values, but it did")
    assert "FLOPs" in result.message and "compute only the tiles the layout allows" in result.message


def test_a_query_block_with_no_tile_gets_its_diagnosis(check):
    result = check("block_sparse_attention", lambda *a: _sparse(*a, empty_rows_nan=True), quiet=True)
    assert result.points == 0 and "no allowed key at all" in result.message


def _chunkwise(q, k, v, C, carry=True, causal_inside=True):
    B, H, N, d = q.shape
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    kv, z = torch.zeros(B, H, d, v.shape[3]), torch.zeros(B, H, d)
    outs = []
    for t0 in range(0, N, C):
        qc, kc, vc = phi_q[:, :, t0:t0 + C], phi_k[:, :, t0:t0 + C], v[:, :, t0:t0 + C]
        A = qc @ kc.transpose(-2, -1)
        if causal_inside:
            A = A * torch.ones(qc.shape[2], qc.shape[2]).tril()
        outs.append((A @ vc + qc @ kv) / (A.sum(-1, keepdim=True) + qc @ z.unsqueeze(-1) + 1e-6))
        if carry:
            kv, z = kv + kc.transpose(-2, -1) @ vc, z + kc.sum(-2)
    return torch.cat(outs, 2)


def test_chunkwise_passes_and_a_state_left_behind_fails(check):
    assert check("chunkwise_linear_attention", _chunkwise, quiet=True).passed
    result = check("chunkwise_linear_attention", lambda *a: _chunkwise(*a, carry=False), quiet=True)
    assert result.points == 0 and "every query reads all the chunks before its own" in result.message
    result = check("chunkwise_linear_attention", lambda *a: _chunkwise(*a, causal_inside=False), quiet=True)
    assert result.points == 0 and "one chunk, N = 8" in result.message


def test_the_quadratic_form_breaks_the_rule_on_a_long_case():
    from attn_course.grading.compare import evaluate
    from attn_course.grading.harness import call_local

    task = EXERCISE.task("chunkwise_linear_attention")

    def quadratic(q, k, v, C):
        return linear_attention_quadratic(q, k, v, causal=True)

    # the cases without the 1.3 GB one: the pytest process has no 1 GiB limit to enforce
    small = dataclasses.replace(task, cases=lambda g: task.cases(g)[:-1])
    result = evaluate(small, lambda cases: [call_local(quadratic, c, (), task.rule) for c in cases])
    assert result.points == 0 and "256 x 256" in result.message and "no (N, N) matrix" in result.message


def test_read_before_write_fails_with_the_diagnosis(check):
    def linear_attention_step(kv, z, q_t, k_t, v_t):
        phi_q, phi_k = F.elu(q_t) + 1, F.elu(k_t) + 1
        out = (phi_q.unsqueeze(-2) @ kv).squeeze(-2) / ((phi_q * z).sum(-1, keepdim=True) + 1e-6)  # BUG: old state
        return out, kv + phi_k.unsqueeze(-1) * v_t.unsqueeze(-2), z + phi_k

    result = check("linear_attention_step", linear_attention_step, quiet=True)
    assert result.points == 0 and "The state is empty here" in result.message
    assert "Build the new state first" in check.hint("linear_attention_step")


def test_in_place_state_update_is_caught(check):
    def linear_attention_step(kv, z, q_t, k_t, v_t):
        phi_q, phi_k = F.elu(q_t) + 1, F.elu(k_t) + 1
        kv += phi_k.unsqueeze(-1) * v_t.unsqueeze(-2)  # BUG: mutates the caller's state
        z += phi_k
        out = (phi_q.unsqueeze(-2) @ kv).squeeze(-2) / ((phi_q * z).sum(-1, keepdim=True) + 1e-6)
        return out, kv, z

    result = check("linear_attention_step", linear_attention_step, quiet=True)
    assert result.points == 0 and "in place" in result.message


def test_unhalved_flops_fail_on_the_causal_case(check):
    def attention_flops(batch, heads, N, head_dim, causal):
        return 4 * batch * heads * N * N * head_dim  # BUG: not halved when causal

    result = check("attention_flops", attention_flops, quiet=True)
    assert result.points == 0 and "causal" in result.message and "about half the scores" in result.message
