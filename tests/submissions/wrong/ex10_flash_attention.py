"""Plausible wrong solutions of exercise 10 (see tests/grading/test_wrong_submissions.py).

Each skips or bends the idea of its task in a different way; the comment in each says which
case or rule catches it. A variant that replaces ``online_softmax_update`` also breaks the
solution's ``tiled_attention``, which calls it; only the tasks a variant names are checked.
The last variant is hostile rather than plausible: the whole score matrix in NumPy, which the
largest-tensor watch in the call does not see; the kernel's 1 GiB, set by the grader, stops it.
"""

_TILE_RULE = "only one tile of scores at a time"

VARIANTS = [
    {
        # l is not rescaled when the max grows ("a block whose scores beat the running max")
        "online_softmax_update": '''
def online_softmax_update(m, l, acc, scores_block, v_block):
    import torch
    m_new = torch.maximum(m, scores_block.amax(dim=-1))
    shift = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
    alpha = torch.exp(m - shift)
    p = torch.exp(scores_block - shift.unsqueeze(-1))
    return m_new, l + p.sum(dim=-1), alpha.unsqueeze(-1) * acc + p @ v_block
''',
        # each side weighted by the other's factor
        "merge_partials": '''
def merge_partials(m_a, l_a, acc_a, m_b, l_b, acc_b):
    import torch
    m = torch.maximum(m_a, m_b)
    shift = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    alpha, beta = torch.exp(m_a - shift), torch.exp(m_b - shift)
    return m, beta * l_a + alpha * l_b, beta.unsqueeze(-1) * acc_a + alpha.unsqueeze(-1) * acc_b
''',
        # the whole (L, S) score matrix, then a softmax by hand: right values, the rule broken
        # (the largest tensor on the small cases; the kernel's 1 GiB on the large one)
        "tiled_attention": ('''
def tiled_attention(q, k, v, causal, block_size):
    import math
    import torch
    L, S = q.shape[2], k.shape[2]
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, L, S)
    if causal:
        s = s.masked_fill(torch.arange(S)[None, :] > torch.arange(L)[:, None], float("-inf"))
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    return (p @ v) / p.sum(dim=-1, keepdim=True)
''', _TILE_RULE),
        # B_c rounded down ("M not a multiple of 4d")
        "flash_io": '''
def flash_io(N, head_dim, sram_elements):
    import math
    b_c = sram_elements // (4 * head_dim)
    t_c = math.ceil(N / b_c)
    return 4 * N * head_dim + 4 * N * N, 2 * N * head_dim + t_c * (3 * N * head_dim + 4 * N)
''',
    },
    {
        # acc is not rescaled when the max grows
        "online_softmax_update": '''
def online_softmax_update(m, l, acc, scores_block, v_block):
    import torch
    m_new = torch.maximum(m, scores_block.amax(dim=-1))
    shift = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
    alpha = torch.exp(m - shift)
    p = torch.exp(scores_block - shift.unsqueeze(-1))
    return m_new, alpha * l + p.sum(dim=-1), acc + p @ v_block
''',
        # acc added without its factors
        "merge_partials": '''
def merge_partials(m_a, l_a, acc_a, m_b, l_b, acc_b):
    import torch
    m = torch.maximum(m_a, m_b)
    shift = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    alpha, beta = torch.exp(m_a - shift), torch.exp(m_b - shift)
    return m, alpha * l_a + beta * l_b, acc_a + acc_b
''',
        # a block of queries against every key it sees at once: up to (block_size, S) scores, a row
        # block of the whole matrix, not a tile; the rule allows two tiles
        "tiled_attention": ('''
def tiled_attention(q, k, v, causal, block_size):
    import math
    import torch
    B, H, L, d = q.shape
    S = k.shape[2]
    out = torch.empty(B, H, L, v.shape[3])
    for i0 in range(0, L, block_size):
        qi = q[:, :, i0:i0 + block_size]
        stop = min(S, i0 + qi.shape[2]) if causal else S  # causal: the keys up to the block's last query
        s = qi @ k[:, :, :stop].transpose(-2, -1) / math.sqrt(d)  # (B, H, nq, stop): up to a whole row
        if causal:
            s = s.masked_fill(torch.arange(stop)[None, :] > torch.arange(i0, i0 + qi.shape[2])[:, None], float("-inf"))
        p = torch.exp(s - s.amax(dim=-1, keepdim=True))
        out[:, :, i0:i0 + qi.shape[2]] = (p @ v[:, :, :stop]) / p.sum(dim=-1, keepdim=True)
    return out
''', _TILE_RULE),
        # T_c rounded down: the last, shorter key block is not a pass ("N not a multiple")
        "flash_io": '''
def flash_io(N, head_dim, sram_elements):
    import math
    b_c = math.ceil(sram_elements / (4 * head_dim))
    t_c = N // b_c
    return 4 * N * head_dim + 4 * N * N, 2 * N * head_dim + t_c * (3 * N * head_dim + 4 * N)
''',
    },
    {
        # -inf - (-inf): NaN on a row with every key masked so far
        "online_softmax_update": '''
def online_softmax_update(m, l, acc, scores_block, v_block):
    import torch
    m_new = torch.maximum(m, scores_block.amax(dim=-1))
    alpha = torch.exp(m - m_new)
    p = torch.exp(scores_block - m_new.unsqueeze(-1))
    return m_new, alpha * l + p.sum(dim=-1), alpha.unsqueeze(-1) * acc + p @ v_block
''',
        # -inf - (-inf): NaN when both sides are empty
        "merge_partials": '''
def merge_partials(m_a, l_a, acc_a, m_b, l_b, acc_b):
    import torch
    m = torch.maximum(m_a, m_b)
    alpha, beta = torch.exp(m_a - m), torch.exp(m_b - m)
    return m, alpha * l_a + beta * l_b, alpha.unsqueeze(-1) * acc_a + beta.unsqueeze(-1) * acc_b
''',
        # scaled by the value width: 1 / sqrt(d_v) (d = 8, d_v = 4 in the first case)
        "tiled_attention": '''
def tiled_attention(q, k, v, causal, block_size):
    import math
    import torch
    B, H, L, d = q.shape
    S, d_v = k.shape[2], v.shape[3]
    out = torch.empty(B, H, L, d_v)
    for i0 in range(0, L, block_size):
        qi = q[:, :, i0:i0 + block_size]
        nq = qi.shape[2]
        m, l, acc = torch.full((B, H, nq), float("-inf")), torch.zeros(B, H, nq), torch.zeros(B, H, nq, d_v)
        stop = min(S, i0 + nq) if causal else S
        for j0 in range(0, stop, block_size):
            kj, vj = k[:, :, j0:min(j0 + block_size, stop)], v[:, :, j0:min(j0 + block_size, stop)]
            s = qi @ kj.transpose(-2, -1) / math.sqrt(d_v)
            if causal:
                s = s.masked_fill(torch.arange(j0, j0 + kj.shape[2])[None, :] > torch.arange(i0, i0 + nq)[:, None],
                                  float("-inf"))
            m, l, acc = online_softmax_update(m, l, acc, s, vj)
        out[:, :, i0:i0 + nq] = acc / l.unsqueeze(-1)
    return out
''',
        # the score matrix read and written once instead of twice: 4Nd + 2N^2
        "flash_io": '''
def flash_io(N, head_dim, sram_elements):
    import math
    b_c = math.ceil(sram_elements / (4 * head_dim))
    t_c = math.ceil(N / b_c)
    return 4 * N * head_dim + 2 * N * N, 2 * N * head_dim + t_c * (3 * N * head_dim + 4 * N)
''',
    },
    {
        # the block's own max instead of the running max: m goes down when a block is lower
        "online_softmax_update": '''
def online_softmax_update(m, l, acc, scores_block, v_block):
    import torch
    m_new = scores_block.amax(dim=-1)
    shift = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
    alpha = torch.where(torch.isneginf(m), torch.zeros_like(m), torch.exp(m - shift))
    p = torch.exp(scores_block - shift.unsqueeze(-1))
    return m_new, alpha * l + p.sum(dim=-1), alpha.unsqueeze(-1) * acc + p @ v_block
''',
        # the update written inline, acc not rescaled when the max grows
        "tiled_attention": '''
def tiled_attention(q, k, v, causal, block_size):
    import math
    import torch
    B, H, L, d = q.shape
    S, d_v = k.shape[2], v.shape[3]
    out = torch.empty(B, H, L, d_v)
    for i0 in range(0, L, block_size):
        qi = q[:, :, i0:i0 + block_size]
        nq = qi.shape[2]
        m, l, acc = torch.full((B, H, nq, 1), float("-inf")), torch.zeros(B, H, nq, 1), torch.zeros(B, H, nq, d_v)
        stop = min(S, i0 + nq) if causal else S
        for j0 in range(0, stop, block_size):
            kj, vj = k[:, :, j0:min(j0 + block_size, stop)], v[:, :, j0:min(j0 + block_size, stop)]
            s = qi @ kj.transpose(-2, -1) / math.sqrt(d)
            if causal:
                s = s.masked_fill(torch.arange(j0, j0 + kj.shape[2])[None, :] > torch.arange(i0, i0 + nq)[:, None],
                                  float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            p = torch.exp(s - m_new)
            l = torch.exp(m - m_new) * l + p.sum(dim=-1, keepdim=True)
            acc = acc + p @ vj
            m = m_new
        out[:, :, i0:i0 + nq] = acc / l
    return out
''',
    },
    {
        # causal: the key blocks stop one key early, so the last query of each block misses itself
        "tiled_attention": '''
def tiled_attention(q, k, v, causal, block_size):
    import math
    import torch
    B, H, L, d = q.shape
    S, d_v = k.shape[2], v.shape[3]
    out = torch.empty(B, H, L, d_v)
    for i0 in range(0, L, block_size):
        qi = q[:, :, i0:i0 + block_size]
        nq = qi.shape[2]
        m, l, acc = torch.full((B, H, nq), float("-inf")), torch.zeros(B, H, nq), torch.zeros(B, H, nq, d_v)
        stop = min(S, i0 + nq - 1) if causal else S
        for j0 in range(0, stop, block_size):
            kj, vj = k[:, :, j0:min(j0 + block_size, stop)], v[:, :, j0:min(j0 + block_size, stop)]
            s = qi @ kj.transpose(-2, -1) / math.sqrt(d)
            if causal:
                s = s.masked_fill(torch.arange(j0, j0 + kj.shape[2])[None, :] > torch.arange(i0, i0 + nq)[:, None],
                                  float("-inf"))
            m, l, acc = online_softmax_update(m, l, acc, s, vj)
        out[:, :, i0:i0 + nq] = acc / l.unsqueeze(-1)
    return out
''',
    },
    {
        # scaled by 1 / d instead of 1 / sqrt(d)
        "tiled_attention": '''
def tiled_attention(q, k, v, causal, block_size):
    import torch
    B, H, L, d = q.shape
    S, d_v = k.shape[2], v.shape[3]
    out = torch.empty(B, H, L, d_v)
    for i0 in range(0, L, block_size):
        qi = q[:, :, i0:i0 + block_size]
        nq = qi.shape[2]
        m, l, acc = torch.full((B, H, nq), float("-inf")), torch.zeros(B, H, nq), torch.zeros(B, H, nq, d_v)
        stop = min(S, i0 + nq) if causal else S
        for j0 in range(0, stop, block_size):
            kj, vj = k[:, :, j0:min(j0 + block_size, stop)], v[:, :, j0:min(j0 + block_size, stop)]
            s = qi @ kj.transpose(-2, -1) / d
            if causal:
                s = s.masked_fill(torch.arange(j0, j0 + kj.shape[2])[None, :] > torch.arange(i0, i0 + nq)[:, None],
                                  float("-inf"))
            m, l, acc = online_softmax_update(m, l, acc, s, vj)
        out[:, :, i0:i0 + nq] = acc / l.unsqueeze(-1)
    return out
''',
    },
    {
        # hostile: the whole score matrix in NumPy, unseen by the largest-tensor watch in the call;
        # at L = S = 16384 it is 1 GiB, and the grader holds the whole kernel to 1 GiB
        "tiled_attention": ('''
def tiled_attention(q, k, v, causal, block_size):
    import numpy as np
    import torch
    L, S = q.shape[2], k.shape[2]
    s = q.numpy() @ np.swapaxes(k.numpy(), -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.arange(S)[None, :] > np.arange(L)[:, None], -np.inf, s)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return torch.from_numpy(((p @ v.numpy()) / p.sum(axis=-1, keepdims=True)).astype(np.float32))
''', "ran out of"),
    },
]
