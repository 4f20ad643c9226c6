"""Exercise 10 (FlashAttention's pieces): the references match the library, and plausible wrong
submissions lose their points with a message that says where to look.

Whole notebooks (the solution source: full marks; the learner notebook: 0) are graded in
tests/grading/test_grading.py.
"""

import math

import torch

from attn_course.exercises.ex10_flash_attention import EXERCISE
from attn_course.flash import memory_traffic, naive_attention


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


def test_careful_submissions_pass(check):
    assert check("online_softmax_update", _update, quiet=True).passed
    assert check("tiled_attention", _tiled, quiet=True).passed
    q, k, v = (torch.randn(1, 2, 37, 8) for _ in range(3))
    torch.testing.assert_close(_tiled(q, k, v, True, 16), naive_attention(q, k, v, causal=True))


def test_forgotten_rescaling_fails_with_the_hint(check):
    result = check("online_softmax_update", lambda *a: _update(*a, rescale=False), quiet=True)
    assert result.points == 0 and "beat the running max" in result.message and "rescale BOTH" in result.message


def test_nan_on_a_fully_masked_row_gets_the_hint(check):
    result = check("online_softmax_update", lambda *a: _update(*a, safe=False), quiet=True)
    assert result.points == 0 and "NaN" in result.message and "every key masked so far" in result.message


def test_unmasked_diagonal_fails_on_a_causal_case(check):
    result = check("tiled_attention", lambda *a: _tiled(*a, mask_diagonal=False), quiet=True)
    assert result.points == 0 and "causal" in result.message


def test_library_and_sdpa_are_refused(check):
    def tiled_attention(q, k, v, causal, block_size):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    result = check("tiled_attention", tiled_attention, quiet=True)
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
    assert result.points == 0 and "ceil" in result.message
