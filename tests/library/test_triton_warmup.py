"""The Triton warm-up kernels (vector add, fused row softmax) against torch.

Without a CUDA GPU they run under Triton's interpreter on CPU tensors: like
``test_triton_attention.py``, this module sets ``TRITON_INTERPRET=1`` before triton is imported
(and re-imports the module if something imported it earlier in the other mode).
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported

pytest.importorskip("triton")

import attn_course.triton_warmup as tw  # noqa: E402

if tw.INTERPRETED == ON_GPU:  # imported earlier, in the other mode: decorate the kernels again
    tw = importlib.reload(tw)

DEVICE = "cuda" if ON_GPU else "cpu"


@pytest.mark.parametrize("n,block", [(1, 16), (1000, 256), (4096, 1024), (0, 64)])
def test_vector_add_equals_torch(n, block):
    g = torch.Generator().manual_seed(n)
    x, y = (torch.randn(n, generator=g).to(DEVICE) for _ in range(2))
    out = tw.vector_add(x, y, block=block)
    assert out.shape == (n,) and out.dtype == x.dtype
    torch.testing.assert_close(out, x + y, atol=0, rtol=0)


@pytest.mark.parametrize("rows,cols", [(1, 1), (7, 300), (3, 1024), (5, 33)])
def test_softmax_rows_equals_torch(rows, cols):
    g = torch.Generator().manual_seed(rows * cols)
    x = (30 * torch.randn(rows, cols, generator=g)).to(DEVICE)  # large scores: the max subtraction matters
    out = tw.softmax_rows(x)
    torch.testing.assert_close(out, torch.softmax(x, dim=-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.sum(-1), torch.ones(rows, device=DEVICE), atol=1e-5, rtol=0)


def test_softmax_rows_strides_extremes_and_half_precision():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0)).to(DEVICE).t()  # (6, 40), not contiguous
    torch.testing.assert_close(tw.softmax_rows(x), torch.softmax(x, -1), atol=1e-6, rtol=1e-5)
    big = torch.tensor([[1000.0, 0.0, -1000.0]], device=DEVICE)  # exp(1000) overflows without the max
    torch.testing.assert_close(tw.softmax_rows(big), torch.tensor([[1.0, 0.0, 0.0]], device=DEVICE))
    half = x.to(torch.float16)
    out = tw.softmax_rows(half)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), torch.softmax(half.float(), -1), atol=1e-3, rtol=1e-3)


def test_validation_messages():
    x = torch.zeros(8, device=DEVICE)
    with pytest.raises(ValueError, match=r"x has shape \(2, 4\); expected \(n,\)"):
        tw.vector_add(x.reshape(2, 4), x.reshape(2, 4))
    with pytest.raises(ValueError, match=r"y has shape \(7,\); expected \(8,\)"):
        tw.vector_add(x, x[:7])
    with pytest.raises(ValueError, match="block must be a power of 2"):
        tw.vector_add(x, x, block=100)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        tw.vector_add(x.long(), x.long())
    with pytest.raises(ValueError, match=r"x has shape \(8,\); expected \(R, C\)"):
        tw.softmax_rows(x)
    with pytest.raises(ValueError, match="at most 16384 columns"):
        tw.softmax_rows(torch.zeros(1, 2**14 + 1, device=DEVICE))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        tw.softmax_rows(x.double().reshape(2, 4))
