"""The Triton FlashAttention kernels, forward and backward, against torch's SDPA and autograd.

Without a CUDA GPU the kernel runs under Triton's interpreter on CPU tensors (float32, small
sizes: the interpreter executes Python per block). Triton reads ``TRITON_INTERPRET`` when a
kernel is decorated, i.e. when ``attn_course.triton_attention`` is imported, so this module sets
it first (and re-imports the module if something imported it earlier). The variable stays set for
the rest of the process: on a machine without a GPU triton cannot do anything else anyway.

With a GPU (and ``TRITON_INTERPRET`` unset), the same checks run on CUDA in float16/bfloat16
at larger, ragged sizes (outputs and gradients): ``benchmarks/triton_gpu_check.sh`` runs this
file there.
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
from attn_course.flash import attention_flops, naive_attention  # noqa: E402
from attn_course.flash_backward import flash_backward, forward_with_lse  # noqa: E402

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


# ------------------------------------------------------------------ backward (interpreter, CPU, float32)

BACKWARD_CASES = [  # (L, S, d, causal): ragged ends of both lengths, L < S and L > S, one token
    (37, 37, 16, True),
    (23, 50, 32, True),
    (50, 23, 16, True),
    (33, 20, 16, False),
    (1, 1, 16, True),
]


def kernel_grads(q, k, v, do, causal, scale=None):
    """(out, dq, dk, dv) through flash_attention's autograd function (the backward kernels)."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = ta.flash_attention(q, k, v, causal=causal, scale=scale)
    return (out, *torch.autograd.grad(out, (q, k, v), do))


def autograd_grads(q, k, v, do, causal, dtype, scale=None):
    """The same through autograd of the naive reference, in ``dtype`` (float32 or float64)."""
    q, k, v = (x.detach().to(dtype).requires_grad_() for x in (q, k, v))
    out = naive_attention(q, k, v, causal=causal, scale=scale)
    return (out, *torch.autograd.grad(out, (q, k, v), do.to(dtype)))


@pytest.mark.skipif(ON_GPU, reason="the interpreter runs when there is no GPU")
@pytest.mark.parametrize("L,S,d,causal", BACKWARD_CASES)
def test_interpreted_backward_equals_autograd(L, S, d, causal):
    """Gradients of the Triton kernels = autograd of the reference (float64 and float32) = the torch
    recomputation of flash_backward, from the kernel's own out and lse."""
    q, k, v = make_qkv(1, 2, L, S, d)
    do = torch.randn(1, 2, L, d, generator=torch.Generator().manual_seed(1))
    out, *grads = kernel_grads(q, k, v, do, causal)
    _, *exact = autograd_grads(q, k, v, do, causal, torch.float64)
    _, *single = autograd_grads(q, k, v, do, causal, torch.float32)
    for name, a, b, c in zip(("dq", "dk", "dv"), grads, exact, single):
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    out2, lse = ta.flash_attention_forward(q, k, v, causal=causal)
    torch.testing.assert_close(out2, out.detach(), atol=0, rtol=0)
    _, lse_ref = forward_with_lse(q.double(), k.double(), v.double(), causal)
    assert lse.shape == (1, 2, L) and lse.dtype == torch.float32
    torch.testing.assert_close(lse.double(), lse_ref, atol=1e-5, rtol=0)
    readable = flash_backward(q, k, v, out2, lse, do, causal=causal, block_size=16)
    for a, b in zip(grads, readable):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(ON_GPU, reason="the interpreter runs when there is no GPU")
def test_interpreted_backward_strides_scale_and_batch():
    """Non-contiguous k and dO, two batch elements, a given scale; the wrappers directly."""
    q, k, v = make_qkv(2, 2, 19, 21, 16)
    kt = k.transpose(1, 2).contiguous().transpose(1, 2)  # (B, H, S, d) with other strides
    do = torch.randn(2, 19, 2, 16, generator=torch.Generator().manual_seed(2)).transpose(1, 2)  # (B, H, L, d)
    out, *grads = kernel_grads(q, kt, v, do, True, scale=0.5)
    _, *exact = autograd_grads(q, k, v, do, True, torch.float64, scale=0.5)
    for a, b in zip(grads, exact):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)
    o, lse = ta.flash_attention_forward(q, kt, v, causal=True, scale=0.5)
    for a, b in zip(ta.flash_attention_backward(q, kt, v, o, lse, do, causal=True, scale=0.5), grads):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_backward_validation_messages():
    q, k, v = make_qkv(1, 1, 8, 8, 16)
    lse = torch.zeros(1, 1, 8, device=DEVICE)
    with pytest.raises(ValueError, match=r"grad_out has shape \(1, 1, 7, 16\)"):
        ta.flash_attention_backward(q, k, v, q, lse, q[:, :, :7])
    with pytest.raises(ValueError, match=r"lse has shape \(1, 1, 8\) and dtype torch.float64"):
        ta.flash_attention_backward(q, k, v, q, lse.double(), q)
    with pytest.raises(ValueError, match="head_dim d = 24"):
        qq = torch.zeros(1, 1, 8, 24, device=DEVICE)
        ta.flash_attention_backward(qq, qq, qq, qq, lse, qq)


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


GRAD_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}  # largest error / largest gradient entry


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("L,S,causal", [(1000, 1000, True), (1000, 1000, False), (300, 1100, False),
                                        (1100, 77, True)])
def test_gpu_backward_equals_sdpa(L, S, causal, d, dtype):
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bfloat16 needs compute capability >= 8.0")
    q, k, v = make_qkv(2, 3, L, S, d, dtype)
    do = torch.randn(2, 3, L, d, device=DEVICE, dtype=dtype)
    _, *grads = kernel_grads(q, k, v, do, causal)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = torch.autograd.grad(sdpa_fp32(q32, k32, v32, causal), (q32, k32, v32), do.float())
    for name, a, b in zip(("dq", "dk", "dv"), grads, ref):
        assert a.dtype == dtype
        rel = (a.float() - b).abs().max().item() / b.abs().max().item()
        assert rel < GRAD_TOLERANCE[dtype], (name, rel)


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
