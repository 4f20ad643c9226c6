"""Exercise 10 (FlashAttention's pieces): the references match the library, the tiled task's rule
(one tile of scores at a time) separates the idea from the values, and plausible wrong
submissions lose their points with a message that says what was wrong (the case's diagnosis, or
the rule), never the code; the task hint comes only from ``check.hint``.

Whole notebooks (the solution source: full marks; the learner notebook: 0) are graded in
tests/grading/test_grading.py.
"""

import dataclasses
import math

import torch

from attn_course.exercises.ex10_flash_attention import EXERCISE
from attn_course.flash import memory_traffic, naive_attention
from attn_course.grading.compare import evaluate
from attn_course.grading.harness import call_local


def test_io_reference_counts_elements():
    task = EXERCISE.task("flash_io")
    naive, flash = task.reference(4096, 64, 98304)
    t = memory_traffic(4096, 64, 192 * 1024, dtype_bytes=2)
    assert (naive, flash) == (t.naive_elements, t.flash_elements)
    assert isinstance(naive, int) and isinstance(flash, int)


def _update(m, l, acc, s, v, rescale=True, safe=True):
    m_new = torch.maximum(m, s.amax(-1))
    shift = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new) if safe else m_new
    alpha = torch.exp(m - shift) if rescale else torch.ones_like(m)
    p = torch.exp(s - shift.unsqueeze(-1))
    return m_new, alpha * l + p.sum(-1), alpha.unsqueeze(-1) * acc + p @ v


def _tiled(q, k, v, causal, block_size, mask_diagonal=True):
    B, H, L, d = q.shape
    S = k.shape[2]
    out = torch.empty(B, H, L, v.shape[-1])
    for i0 in range(0, L, block_size):
        qi = q[:, :, i0 : i0 + block_size]
        nq = qi.shape[2]
        m, l = torch.full((B, H, nq), -math.inf), torch.zeros(B, H, nq)
        acc = torch.zeros(B, H, nq, v.shape[-1])
        stop = min(S, i0 + nq) if causal else S
        for j0 in range(0, stop, block_size):
            kj, vj = k[:, :, j0 : min(j0 + block_size, stop)], v[:, :, j0 : min(j0 + block_size, stop)]
            s = qi @ kj.transpose(-2, -1) / math.sqrt(d)
            if causal and mask_diagonal:
                s = s.masked_fill(torch.arange(j0, j0 + kj.shape[2]) > torch.arange(i0, i0 + nq)[:, None], -math.inf)
            m, l, acc = _update(m, l, acc, s, vj)
        out[:, :, i0 : i0 + nq] = acc / l.unsqueeze(-1)
    return out


def _small(task_name):
    """The task without its last case (L = S = 16384: a whole score matrix there is 1 GiB, which
    the grader's kernel limit stops and a pytest process would simply allocate)."""
    task = EXERCISE.task(task_name)
    return dataclasses.replace(task, cases=lambda g: task.cases(g)[:-1])


def _run(task, fn):
    return evaluate(task, lambda cases: [call_local(fn, c, task.forbidden, task.rule) for c in cases])


def test_careful_submissions_pass(check):
    assert check("online_softmax_update", _update, quiet=True).passed
    assert check("tiled_attention", _tiled, quiet=True).passed
    q, k, v = (torch.randn(1, 2, 37, 8) for _ in range(3))
    torch.testing.assert_close(_tiled(q, k, v, True, 16), naive_attention(q, k, v, causal=True))


def test_the_reference_is_the_naive_attention_with_l_and_s_apart_and_d_apart_from_d_v():
    cases = EXERCISE.task("tiled_attention").cases(torch.Generator().manual_seed(0))
    assert any(c.args[0].shape[2] != c.args[1].shape[2] and c.args[3] for c in cases)  # causal, L != S
    assert all(c.args[0].shape[3] != c.args[2].shape[3] for c in cases[:4])  # d != d_v
    for case in cases[:-1]:
        q, k, v, causal, _ = case.args
        torch.testing.assert_close(EXERCISE.task("tiled_attention").reference(*case.args),
                                   naive_attention(q, k, v, causal=causal))
    big = cases[-1]
    assert big.args[0].shape[2] * big.args[1].shape[2] * 4 >= EXERCISE.task("tiled_attention").memory_limit_bytes


def test_forgotten_rescaling_fails_with_the_diagnosis(check):
    result = check("online_softmax_update", lambda *a: _update(*a, rescale=False), quiet=True)
    assert result.points == 0 and "beat the running max" in result.message and "the max changes" in result.message
    assert "alpha" not in result.message
    assert "what factor brings it to the new one" in check.hint("online_softmax_update")


def test_nan_on_a_fully_masked_row_gets_the_diagnosis(check):
    result = check("online_softmax_update", lambda *a: _update(*a, safe=False), quiet=True)
    assert result.points == 0 and "NaN" in result.message and "every key masked so far" in result.message


def test_unmasked_diagonal_fails_on_a_causal_case():
    result = _run(_small("tiled_attention"), lambda *a: _tiled(*a, mask_diagonal=False))
    assert result.points == 0 and "causal" in result.message


def _whole(q, k, v, causal, block_size):
    L, S = q.shape[2], k.shape[2]
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, L, S)
    if causal:
        s = s.masked_fill(torch.arange(S)[None, :] > torch.arange(L)[:, None], -math.inf)
    p = torch.exp(s - s.amax(-1, keepdim=True))
    return (p @ v) / p.sum(-1, keepdim=True)


def _row_blocks(q, k, v, causal, block_size):
    return torch.cat([_whole(q[:, :, i0:i0 + block_size], k, v, False, block_size) if not causal else
                      _whole(q, k, v, True, block_size)[:, :, i0:i0 + block_size]
                      for i0 in range(0, q.shape[2], block_size)], dim=2)


def test_the_whole_matrix_and_whole_rows_of_it_break_the_rule():
    task = _small("tiled_attention")
    for fn in (_whole, _row_blocks):
        result = _run(task, fn)
        assert result.points == 0 and result.message.startswith("right values, but it created a tensor")
        assert "never the whole (L, S) matrix" in result.message


def test_the_scale_of_the_value_width_fails():
    def by_d_v(q, k, v, causal, block_size):
        return _tiled(q * math.sqrt(q.shape[-1] / v.shape[-1]), k, v, causal, block_size)  # 1 / sqrt(d_v)

    result = _run(_small("tiled_attention"), by_d_v)
    assert result.points == 0 and "d = 8 and the value width d_v = 4 differ" in result.message


def test_library_and_sdpa_are_refused(check):
    def tiled_attention(q, k, v, causal, block_size):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    result = _run(_small("tiled_attention"), tiled_attention)
    assert result.points == 0 and "calls `torch.nn.functional.scaled_dot_product_attention`" in result.message

    def merge_partials(*args):
        from attn_course.flash import merge_partials as library

        return library(*args)

    assert "calls `attn_course.flash.merge_partials`" in check("merge_partials", merge_partials, quiet=True).message


def test_floor_instead_of_ceil_fails(check):
    def flash_io(N, head_dim, sram_elements):
        b_c = sram_elements // (4 * head_dim)
        return 4 * N * head_dim + 4 * N * N, 2 * N * head_dim + (N // b_c) * (3 * N * head_dim + 4 * N)

    result = check("flash_io", flash_io, quiet=True)
    assert result.points == 0 and "expected 733184 on case 'N = 1024, d = 64" in result.message

    def flash_io(N, head_dim, sram_elements):  # B_c rounded down, T_c rounded up
        b_c = sram_elements // (4 * head_dim)
        return 4 * N * head_dim + 4 * N * N, 2 * N * head_dim + math.ceil(N / b_c) * (3 * N * head_dim + 4 * N)

    result = check("flash_io", flash_io, quiet=True)
    assert result.points == 0 and "M not a multiple of 4d" in result.message and "not a whole number" in result.message
    assert "round up" in check.hint("flash_io")
