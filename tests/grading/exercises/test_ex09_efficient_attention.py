"""Exercise 9 (efficient attention): the references match the library, the points add up, and
plausible wrong submissions lose their points with a message that says where to look.

Whole notebooks (the solution source: full marks; the learner notebook: 0) are graded in
tests/grading/test_grading.py.
"""

import math

import torch
import torch.nn.functional as F

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
    assert "ceil(N / b)" in result.message  # the case's hint


def test_read_before_write_fails_with_the_hint(check):
    def linear_attention_step(kv, z, q_t, k_t, v_t):
        phi_q, phi_k = F.elu(q_t) + 1, F.elu(k_t) + 1
        out = (phi_q.unsqueeze(-2) @ kv).squeeze(-2) / ((phi_q * z).sum(-1, keepdim=True) + 1e-6)  # BUG: old state
        return out, kv + phi_k.unsqueeze(-1) * v_t.unsqueeze(-2), z + phi_k

    result = check("linear_attention_step", linear_attention_step, quiet=True)
    assert result.points == 0 and "Add token t to the state first" in result.message


def test_in_place_state_update_is_caught(check):
    def linear_attention_step(kv, z, q_t, k_t, v_t):
        phi_q, phi_k = F.elu(q_t) + 1, F.elu(k_t) + 1
        kv += phi_k.unsqueeze(-1) * v_t.unsqueeze(-2)  # BUG: mutates the caller's state
        z += phi_k
        out = (phi_q.unsqueeze(-2) @ kv).squeeze(-2) / ((phi_q * z).sum(-1, keepdim=True) + 1e-6)
        return out, kv, z

    result = check("linear_attention_step", linear_attention_step, quiet=True)
    assert result.points == 0 and "in place" in result.message


def test_softmax_instead_of_the_feature_map_fails(check):
    def linear_attention(q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v

    assert check("linear_attention", linear_attention, quiet=True).points == 0


def test_uncausal_window_and_unhalved_flops_fail(check):
    def sliding_window_mask(N, window, causal=False):
        i, j = torch.arange(N)[:, None], torch.arange(N)[None, :]
        return (i - j).abs() <= window  # BUG: ignores causal

    result = check("sliding_window_mask", sliding_window_mask, quiet=True)
    assert result.points == 0 and "causal" in result.message

    def attention_flops(batch, heads, N, head_dim, causal):
        return 4 * batch * heads * N * N * head_dim  # BUG: not halved when causal

    result = check("attention_flops", attention_flops, quiet=True)
    assert result.points == 0 and "halve" in result.message


def test_a_window_one_key_too_wide_fails_with_the_hint(check):
    def sliding_window_mask(N, window, causal=False):
        i, j = torch.arange(N)[:, None], torch.arange(N)[None, :]
        mask = (i - j).abs() <= window  # BUG: W + 1 keys causally (the window does not count the query)
        return mask & (j <= i) if causal else mask

    result = check("sliding_window_mask", sliding_window_mask, quiet=True)
    assert result.points == 0 and "W counts the query itself" in result.message
