"""Exercise 11: a FlashAttention forward kernel in Triton (practises chapter 22).

Tasks (the learner writes one ``@triton.jit`` kernel and its launcher; both tasks run them):
    flash_forward(q, k, v, causal, block_m, block_n)  -> out (B, H, L, d)
    flash_lse(q, k, v, causal, block_m, block_n)      -> lse (B, H, L) float32, the log-sum-exp per query

Graded on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, set by the notebook
before triton is imported), inside the sandboxed grading kernel. The interpreter runs each block
operation in NumPy, so the cases are tiny (a few programs of 16 x 16 tiles each).

The idea's rule: the attention is computed inside the kernel, tile by tile. Measured in the call:
no torch matrix product at all (``max_flops = 1``: the kernel's ``tl.dot`` runs in NumPy, which
torch's FLOP counter never sees, while ``q @ k^T`` in the launcher does), and no torch tensor
larger than the inputs (the interpreter copies each argument through a byte view, 4 bytes per
float32 element, so the limit is 4 x the largest input: a whole (L, S) score matrix of a case
with S > 4 d breaks it). These catch a launcher that computes attention in torch, not a cheat.

References: ``attn_course.flash.naive_attention`` (out) and the log-sum-exp of the scaled,
masked scores (lse), both in float32.

Dimension glossary: B batch, H heads, L queries, S keys, d head width (= value width here),
BLOCK_M queries per program, BLOCK_N keys per inner-loop step.
"""

from __future__ import annotations

import math

import torch

from .. import flash
from ..grading.tasks import Case, Exercise, Task, randn
from ..masking import causal_mask

# The kernel's and torch's attention, softmax and matrix products: calling them scores nothing.
# (``numpy`` too: a launcher that leaves torch for NumPy computes attention outside the kernel.)
_TRITON_LIB = tuple(f"attn_course.triton_attention.{n}" for n in (
    "flash_attention", "flash_attention_forward", "FlashAttentionFunction", "reference_attention", "_forward",
    "_attn_fwd", "_attn_fwd_inner"))
_FORBIDDEN = _TRITON_LIB + (
    "attn_course.flash.naive_attention", "attn_course.flash.tiled_attention", "attn_course.flash.block_partial",
    "torch.nn.functional.scaled_dot_product_attention", "torch.softmax", "torch.nn.functional.softmax",
    "torch.Tensor.softmax", "torch.logsumexp", "torch.Tensor.logsumexp", "torch.matmul", "torch.bmm",
    "torch.einsum", "torch.mm", "torch.baddbmm", "numpy")
RULE = "attention is computed inside the Triton kernel, tile by tile: no torch matrix product, no whole score matrix"


def _scores(q: torch.Tensor, k: torch.Tensor, causal: bool) -> torch.Tensor:
    """Scaled scores ``(B, H, L, S)``, -inf where causal hides a key."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, L, S)
    if causal:
        s = s.masked_fill(~causal_mask(q.shape[2], k.shape[2]), float("-inf"))
    return s


def _out_reference(q, k, v, causal, block_m, block_n):
    return flash.naive_attention(q, k, v, causal=causal)


def _lse_reference(q, k, v, causal, block_m, block_n):
    return torch.logsumexp(_scores(q, k, causal), dim=-1)  # (B, H, L)


def _case(name: str, g: torch.Generator, B: int, H: int, L: int, S: int, d: int, causal: bool, block_m: int,
          block_n: int, hint: str = "", k_scale: float = 1.0, ramp: bool = False) -> Case:
    q, k, v = randn(g, B, H, L, d), randn(g, B, H, S, d, scale=k_scale), randn(g, B, H, S, d)
    if ramp:  # keys drift along the queries' common direction: scores grow with the key position
        q = 0.3 * q + 1.0
        k = 0.3 * k + torch.linspace(0.0, 1.5, S)[:, None]  # (S, 1) broadcast over d: s grows to about 6 d / 4
    # 4 bytes per float32 element: the interpreter's byte views of the inputs; a whole score
    # matrix (B H L S > 4 B H max(L, S) d when S > 4 d) does not fit under it.
    largest = 4 * max(q.numel(), k.numel())
    return Case(name, (q, k, v, causal, block_m, block_n), hint=hint, max_numel=largest, max_flops=1)


def _cases(g: torch.Generator) -> list[Case]:
    d = 16
    return [
        _case("L = S = 32, tiles of 16 x 16", g, 1, 2, 32, 32, d, False, 16, 16),
        _case("the running max grows at every key block (L = 16, S = 64)", g, 1, 1, 16, 64, d, False, 16, 16,
              ramp=True,
              hint="Each key block here has larger scores than the one before, so the running max changes "
                   "between blocks: what was summed against the old max is no longer on the same scale."),
        _case("L = 45, S = 70: neither is a multiple of the tile (16)", g, 1, 1, 45, 70, d, False, 16, 16,
              hint="The last query block and the last key block are partial: positions past L or S exist in the "
                   "tile but not in the sequence, so they must neither be read nor weigh in the softmax."),
        _case("causal, N = 40, tiles of 16 x 16", g, 1, 2, 40, 40, d, True, 16, 16,
              hint="Query i sees keys j <= i: key blocks after the query block are never needed, and the block "
                   "that crosses the diagonal holds visible and hidden keys side by side."),
        _case("more keys than queries, tiles of 16 queries x 32 keys (L = 20, S = 100)", g, 1, 1, 20, 100, d,
              False, 16, 32, hint="BLOCK_M (queries per program) and BLOCK_N (keys per step) differ here."),
        _case("large scores (|s| up to about 100), d = 32", g, 1, 1, 24, 40, 32, False, 16, 16, k_scale=25.0,
              hint="exp of a score near 100 overflows float32: every exponent must be taken relative to a "
                   "running max."),
    ]


EXERCISE = Exercise(
    id="ex11_triton_flash",
    title="A FlashAttention kernel in Triton",
    tasks=(
        # min_call_seconds: on a CPU the Triton interpreter runs the kernel, and a call that meets a new
        # tile shape first traces it: 4-6 s for the six cases on an idle 2-core machine, above the
        # grader's default call time when other kernels share the cores.
        Task("flash_forward", _out_reference, _cases, points=4, rtol=1e-4, atol=1e-5,
             arg_names=("q", "k", "v", "causal", "block_m", "block_n"), forbidden=_FORBIDDEN, rule=RULE,
             min_call_seconds=30,
             hint="One program per (query block, batch x head): load its BLOCK_M queries once, start m = -inf, "
                  "l = 0, acc = 0 in float32, and visit the keys BLOCK_N at a time. In each step the tile of "
                  "scores is tl.dot(q, tl.trans(k)) times the scale; the online-softmax update is the one of "
                  "chapter 21, with tl.maximum, tl.exp, tl.sum. Masks: a load past the end needs mask= and "
                  "other=, and a score that must not count needs tl.where."),
        Task("flash_lse", _lse_reference, _cases, points=2, rtol=1e-4, atol=1e-4,
             arg_names=("q", "k", "v", "causal", "block_m", "block_n"), forbidden=_FORBIDDEN, rule=RULE,
             min_call_seconds=30,
             hint="l is the sum of exp(s - m) over the row's keys, measured against the final running max m, "
                  "not the sum of exp(s). Write log(sum exp(s)) in terms of m and l, and store it from the "
                  "kernel, one number per query (mask the rows past L)."),
    ),
)
