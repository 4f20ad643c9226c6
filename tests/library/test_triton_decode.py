"""The Triton decode kernels (split-K + reduce, paged) against the torch versions and SDPA.

Without a CUDA GPU the kernels run under Triton's interpreter on CPU tensors (float32, tiny
shapes: the interpreter runs Python per program). ``TRITON_INTERPRET`` is read when a kernel is
decorated, so it is set before ``attn_course.triton_decode`` is imported (and the module is
re-imported if it was imported earlier in the other mode), as in ``test_triton_attention.py``.
With a GPU the same checks run compiled, in float16 and bfloat16.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch
import torch.nn.functional as F

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported

pytest.importorskip("triton")

import attn_course.triton_decode as td  # noqa: E402
from attn_course.decode_attention import paged_decode, split_k_partials  # noqa: E402
from tests.library.test_decode_attention import paged_copy  # noqa: E402

if td.INTERPRETED == ON_GPU:  # imported earlier, in the other mode: decorate the kernels again
    td = importlib.reload(td)

DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = (torch.float16, torch.bfloat16) if ON_GPU else (torch.float32,)
TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def make(B, H, H_kv, S, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, 1, d, generator=g)
    k = 2 * torch.randn(B, H_kv, S, d, generator=g)
    v = torch.randn(B, H_kv, S, d, generator=g)
    return (x.to(DEVICE, dtype) for x in (q, k, v))


def sdpa32(q, k, v):
    n_rep = q.shape[1] // k.shape[1]
    k, v = (x.float().repeat_interleave(n_rep, dim=1) for x in (k, v))
    return F.scaled_dot_product_attention(q.float(), k, v)


# (B, H, H_kv, S, d, num_splits): MHA, GQA with a group of 2 and of 3 (padded to 4), MQA;
# ragged last chunks, an empty split (S=5, 4 splits), one key
SPLIT_CASES = [
    (1, 2, 2, 37, 16, 3),
    (2, 4, 2, 20, 16, 1),
    (1, 6, 2, 33, 32, 2),
    (1, 4, 1, 5, 16, 4),
    (1, 2, 2, 1, 16, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,H_kv,S,d,n", SPLIT_CASES)
def test_split_k_kernel_equals_sdpa(B, H, H_kv, S, d, n, dtype):
    q, k, v = make(B, H, H_kv, S, d, dtype)
    out = td.split_k_decode_triton(q, k, v, num_splits=n)
    assert out.shape == q.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), sdpa32(q, k, v), atol=TOL[dtype], rtol=0)


def test_split_k_partials_equal_the_torch_partials():
    q, k, v = make(1, 4, 2, 21, 16)
    m, lsum, acc = td.split_k_partials_triton(q, k, v, 3)  # (B, H, n), (B, H, n), (B, H, n, d)
    mt, lt, at = split_k_partials(q.cpu().float(), k.cpu().float(), v.cpu().float(), 3)  # (n, B, H, 1), ...
    torch.testing.assert_close(m.cpu().permute(2, 0, 1).unsqueeze(-1), mt, atol=1e-5, rtol=0)
    torch.testing.assert_close(lsum.cpu().permute(2, 0, 1).unsqueeze(-1), lt, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(acc.cpu().permute(2, 0, 1, 3).unsqueeze(-2), at, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,H_kv,P,n", [(2, 2, 4, 1), (4, 2, 8, 2), (3, 1, 4, 3)])
def test_paged_kernel_equals_paged_decode_and_sdpa(H, H_kv, P, n, dtype):
    lens = [13, 1, 24]
    q, k, v = make(3, H, H_kv, 24, 16, dtype)
    k_pool, v_pool, table, seq_lens = paged_copy(k.cpu(), v.cpu(), P, lens)
    k_pool, v_pool, table, seq_lens = (x.to(DEVICE) for x in (k_pool.to(dtype), v_pool.to(dtype), table, seq_lens))
    out = td.paged_decode_triton(q, k_pool, v_pool, table, seq_lens, num_splits=n)
    assert out.shape == q.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), paged_decode(q.float(), k_pool.float(), v_pool.float(), table, seq_lens),
                               atol=TOL[dtype], rtol=0)
    for b, length in enumerate(lens):
        want = sdpa32(q[b : b + 1], k[b : b + 1, :, :length], v[b : b + 1, :, :length])
        torch.testing.assert_close(out[b : b + 1].float(), want, atol=TOL[dtype], rtol=0)


def test_kernel_errors():
    q, k, v = make(1, 2, 2, 8, 16)
    with pytest.raises(ValueError, match=r"one query per sequence"):
        td.split_k_decode_triton(q.expand(1, 2, 2, 16), k, v, 2)
    q12, k12, v12 = make(1, 2, 2, 8, 12)
    with pytest.raises(ValueError, match="power of two"):
        td.split_k_decode_triton(q12, k12, v12, 2)
    k_pool, v_pool, table, lens = paged_copy(k.cpu(), v.cpu(), 3, [8])
    with pytest.raises(ValueError, match="P = 3 slots"):
        td.paged_decode_triton(q, k_pool.to(DEVICE), v_pool.to(DEVICE), table.to(DEVICE), lens.to(DEVICE))
    k_pool, v_pool, table, lens = (x.to(DEVICE) for x in paged_copy(k.cpu(), v.cpu(), 4, [8]))
    table[0, 1] = 50
    with pytest.raises(ValueError, match="points outside the pool"):
        td.paged_decode_triton(q, k_pool, v_pool, table, lens)


@pytest.mark.skipif(ON_GPU, reason="checks the interpreter's guard")
def test_cpu_tensors_need_the_interpreter(monkeypatch):
    q, k, v = make(1, 2, 2, 8, 16)
    monkeypatch.setattr(td, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        td.split_k_decode_triton(q, k, v, 2)


@pytest.mark.skipif(not ON_GPU, reason="long caches only where the kernels are compiled")
@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_kernels_on_a_long_cache(dtype):
    q, k, v = make(2, 32, 8, 5000, 128, dtype)
    want = sdpa32(q, k, v)
    for n in (1, 7, None):
        torch.testing.assert_close(td.split_k_decode_triton(q, k, v, num_splits=n).float(), want, atol=TOL[dtype], rtol=0)
    k_pool, v_pool, table, lens = paged_copy(k.cpu().float(), v.cpu().float(), 16, [5000, 5000])
    k_pool, v_pool, table, lens = (x.to(DEVICE) for x in (k_pool.to(dtype), v_pool.to(dtype), table, lens))
    for n in (1, 8):
        torch.testing.assert_close(td.paged_decode_triton(q, k_pool, v_pool, table, lens, num_splits=n).float(), want,
                                   atol=TOL[dtype], rtol=0)
