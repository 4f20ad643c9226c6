"""Plausible wrong solutions of exercise 9 (see tests/grading/test_wrong_submissions.py).

Each skips or bends the idea of its task in a different way; the comment in each says which
case or rule catches it. The last variant is hostile rather than plausible: it leaves torch for
NumPy, where the measurements made in the call see nothing, so only the rules the grader
enforces from outside (CPU time, the kernel's memory) can catch it.
"""

_SPARSE_RULE = "compute only the tiles the layout allows"
_CHUNK_RULE = "no (N, N) matrix"

VARIANTS = [
    {
        # not halved when causal: the "causal" case
        "attention_flops": '''
def attention_flops(batch, heads, N, head_dim, causal):
    return 4.0 * batch * heads * N * N * head_dim
''',
        # floor division: the last, shorter block is dropped ("N not a multiple of the block")
        "block_layout": '''
def block_layout(mask, block_size):
    import torch
    b = block_size
    L, S = mask.shape
    Lb, Sb = L // b, S // b
    return mask[: Lb * b, : Sb * b].reshape(Lb, b, Sb, b).any(dim=3).any(dim=1)
''',
        # the whole score matrix, then the layout as a mask: right values, every tile's FLOPs
        "block_sparse_attention": ('''
def block_sparse_attention(q, k, v, layout, block_size):
    import math
    import torch
    L, S = q.shape[2], k.shape[2]
    b = block_size
    allowed = layout.repeat_interleave(b, 0).repeat_interleave(b, 1)[:L, :S]  # (L, S)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, L, S): every tile
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key: 0
    return weights @ v
''', _SPARSE_RULE),
        # the quadratic form with a causal mask: an (N, N) matrix (and 1.3 GB at N = 18000)
        "chunkwise_linear_attention": ('''
def chunkwise_linear_attention(q, k, v, chunk_size):
    import torch
    import torch.nn.functional as F
    N = q.shape[2]
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    A = (phi_q @ phi_k.transpose(-2, -1)) * torch.ones(N, N).tril()  # (B, H, N, N)
    return (A @ v) / (A.sum(dim=-1, keepdim=True) + 1e-6)
''', _CHUNK_RULE),
        # reads the old state: token t does not see itself ("the first token (empty state)")
        "linear_attention_step": '''
def linear_attention_step(kv, z, q_t, k_t, v_t):
    import torch.nn.functional as F
    phi_q, phi_k = F.elu(q_t) + 1, F.elu(k_t) + 1
    out = (phi_q.unsqueeze(-2) @ kv).squeeze(-2) / ((phi_q * z).sum(-1, keepdim=True) + 1e-6)
    return out, kv + phi_k.unsqueeze(-1) * v_t.unsqueeze(-2), z + phi_k
''',
    },
    {
        # a multiply-add counted as one FLOP
        "attention_flops": '''
def attention_flops(batch, heads, N, head_dim, causal):
    flops = 2.0 * batch * heads * N * N * head_dim
    return flops / 2 if causal else flops
''',
        # looks at one corner of each tile only ("Longformer": the allowed pair elsewhere in the tile)
        "block_layout": '''
def block_layout(mask, block_size):
    return mask[::block_size, ::block_size].clone()
''',
        # each query block against every key, then the tiles not allowed masked: every tile's FLOPs
        "block_sparse_attention": ('''
def block_sparse_attention(q, k, v, layout, block_size):
    import math
    import torch
    B, H, L, d = q.shape
    S = k.shape[2]
    b = block_size
    out = torch.zeros(B, H, L, v.shape[3])
    for i in range(layout.shape[0]):
        i0, i1 = i * b, min((i + 1) * b, L)
        scores = q[:, :, i0:i1] @ k.transpose(-2, -1) / math.sqrt(d)  # (B, H, rows, S): every key
        allowed = layout[i].repeat_interleave(b)[:S]  # (S,)
        if not allowed.any():
            continue
        scores = scores.masked_fill(~allowed, float("-inf"))
        out[:, :, i0:i1] = torch.softmax(scores, dim=-1) @ v
    return out
''', _SPARSE_RULE),
        # the state starts from zero in every chunk: a query sees its own chunk only
        "chunkwise_linear_attention": '''
def chunkwise_linear_attention(q, k, v, chunk_size):
    import torch
    import torch.nn.functional as F
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    outs = []
    for t0 in range(0, q.shape[2], chunk_size):
        qc, kc, vc = phi_q[:, :, t0:t0 + chunk_size], phi_k[:, :, t0:t0 + chunk_size], v[:, :, t0:t0 + chunk_size]
        c = qc.shape[2]
        A = (qc @ kc.transpose(-2, -1)) * torch.ones(c, c).tril()
        outs.append((A @ vc) / (A.sum(dim=-1, keepdim=True) + 1e-6))
    return torch.cat(outs, dim=2)
''',
        # updates the caller's state in place (the checker compares the inputs after the call)
        "linear_attention_step": '''
def linear_attention_step(kv, z, q_t, k_t, v_t):
    import torch.nn.functional as F
    phi_q, phi_k = F.elu(q_t) + 1, F.elu(k_t) + 1
    kv += phi_k.unsqueeze(-1) * v_t.unsqueeze(-2)
    z += phi_k
    out = (phi_q.unsqueeze(-2) @ kv).squeeze(-2) / ((phi_q * z).sum(-1, keepdim=True) + 1e-6)
    return out, kv, z
''',
    },
    {
        # halved whether causal or not
        "attention_flops": '''
def attention_flops(batch, heads, N, head_dim, causal):
    return 2.0 * batch * heads * N * N * head_dim
''',
        # the padded mask viewed in the wrong order: (Lb, Sb, b, b) is not a tile per (i, j)
        "block_layout": '''
def block_layout(mask, block_size):
    import math
    import torch
    b = block_size
    L, S = mask.shape
    Lb, Sb = math.ceil(L / b), math.ceil(S / b)
    padded = torch.zeros(Lb * b, Sb * b, dtype=torch.bool)
    padded[:L, :S] = mask
    return padded.view(Lb, Sb, b, b).any(dim=3).any(dim=2)
''',
        # whole blocks only: the last, shorter query block is never computed (L = 50, blocks of 16)
        "block_sparse_attention": '''
def block_sparse_attention(q, k, v, layout, block_size):
    import math
    import torch
    B, H, L, d = q.shape
    b = block_size
    out = torch.zeros(B, H, L, v.shape[3])
    for i in range(L // b):
        blocks = layout[i].nonzero().flatten().tolist()
        if not blocks:
            continue
        kb = torch.cat([k[:, :, j * b:(j + 1) * b] for j in blocks], dim=2)
        vb = torch.cat([v[:, :, j * b:(j + 1) * b] for j in blocks], dim=2)
        scores = q[:, :, i * b:(i + 1) * b] @ kb.transpose(-2, -1) / math.sqrt(d)
        out[:, :, i * b:(i + 1) * b] = torch.softmax(scores, dim=-1) @ vb
    return out
''',
        # inside a chunk every query sees every key of the chunk, later ones included
        "chunkwise_linear_attention": '''
def chunkwise_linear_attention(q, k, v, chunk_size):
    import torch
    import torch.nn.functional as F
    B, H, N, d = q.shape
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    kv, z = torch.zeros(B, H, d, v.shape[3]), torch.zeros(B, H, d)
    outs = []
    for t0 in range(0, N, chunk_size):
        qc, kc, vc = phi_q[:, :, t0:t0 + chunk_size], phi_k[:, :, t0:t0 + chunk_size], v[:, :, t0:t0 + chunk_size]
        A = qc @ kc.transpose(-2, -1)  # (B, H, c, c), not causal
        outs.append((A @ vc + qc @ kv) / (A.sum(dim=-1, keepdim=True) + qc @ z.unsqueeze(-1) + 1e-6))
        kv = kv + kc.transpose(-2, -1) @ vc
        z = z + kc.sum(dim=-2)
    return torch.cat(outs, dim=2)
''',
        # no feature map: q . k itself, which may be negative
        "linear_attention_step": '''
def linear_attention_step(kv, z, q_t, k_t, v_t):
    kv_new = kv + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
    z_new = z + k_t
    out = (q_t.unsqueeze(-2) @ kv_new).squeeze(-2) / ((q_t * z_new).sum(-1, keepdim=True) + 1e-6)
    return out, kv_new, z_new
''',
    },
    {
        # one tile at a time with the online softmax, but a query block with no tile divides 0 by 0
        "block_sparse_attention": '''
def block_sparse_attention(q, k, v, layout, block_size):
    import math
    import torch
    B, H, L, d = q.shape
    d_v = v.shape[3]
    b = block_size
    out = torch.empty(B, H, L, d_v)
    for i in range(layout.shape[0]):
        i0, i1 = i * b, min((i + 1) * b, L)
        m = torch.full((B, H, i1 - i0, 1), float("-inf"))
        l = torch.zeros(B, H, i1 - i0, 1)
        acc = torch.zeros(B, H, i1 - i0, d_v)
        for j in layout[i].nonzero().flatten().tolist():
            s = q[:, :, i0:i1] @ k[:, :, j * b:(j + 1) * b].transpose(-2, -1) / math.sqrt(d)
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            p = torch.exp(s - m_new)
            alpha = torch.exp(m - m_new)
            l = alpha * l + p.sum(dim=-1, keepdim=True)
            acc = alpha * acc + p @ v[:, :, j * b:(j + 1) * b]
            m = m_new
        out[:, :, i0:i1] = acc / l
    return out
''',
        # no feature map: phi(x) = x, whose sums can be near 0 or negative
        "chunkwise_linear_attention": '''
def chunkwise_linear_attention(q, k, v, chunk_size):
    import torch
    B, H, N, d = q.shape
    kv, z = torch.zeros(B, H, d, v.shape[3]), torch.zeros(B, H, d)
    outs = []
    for t0 in range(0, N, chunk_size):
        qc, kc, vc = q[:, :, t0:t0 + chunk_size], k[:, :, t0:t0 + chunk_size], v[:, :, t0:t0 + chunk_size]
        c = qc.shape[2]
        A = (qc @ kc.transpose(-2, -1)) * torch.ones(c, c).tril()
        outs.append((A @ vc + qc @ kv) / (A.sum(dim=-1, keepdim=True) + qc @ z.unsqueeze(-1) + 1e-6))
        kv = kv + kc.transpose(-2, -1) @ vc
        z = z + kc.sum(dim=-2)
    return torch.cat(outs, dim=2)
''',
    },
    {
        # hostile: every tile in NumPy, where the FLOP count in the call sees nothing; the grader
        # reads its CPU time on the large case from the kernel's cgroup
        "block_sparse_attention": ('''
def block_sparse_attention(q, k, v, layout, block_size):
    import numpy as np
    import torch
    L, S = q.shape[2], k.shape[2]
    b = block_size
    allowed = np.kron(layout.numpy(), np.ones((b, b), dtype=bool))[:L, :S].astype(bool)
    s = q.numpy() @ np.swapaxes(k.numpy(), -1, -2) / np.sqrt(q.shape[-1])
    s = np.where(allowed, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - np.where(np.isfinite(m), m, 0.0))
    l = p.sum(axis=-1, keepdims=True)
    return torch.from_numpy(((p @ v.numpy()) / np.where(l == 0, 1.0, l)).astype(np.float32))
''', "CPU"),
        # hostile: the quadratic form in NumPy, where the largest-tensor watch sees nothing; the
        # kernel's 1 GiB (set by the grader) cannot hold the (N, N) matrix at N = 18000
        "chunkwise_linear_attention": ('''
def chunkwise_linear_attention(q, k, v, chunk_size):
    import numpy as np
    import torch
    phi_q, phi_k = (np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0))).astype(np.float32)
                    for x in (q.numpy(), k.numpy()))
    A = np.tril(phi_q @ np.swapaxes(phi_k, -1, -2))
    return torch.from_numpy(((A @ v.numpy()) / (A.sum(axis=-1, keepdims=True) + 1e-6)).astype(np.float32))
''', "ran out of"),
    },
]
