"""Plausible wrong solutions of exercise 12 (ring attention on one process); see
tests/grading/test_wrong_submissions.py. Each bends one idea of the ring: the merge, the causal
mask by position, the layout, the order in which chunks travel, one chunk at a time."""

# A correct ring_step under its own name, for the ring variants (so that they fail by their ring).
_STEP = '''
def _good_step(m, l, acc, q, k_block, v_block, q_pos, k_pos, causal):
    s = q @ k_block.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
    m_new = torch.maximum(m, s.amax(dim=-1))
    shift = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
    alpha = torch.exp(m - shift)
    p = torch.exp(s - shift[..., None])
    return m_new, alpha * l + p.sum(dim=-1), alpha[..., None] * acc + p @ v_block
'''

_HEAD = "import math\n\nimport torch\n"


def _step(body: str) -> str:
    """A ring_step whose chunk partial (m_b, l_b, acc_b) is computed correctly; ``body`` merges it."""
    return _HEAD + '''
def ring_step(m, l, acc, q, k_block, v_block, q_pos, k_pos, causal):
    s = q @ k_block.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
    m_b = s.amax(dim=-1)
    safe_b = torch.where(torch.isneginf(m_b), torch.zeros_like(m_b), m_b)
    p = torch.exp(s - safe_b[..., None])
    l_b, acc_b = p.sum(dim=-1), p @ v_block
''' + body


def _sim(inner: str, layout: str = "pos = zigzag_chunks(N, P)") -> str:
    """A ring_attention_sim around a correct step; ``inner`` is the body of its loop over ranks."""
    return _HEAD + _STEP + '''
def _zz(N, P):
    chunks = torch.arange(N).reshape(2 * P, N // (2 * P))
    return torch.stack([torch.cat([chunks[r], chunks[2 * P - 1 - r]]) for r in range(P)])


def ring_attention_sim(q, k, v, world_size, causal):
    B, H, N, d = q.shape
    P, d_v = world_size, v.shape[-1]
    ''' + layout.replace("zigzag_chunks", "_zz") + '''
    n = pos.shape[1]
    out = torch.empty(B, H, N, d_v)
    for r in range(P):
''' + inner + '''
    return out
'''


_AVERAGE_SIM = '''        outs = []
        for s in range(P):
            src = (r - s) % P
            sc = q[:, :, pos[r]] @ k[:, :, pos[src]].transpose(-2, -1) / math.sqrt(d)
            if causal:
                sc = sc.masked_fill(pos[src][None, :] > pos[r][:, None], float("-inf"))
            w = torch.exp(sc - sc.amax(-1, keepdim=True).clamp(min=-1e30))
            w = w / w.sum(-1, keepdim=True).clamp(min=1e-30)
            if causal and bool((pos[src][None, :] > pos[r][:, None]).all()):
                continue
            outs.append(w @ v[:, :, pos[src]])
        out[:, :, pos[r]] = torch.stack(outs).mean(0)'''

_CONTIGUOUS_CAUSAL_SIM = '''        st = (torch.full((B, H, n), float("-inf")), torch.zeros(B, H, n), torch.zeros(B, H, n, d_v))
        for s in range(P):
            src = (r - s) % P
            if causal and src > r:
                continue
            st = _good_step(*st, q[:, :, pos[r]], k[:, :, pos[src]], v[:, :, pos[src]], pos[r], pos[src],
                            causal and src == r)
        out[:, :, pos[r]] = st[2] / st[1][..., None]'''

_OFF_BY_ONE_SIM = '''        st = (torch.full((B, H, n), float("-inf")), torch.zeros(B, H, n), torch.zeros(B, H, n, d_v))
        for s in range(P):
            src = (r - s) % P
            data = (r - s - 1) % P
            st = _good_step(*st, q[:, :, pos[r]], k[:, :, pos[data]], v[:, :, pos[data]], pos[r], pos[src], causal)
        out[:, :, pos[r]] = st[2] / st[1][..., None]'''

_ALL_KEYS_SIM = '''        all_pos = torch.arange(N)
        sc = q[:, :, pos[r]] @ k.transpose(-2, -1) / math.sqrt(d)
        if causal:
            sc = sc.masked_fill(all_pos[None, :] > pos[r][:, None], float("-inf"))
        w = torch.exp(sc - sc.amax(-1, keepdim=True))
        out[:, :, pos[r]] = (w / w.sum(-1, keepdim=True)) @ v'''

_WHOLE_MATRIX_SIM = _HEAD + '''
def ring_attention_sim(q, k, v, world_size, causal):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    w = torch.exp(s - s.amax(-1, keepdim=True))
    return (w / w.sum(-1, keepdim=True)) @ v
'''

_ZZ_HEAD = _HEAD + "\n\ndef zigzag_chunks(N, world_size):\n    P = world_size\n"

VARIANTS = [
    {  # merged by plain averaging; the tokens in order; the ring's outputs averaged over chunks
        "ring_step": _step('''    m_new = torch.maximum(m, m_b)
    return m_new, (l + l_b) / 2, (acc + acc_b) / 2
'''),
        "zigzag_chunks": _ZZ_HEAD + "    return torch.arange(N).reshape(P, N // P)\n",
        "ring_attention_sim": _sim(_AVERAGE_SIM),
    },
    {  # merged without the rescaling to the common max; chunk 2P - r (off by one); the contiguous
       # ring's causal rule (skip later ranks, mask only the own chunk) applied to the zigzag layout
        "ring_step": _step('''    return torch.maximum(m, m_b), l + l_b, acc + acc_b
'''),
        "zigzag_chunks": _ZZ_HEAD + '''    c = N // (2 * P)
    chunks = torch.arange(N).reshape(2 * P, c)
    return torch.stack([torch.cat([chunks[r], chunks[(2 * P - r) % (2 * P)]]) for r in range(P)])
''',
        "ring_attention_sim": _sim(_CONTIGUOUS_CAUSAL_SIM),
    },
    {  # the causal mask forgotten; tokens dealt round-robin (striped); the chunk's data one step off its positions
        "ring_step": _HEAD + _STEP.replace("_good_step", "ring_step").replace("if causal:", "if False:"),
        "zigzag_chunks": _ZZ_HEAD + "    return torch.arange(N).reshape(N // P, P).T.contiguous()\n",
        "ring_attention_sim": _sim(_OFF_BY_ONE_SIM),
    },
    {  # a query does not see its own key (j < i); the late chunk first; the whole score matrix at once
        "ring_step": _HEAD + _STEP.replace("_good_step", "ring_step").replace(
            "k_pos[None, :] > q_pos[:, None]", "k_pos[None, :] >= q_pos[:, None]"),
        "zigzag_chunks": _ZZ_HEAD + '''    chunks = torch.arange(N).reshape(2 * P, N // (2 * P))
    return torch.stack([torch.cat([chunks[2 * P - 1 - r], chunks[r]]) for r in range(P)])
''',
        "ring_attention_sim": (_WHOLE_MATRIX_SIM, "no whole (N, N) score matrix"),
    },
    {  # the max of -inf subtracted: rows with no visible key become NaN; no ring: each rank's queries
       # against every key at once
        "ring_step": _HEAD + _STEP.replace("_good_step", "ring_step").replace(
            "torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)", "m_new"),
        "ring_attention_sim": (_sim(_ALL_KEYS_SIM), "no whole (N, N) score matrix"),
    },
]
