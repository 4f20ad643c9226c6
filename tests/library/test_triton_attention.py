"""The Triton FlashAttention kernel against torch's SDPA.

Without a CUDA GPU the kernel runs under Triton's interpreter on CPU tensors (float32, small
sizes: the interpreter executes Python per block). Triton reads ``TRITON_INTERPRET`` when a
kernel is decorated, i.e. when ``attn_course.triton_attention`` is imported, so this module sets
it first (and re-imports the module if something imported it earlier). The variable stays set for
the rest of the process: on a machine without a GPU triton cannot do anything else anyway.

With a GPU (and ``TRITON_INTERPRET`` unset), the same checks run on CUDA in float16/bfloat16
at larger, ragged sizes: ``benchmarks/triton_gpu_check.sh`` runs this file there.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported (see the docstring)

pytest.importorskip("triton")

import attn_course.triton_attention as ta  # noqa: E402
from attn_course.flash import attention_flops  # noqa: E402

if ta.INTERPRETED == ON_GPU:  # imported earlier, in the other mode: decorate the kernel again
    ta = importlib.reload(ta)

DEVICE = "cuda" if ON_GPU else "cpu"


def make_qkv(B, H, L, S, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, d, generator=g) for n in (L, S, S))
    return q.to(DEVICE, dtype), (2 * k).to(DEVICE, dtype), v.to(DEVICE, dtype)


def sdpa_fp32(q, k, v, causal, scale=None):
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal, scale=scale)


# ------------------------------------------------------------------ interpreter (CPU, float32)

CPU_CASES = [  # (L, S, d, causal): ragged ends, L != S, every supported head_dim
    (37, 37, 16, False),
    (37, 37, 16, True),
    (50, 23, 32, True),
    (23, 50, 32, True),
    (33, 70, 16, False),
    (1, 1, 16, True),
    (32, 32, 64, True),
    (17, 20, 128, False),
]


@pytest.mark.skipif(ON_GPU, reason="the interpreter runs when there is no GPU")
@pytest.mark.parametrize("L,S,d,causal", CPU_CASES)
def test_interpreted_kernel_equals_sdpa(L, S, d, causal):
    q, k, v = make_qkv(1, 2, L, S, d)
    out = ta.flash_attention(q, k, v, causal=causal)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=causal), atol=1e-5, rtol=0)


@pytest.mark.skipif(ON_GPU, reason="the interpreter runs when there is no GPU")
def test_interpreted_kernel_batch_strides_and_scale():
    q, k, v = make_qkv(2, 2, 19, 19, 16)
    kt = k.transpose(1, 2).contiguous().transpose(1, 2)  # (B, H, S, d) with other strides
    out = ta.flash_attention(q, kt, v, causal=True, scale=0.5)
    torch.testing.assert_close(out, ta.reference_attention(q, k, v, causal=True, scale=0.5), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ GPU (float16 / bfloat16)

TOLERANCE = {torch.float16: dict(atol=4e-3, rtol=4e-3), torch.bfloat16: dict(atol=3e-2, rtol=2e-2)}


# every head_dim in float16, the two common ones in bfloat16 (each (dtype, d, causal) compiles
# the autotuner's configs once, so this list sets the run time of the file on a GPU)
GPU_DTYPE_DIMS = [(torch.float16, d) for d in ta.SUPPORTED_HEAD_DIMS] + [(torch.bfloat16, 64), (torch.bfloat16, 128)]


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,d", GPU_DTYPE_DIMS, ids=lambda x: str(x))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("L,S", [(1000, 1000), (256, 256), (300, 1100), (1100, 77)])
def test_gpu_kernel_equals_sdpa(L, S, d, causal, dtype):
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability()[0] < 8:
        with pytest.raises(TypeError, match="bfloat16 needs compute capability"):
            ta.flash_attention(*make_qkv(1, 1, 16, 16, d, dtype), causal=causal)
        return
    q, k, v = make_qkv(2, 3, L, S, d, dtype)
    out = ta.flash_attention(q, k, v, causal=causal)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), sdpa_fp32(q, k, v, causal), **TOLERANCE[dtype])


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
def test_gpu_kernel_long_sequence_causal():
    q, k, v = make_qkv(1, 4, 4096 + 3, 4096 + 3, 128, torch.float16)
    torch.testing.assert_close(
        ta.flash_attention(q, k, v, causal=True).float(), sdpa_fp32(q, k, v, True), **TOLERANCE[torch.float16]
    )


# ------------------------------------------------------------------ errors


def test_validation_messages():
    q, k, v = make_qkv(1, 1, 8, 8, 16)
    with pytest.raises(ValueError, match=r"q has shape \(8, 16\)"):
        ta.flash_attention(q[0, 0], k, v)
    with pytest.raises(ValueError, match="head_dim d = 24"):
        qq = torch.zeros(1, 1, 8, 24, device=DEVICE)
        ta.flash_attention(qq, qq, qq)
    with pytest.raises(ValueError, match="d_v == d"):
        ta.flash_attention(q, k, v[..., :8])
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        ta.flash_attention(q.double(), k.double(), v.double())


def test_clear_errors_without_interpreter_or_triton(tmp_path):
    """In a fresh process: CPU tensors without TRITON_INTERPRET, then triton missing altogether."""
    script = textwrap.dedent(
        """
        import sys, torch
        import attn_course.triton_attention as ta
        q = torch.zeros(1, 1, 4, 16)
        try:
            ta.flash_attention(q, q, q)
        except RuntimeError as e:
            assert "TRITON_INTERPRET=1" in str(e), e
        else:
            raise AssertionError("no error for CPU tensors without the interpreter")
        del sys.modules["attn_course.triton_attention"]
        sys.modules["triton"] = None  # as if it were not installed
        import attn_course.triton_attention as ta
        assert not ta.TRITON_AVAILABLE
        try:
            ta.flash_attention(q, q, q)
        except ModuleNotFoundError as e:
            assert "triton" in str(e) and "pip install" in str(e), e
        else:
            raise AssertionError("no error without triton")
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU tensors and no GPU, whatever this machine has
    env["PYTHONPATH"] = os.pathsep.join([str(ta.__file__).rsplit("/attn_course/", 1)[0], env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_flop_count():
    assert attention_flops(1, 8, 4096, 4096, 64) == 4 * 8 * 4096 * 4096 * 64
    assert attention_flops(2, 1, 10, 10, 16, causal=True) == 2 * 10 * 10 * 16 * 2


@pytest.mark.skipif(ON_GPU, reason="the lab's interpreter check runs on CPU tensors")
def test_lab_interpreter_errors():
    from attn_course.labs.flash_benchmark import interpreter_errors

    errors = interpreter_errors([(19, 19, 16, True), (9, 30, 32, False)])
    assert len(errors) == 2 and max(errors.values()) < 1e-5
