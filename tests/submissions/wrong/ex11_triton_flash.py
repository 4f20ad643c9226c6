"""Plausible wrong solutions of exercise 11 (a FlashAttention kernel in Triton); see
tests/grading/test_wrong_submissions.py. Each variant is the solution's kernel and launcher with
one idea bent (written out by ``_kernel`` from the correct one), or attention done in torch."""

# The solution's kernel and launcher, with placeholders where the variants differ. The kernel
# of each variant gets its own name, so that one variant's two tasks do not share a kernel.
_KERNEL = '''
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _NAME_kernel(Q, K, V, Out, Lse, L, S, scale, stride_qh, stride_qm, stride_kh, stride_kn, stride_vh,
                 stride_vn, stride_oh, stride_om, CAUSAL: tl.constexpr, D: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < L
    q = tl.load(Q + bh * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    hi = S
    if CAUSAL:
        hi = tl.minimum((pid_m + 1) * BLOCK_M, S)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < S
        k = tl.load(K + bh * stride_kh + cols[:, None] * stride_kn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        v = tl.load(V + bh * stride_vh + cols[:, None] * stride_vn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * SCALE
        KEEP
        if CAUSAL:
            keep = keep & (cols[None, :] <= offs_m[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = ACC
        m_i = m_new
    tl.store(Out + bh * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :], acc / l_i[:, None],
             mask=row_ok[:, None])
    tl.store(Lse + bh * L + offs_m, LSE, mask=row_ok)


def _NAME_run(q, k, v, causal, block_m, block_n):
    B, H, L, d = q.shape
    S = k.shape[2]
    q3, k3, v3 = (x.reshape(B * H, -1, d).contiguous() for x in (q, k, v))
    out = torch.empty_like(q3)
    lse = torch.empty(B * H, L, dtype=torch.float32)
    _NAME_kernel[(triton.cdiv(L, block_m), B * H)](
        q3, k3, v3, out, lse, L, S, 1.0 / math.sqrt(d), q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1),
        v3.stride(0), v3.stride(1), out.stride(0), out.stride(1), CAUSAL=bool(causal), D=d, BLOCK_M=block_m,
        BLOCK_N=block_n)
    return out.reshape(B, H, L, d), lse.reshape(B, H, L)


def TASK(q, k, v, causal, block_m, block_n):
    return _NAME_run(q, k, v, causal, block_m, block_n)[INDEX]
'''

_RIGHT = {"SCALE": "scale", "KEEP": "keep = col_ok[None, :]", "ACC": "acc * alpha[:, None] + tl.dot(p, v)",
          "LSE": "m_i + tl.log(l_i)"}


def _kernel(task: str, name: str, **bent: str) -> str:
    src = _KERNEL.replace("_NAME", f"_{name}").replace("TASK", task)
    src = src.replace("INDEX", "0" if task == "flash_forward" else "1")
    for key, right in _RIGHT.items():
        src = src.replace(key, bent.get(key.lower(), right))
    return src


# Attention in torch, tile by tile, without a kernel: the launcher multiplies matrices in torch.
_TORCH_TILED = '''
import math

import torch


def flash_forward(q, k, v, causal, block_m, block_n):
    B, H, L, d = q.shape
    S = k.shape[2]
    out = torch.empty_like(q)
    for i0 in range(0, L, block_m):
        qi = q[:, :, i0:i0 + block_m]
        m = torch.full(qi.shape[:3], float("-inf"))
        l = torch.zeros(qi.shape[:3])
        acc = torch.zeros_like(qi)
        for j0 in range(0, S, block_n):
            s = qi @ k[:, :, j0:j0 + block_n].transpose(-2, -1) / math.sqrt(d)
            if causal:
                rows = torch.arange(i0, i0 + qi.shape[2])[:, None]
                s = s.masked_fill(torch.arange(j0, j0 + s.shape[-1])[None, :] > rows, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            alpha = torch.exp(m - m_new)
            p = torch.exp(s - m_new[..., None])
            l = alpha * l + p.sum(-1)
            acc = alpha[..., None] * acc + p @ v[:, :, j0:j0 + block_n]
            m = m_new
        out[:, :, i0:i0 + block_m] = acc / l[..., None]
    return out
'''

# The log-sum-exp from the whole score matrix, in torch (its own "logsumexp", by hand).
_TORCH_LSE = '''
import math

import torch


def flash_lse(q, k, v, causal, block_m, block_n):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    m = s.amax(-1, keepdim=True)
    return (m + (s - m).exp().sum(-1, keepdim=True).log()).squeeze(-1)
'''

VARIANTS = [
    {  # the rescaling forgotten: acc keeps sums taken against old maxima; lse = log l, without the max
        "flash_forward": _kernel("flash_forward", "norescale", acc="acc + tl.dot(p, v)"),
        "flash_lse": _kernel("flash_lse", "nomax", lse="tl.log(l_i)"),
    },
    {  # the scale of the scores: 1/d instead of 1/sqrt(d) (out and lse both wrong)
        "flash_forward": _kernel("flash_forward", "scale_d", scale="scale * scale"),
        "flash_lse": _kernel("flash_lse", "scale_d2", scale="scale * scale"),
    },
    {  # the partial last key block not masked: keys past S read as 0 and count with score 0
        "flash_forward": _kernel("flash_forward", "nomask", keep="keep = offs_n[None, :] >= 0"),
        "flash_lse": _kernel("flash_lse", "nomask2", keep="keep = offs_n[None, :] >= 0"),
    },
    {  # attention in torch instead of a Triton kernel
        "flash_forward": (_TORCH_TILED, "no torch matrix product"),
        "flash_lse": (_TORCH_LSE, "no torch matrix product"),
    },
    {  # the lse in base 2 (exp2 with log2(e) folded into the scale, lse not converted back) and no rescale of l
        "flash_forward": _kernel("flash_forward", "lnorescale", acc="acc * alpha[:, None] + tl.dot(p, v)",
                                 lse="m_i + tl.log(l_i)").replace("l_i = l_i * alpha + tl.sum(p, 1)",
                                                                  "l_i = l_i + tl.sum(p, 1)"),
        "flash_lse": _kernel("flash_lse", "base2", lse="m_i * 1.4426950408889634 + tl.log2(l_i)"),
    },
]
