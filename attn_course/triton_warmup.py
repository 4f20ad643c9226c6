"""Two small Triton kernels to learn the language on, before FlashAttention (chapter 22).

* ``vector_add``: ``x + y``. One program per block of ``BLOCK`` elements: the program id picks
  the block, ``tl.arange`` the offsets inside it, and a mask keeps the last, ragged block from
  reading or writing past the end. The whole grid runs the same few lines on different data.
* ``softmax_rows``: the softmax of each row of a matrix, fused: one program per row loads the
  row once into registers, subtracts its max, exponentiates, sums, divides and stores, where
  torch's unfused composition would write and re-read the intermediate results in HBM
  (``max``, ``x - max``, ``exp``, ``sum``, the division: five kernels). The row must fit in one
  block (here up to 2**14 columns): the online softmax of ``attn_course.flash`` removes that limit,
  and FlashAttention is that idea applied to blocks of a score matrix that is never stored.

Runs on CUDA tensors and, for testing, on CPU tensors under Triton's interpreter: set
``TRITON_INTERPRET=1`` in the environment **before** this module (or triton) is imported, as for
``attn_course.triton_attention``. Importing this module never fails; the functions say what is
missing when triton or a suitable device is not there.

Dimension glossary: n elements (``vector_add``); R rows, C columns (``softmax_rows``);
BLOCK elements per program.
"""

from __future__ import annotations

import os

import torch

from attn_course._validation import require_floating, require_int, shape_error

try:  # triton is optional: the kernels below only exist when it is installed
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = ["MAX_SOFTMAX_COLUMNS", "vector_add", "softmax_rows"]

INTERPRETED = triton is not None and os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_SOFTMAX_COLUMNS = 2**14  # one row per program, held in registers: a bound on the block


if triton is not None:

    @triton.jit
    def _add_kernel(X, Y, Out, n, BLOCK: tl.constexpr):
        """Program ``pid`` adds elements ``[pid * BLOCK, (pid + 1) * BLOCK)``."""
        pid = tl.program_id(0)  # which block am I?
        offs = pid * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) element indices
        mask = offs < n  # the last block is ragged: lanes past n neither read nor write
        x = tl.load(X + offs, mask=mask)
        y = tl.load(Y + offs, mask=mask)
        tl.store(Out + offs, x + y, mask=mask)

    @triton.jit
    def _softmax_kernel(X, Out, n_cols, stride_xr, stride_xc, stride_or, stride_oc, BLOCK: tl.constexpr):
        """Program ``row`` computes the softmax of one row, in float32, reading it from HBM once."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)  # (BLOCK,) BLOCK is the next power of 2 >= n_cols
        mask = cols < n_cols
        # padding lanes read -inf: they change neither the max nor (exp(-inf) = 0) the sum
        x = tl.load(X + row * stride_xr + cols * stride_xc, mask=mask, other=float("-inf")).to(tl.float32)
        x = x - tl.max(x, axis=0)  # the largest exponent is 0: no overflow
        num = tl.exp(x)
        out = num / tl.sum(num, axis=0)
        tl.store(Out + row * stride_or + cols * stride_oc, out.to(Out.dtype.element_ty), mask=mask)


def _require_runnable(x: torch.Tensor, who: str) -> None:
    """A clear error when triton, or a device that can run its kernels, is missing."""
    if triton is None:
        raise ModuleNotFoundError(f"{who} needs the `triton` package, which is not installed: `pip install triton`")
    if x.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(f"{who} got CPU tensors, but Triton compiles for a GPU: set TRITON_INTERPRET=1 before "
                           "importing attn_course.triton_warmup (or triton) to run it on a CPU, or pass CUDA tensors")
    if x.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"{who} runs on CUDA tensors (or CPU with TRITON_INTERPRET=1), got {x.device}")


def vector_add(x: torch.Tensor, y: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """``x + y`` for two 1-D tensors of the same length, dtype and device, ``block`` elements per program."""
    require_floating(x, "x")
    require_floating(y, "y")
    if x.dim() != 1:
        raise shape_error("x", x, "(n,)")
    if y.shape != x.shape:
        raise shape_error("y", y, f"({x.shape[0]},): the shape of x")
    if y.dtype != x.dtype or y.device != x.device:
        raise TypeError(f"y is {y.dtype} on {y.device}; expected x's {x.dtype} on {x.device}")
    block = require_int(block, "block", minimum=16)
    if block & (block - 1):
        raise ValueError(f"block must be a power of 2 (tl.arange needs one), got {block}")
    _require_runnable(x, "vector_add")
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)  # (n,)
    n = x.numel()
    if n:
        _add_kernel[(triton.cdiv(n, block),)](x, y, out, n, BLOCK=block)  # grid: one program per block
    return out


def softmax_rows(x: torch.Tensor) -> torch.Tensor:
    """The softmax of each row of a 2-D tensor ``(R, C)``, one program per row; ``C <= MAX_SOFTMAX_COLUMNS``."""
    require_floating(x, "x")
    if x.dim() != 2 or x.shape[1] == 0:
        raise shape_error("x", x, "(R, C) with C >= 1")
    R, C = x.shape
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x has dtype {x.dtype}; expected float16, bfloat16 or float32 (computed in float32)")
    if C > MAX_SOFTMAX_COLUMNS:
        raise ValueError(f"x has shape ({R}, {C}); expected at most {MAX_SOFTMAX_COLUMNS} columns: one program "
                         "holds a whole row (the online softmax of attn_course.flash has no such limit)")
    _require_runnable(x, "softmax_rows")
    out = torch.empty_like(x, memory_format=torch.contiguous_format)  # (R, C)
    if R:
        _softmax_kernel[(R,)](x, out, C, *x.stride(), *out.stride(), BLOCK=triton.next_power_of_2(C))
    return out
