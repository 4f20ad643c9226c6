"""Exercise 9: efficient attention (Part V).

Tasks:
    attention_flops(batch, heads, N, head_dim, causal)   FLOPs of one attention forward pass
    sliding_window_mask(N, window, causal)               (N, N) bool: a window of W keys, the query included
    block_layout(mask, block_size)                       (ceil(L / b), ceil(S / b)) bool: tiles to compute
    linear_attention(q, k, v)                            non-causal, phi = elu + 1, phi(Q) (phi(K)^T V)
    linear_attention_step(kv, z, q_t, k_t, v_t)          one causal step with a constant-size state
"""

from __future__ import annotations

import torch

from .. import linear, sparse
from ..flash import attention_flops
from ..grading.tasks import Case, Exercise, Task, randn
from ..masking import causal_mask


def _flops_reference(batch: int, heads: int, N: int, head_dim: int, causal: bool) -> float:
    return attention_flops(batch, heads, N, N, head_dim, causal)


def _flops_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("one head", (1, 1, 8, 4, False)),
        Case("batch and heads", (2, 3, 16, 8, False)),
        Case("causal", (2, 4, 32, 16, True), hint="Causal attention computes about half the scores: halve the count."),
        Case("a 128k context", (1, 32, 131072, 128, True)),
    ]


def _window_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("N = 8, window 3", (8, 3, False),
             hint="W counts the query itself: |i - j| < W (W - 1 keys on each side), not |i - j| <= W."),
        Case("causal", (8, 3, True),
             hint="Causal: query i sees the W keys i - W + 1 .. i, itself and the W - 1 before it."),
        Case("window 1", (5, 1, False), hint="window = 1: each query sees only its own position."),
        Case("window wider than the sequence", (6, 10, False)),
    ]


def _layout_cases(g: torch.Generator) -> list[Case]:
    causal = causal_mask(12)  # (12, 12)
    return [
        Case("sliding window, 16 tokens, blocks of 4", (sparse.sliding_window_mask(16, 3), 4)),
        Case("causal, blocks of 4", (causal, 4)),
        Case("N not a multiple of the block", (sparse.sliding_window_mask(10, 2), 4),
             hint="The last block is shorter: there are ceil(N / b) blocks, and a partial block counts too."),
        Case("L != S", (torch.rand(6, 10, generator=g) < 0.15, 3)),
        Case("Longformer, blocks of 8", (sparse.longformer_mask(32, 4, [0, 17]), 8)),
    ]


def _linear_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("one head", (randn(g, 1, 1, 5, 4), randn(g, 1, 1, 5, 4), randn(g, 1, 1, 5, 4))),
        Case("L != S, d != d_v", (randn(g, 2, 3, 4, 6), randn(g, 2, 3, 7, 6), randn(g, 2, 3, 7, 5)),
             hint="phi(K)^T V is (D, d_v) and sum_j phi(k_j) is (D,): neither depends on L."),
        Case("large scores", (randn(g, 1, 2, 6, 8, scale=4.0), randn(g, 1, 2, 6, 8, scale=4.0), randn(g, 1, 2, 6, 3))),
    ]


def _linear_reference(q, k, v):
    return linear.linear_attention(q, k, v)


def _state_after(g: torch.Generator, B: int, H: int, d: int, d_v: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (kv, z) state after ``t`` random tokens."""
    state = linear.LinearAttentionState.zeros(B, H, d, d_v)
    for _ in range(t):
        _, state = linear.linear_attention_step(state, randn(g, B, H, d), randn(g, B, H, d), randn(g, B, H, d_v))
    return state.kv, state.z


def _step_cases(g: torch.Generator) -> list[Case]:
    def case(name, B, H, d, d_v, t, hint=""):
        kv, z = _state_after(g, B, H, d, d_v, t)
        return Case(name, (kv, z, randn(g, B, H, d), randn(g, B, H, d), randn(g, B, H, d_v)), hint=hint)

    return [
        case("the first token (empty state)", 1, 1, 4, 4, 0,
             hint="Add token t to the state first, then read it: the first output is v_0 (up to eps)."),
        case("after 5 tokens", 2, 2, 4, 3, 5),
        case("after 20 tokens, d != d_v", 1, 3, 6, 2, 20),
        case("batch and heads", 3, 2, 8, 8, 3),
    ]


def _step_reference(kv, z, q_t, k_t, v_t):
    out, state = linear.linear_attention_step(linear.LinearAttentionState(kv, z), q_t, k_t, v_t)
    return out, state.kv, state.z


EXERCISE = Exercise(
    id="ex09_efficient_attention",
    title="Efficient attention",
    tasks=(
        Task("attention_flops", _flops_reference, _flops_cases, rtol=1e-9, atol=0.0,
             arg_names=("batch", "heads", "N", "head_dim", "causal"),
             forbidden=("attn_course.flash.attention_flops",),
             hint="Two matrix products per head, each N * N * head_dim multiply-adds (2 FLOPs each); "
                  "halve the total when causal."),
        Task("sliding_window_mask", sparse.sliding_window_mask, _window_cases, arg_names=("N", "window", "causal"),
             forbidden=("attn_course.sparse.sliding_window_mask",),
             hint="Compare query positions i (a column) with key positions j (a row): |i - j| < window "
                  "(W keys each way, the query itself included); causal: also j <= i."),
        Task("block_layout", sparse.mask_to_layout, _layout_cases, points=2, arg_names=("mask", "block_size"),
             forbidden=("attn_course.sparse.mask_to_layout",),
             hint="Tile (i, j) is needed when any pair in rows i*b .. (i+1)*b - 1 and columns j*b .. (j+1)*b - 1 "
                  "is True; pad the mask with False to whole blocks, then reshape to (Lb, b, Sb, b) and reduce."),
        Task("linear_attention", _linear_reference, _linear_cases, arg_names=("q", "k", "v"),
             forbidden=("attn_course.linear.linear_attention", "attn_course.linear.linear_attention_quadratic"),
             hint="phi = elu(x) + 1. out = phi(Q) (phi(K)^T V) / (phi(Q) sum_j phi(k_j) + 1e-6)."),
        Task("linear_attention_step", _step_reference, _step_cases, points=2,
             arg_names=("kv", "z", "q_t", "k_t", "v_t"),
             forbidden=("attn_course.linear.linear_attention_step",
                        "attn_course.linear.causal_linear_attention_recurrent"),
             hint="kv_new = kv + phi(k_t)^T v_t (an outer product per batch and head), z_new = z + phi(k_t); "
                  "out = phi(q_t) kv_new / (phi(q_t) . z_new + 1e-6). Return new tensors, do not modify kv or z."),
    ),
)
