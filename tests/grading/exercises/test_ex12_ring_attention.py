"""Exercise 12 (ring attention on one process): the references match the library and the
chapter's lab, careful submissions pass, and wrong ones lose their points with a message that
says what was wrong (the case's diagnosis or the rule).

Whole notebooks (the solution source: full marks; the learner notebook: 0) are graded in
tests/grading/test_grading.py; the wrong submissions through the sandbox in
tests/grading/test_wrong_submissions.py.
"""

import math

import torch

from attn_course.exercises.ex12_ring_attention import EXERCISE, zigzag_reference
from attn_course.flash import naive_attention
from attn_course.labs.ring import causal_pairs_per_rank, simulate_ring


def _step(m, l, acc, q, k_block, v_block, q_pos, k_pos, causal, safe=True, mask=True):
    s = q @ k_block.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, n, c)
    if causal and mask:
        s = s.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
    m_new = torch.maximum(m, s.amax(-1))
    shift = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new) if safe else m_new
    alpha, p = torch.exp(m - shift), torch.exp(s - shift[..., None])
    return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + p @ v_block


def _sim(q, k, v, world_size, causal, layout=zigzag_reference):
    B, H, N, _ = q.shape
    pos = layout(N, world_size)  # (P, n)
    out = torch.empty(B, H, N, v.shape[-1])
    for r in range(world_size):
        n = pos.shape[1]
        st = (torch.full((B, H, n), -math.inf), torch.zeros(B, H, n), torch.zeros(B, H, n, v.shape[-1]))
        for s in range(world_size):
            src = pos[(r - s) % world_size]
            st = _step(*st, q[:, :, pos[r]], k[:, :, src], v[:, :, src], pos[r], src, causal)
        out[:, :, pos[r]] = st[2] / st[1][..., None]
    return out


def test_zigzag_reference_is_the_chapters_layout_and_balances_the_work():
    for N, P in ((16, 2), (64, 4), (48, 3)):
        pos = zigzag_reference(N, P)
        assert sorted(pos.flatten().tolist()) == list(range(N))
        assert (pos + 1).sum(1).tolist() == causal_pairs_per_rank(N, P, "zigzag")
        assert len(set(causal_pairs_per_rank(N, P, "zigzag"))) == 1


def test_ring_references_match_the_lab_simulation():
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    for causal in (False, True):
        final = EXERCISE.task("ring_attention_sim").reference(q, k, v, 4, causal)
        torch.testing.assert_close(final, naive_attention(q, k, v, causal=causal))
        assert max(simulate_ring(q, k, v, 4, causal)[-1].to_final) < 1e-5


def test_careful_submissions_pass(check):
    assert check("ring_step", _step, quiet=True).passed
    assert check("zigzag_chunks", zigzag_reference, quiet=True).passed
    assert check("ring_attention_sim", _sim, quiet=True).passed


def test_nan_on_a_row_that_sees_nothing_gets_the_diagnosis(check):
    result = check("ring_step", lambda *a: _step(*a, safe=False), quiet=True)
    assert result.points == 0 and "NaN" in result.message and "no NaN" in result.message
    assert EXERCISE.task("ring_step").hint not in result.message  # the task's hint only on request
    assert check.hint("ring_step") == EXERCISE.task("ring_step").hint


def test_an_unmasked_own_chunk_fails_with_the_diagnosis(check):
    result = check("ring_step", lambda *a: _step(*a, mask=False), quiet=True)
    assert result.points == 0 and "diagonal block" in result.message


def test_contiguous_layout_fails_and_a_whole_matrix_breaks_the_rule(check):
    def contiguous(N, world_size):
        return torch.arange(N).reshape(world_size, N // world_size)

    assert check("zigzag_chunks", contiguous, quiet=True).points == 0

    def whole(q, k, v, world_size, causal):
        return naive_attention(q.clone(), k, v, causal=causal)  # the library's: refused as well

    assert check("ring_attention_sim", whole, quiet=True).points == 0

    def by_hand(q, k, v, world_size, causal):
        s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, N, N)
        if causal:
            s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), -math.inf)
        w = torch.exp(s - s.amax(-1, keepdim=True))
        return w / w.sum(-1, keepdim=True) @ v

    result = check("ring_attention_sim", by_hand, quiet=True)
    assert result.points == 0 and "no whole (N, N) score matrix" in result.message
