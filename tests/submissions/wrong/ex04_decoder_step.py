"""Plausible wrong solutions of exercise 4 (see tests/grading/test_wrong_submissions.py).

Each definition is self-contained (it calls none of the notebook's other functions); the
attention part of ``bahdanau_step`` is written correctly where the variant bends the GRU, and
the other way round.
"""

_ATTN = '''
    def attn(query, keys, values, mask, W_q, W_k, v):
        scores = torch.tanh((query @ W_q.T).unsqueeze(-2) + (keys @ W_k.T).unsqueeze(-3)) @ v  # (..., L, S)
        s = scores.masked_fill(~mask, float("-inf"))
        m = s.amax(-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        e = (s - m).exp()
        total = e.sum(-1, keepdim=True)
        w = torch.where(total > 0, e / total.clamp_min(1e-30), torch.zeros_like(e))
        return w @ values, w
'''

_GRU = '''
    def gru(x, s, W_ih, W_hh, b_ih, b_hh):
        i_r, i_z, i_n = (x @ W_ih.T + b_ih).chunk(3, -1)
        h_r, h_z, h_n = (s @ W_hh.T + b_hh).chunk(3, -1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        return (1 - z) * torch.tanh(i_n + r * h_n) + z * s
'''


def _step(attention: str, gru: str, body: str) -> str:
    return ("import torch\n\n"
            "def bahdanau_step(prev_emb, s_prev, enc_states, src_mask, W_q, W_k, v, W_ih, W_hh, b_ih, b_hh):"
            + attention + gru + body)


VARIANTS = [
    {
        # The context averages the keys instead of the values.
        "additive_context": ("""
import torch

def additive_context(query, keys, values, mask, W_q, W_k, v):""" + _ATTN + """
    return attn(query, keys, keys, mask, W_q, W_k, v)
""", "has shape"),
        # The GRU's input in the wrong order: [context; prev_emb].
        "bahdanau_step": _step(_ATTN, _GRU, """
    c, w = attn(s_prev[:, None], enc_states, enc_states, src_mask[:, None], W_q, W_k, v)
    c, w = c[:, 0], w[:, 0]
    return gru(torch.cat([c, prev_emb], -1), s_prev, W_ih, W_hh, b_ih, b_hh), w, c
"""),
    },
    {
        # The -inf trick: a query with nothing to attend to gets NaN.
        "additive_context": ("""
import torch

def additive_context(query, keys, values, mask, W_q, W_k, v):
    scores = torch.tanh((query @ W_q.T).unsqueeze(-2) + (keys @ W_k.T).unsqueeze(-3)) @ v
    s = scores.masked_fill(~mask, float("-inf"))
    e = (s - s.amax(-1, keepdim=True)).exp()
    w = e / e.sum(-1, keepdim=True)
    return w @ values, w
""", "a query that may attend to nothing"),
        # The source mask never reaches the softmax: padding gets weight.
        "bahdanau_step": (_step(_ATTN, _GRU, """
    c, w = attn(s_prev[:, None], enc_states, enc_states, torch.ones_like(src_mask[:, None]), W_q, W_k, v)
    c, w = c[:, 0], w[:, 0]
    return gru(torch.cat([prev_emb, c], -1), s_prev, W_ih, W_hh, b_ih, b_hh), w, c
"""), "a batch with padding"),
    },
    {
        # No tanh: the score is linear in the projections.
        "additive_context": """
import torch

def additive_context(query, keys, values, mask, W_q, W_k, v):
    scores = ((query @ W_q.T).unsqueeze(-2) + (keys @ W_k.T).unsqueeze(-3)) @ v
    s = scores.masked_fill(~mask, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = (s - m).exp()
    total = e.sum(-1, keepdim=True)
    w = torch.where(total > 0, e / total.clamp_min(1e-30), torch.zeros_like(e))
    return w @ values, w
""",
        # The update gate the wrong way round: z keeps the candidate, 1 - z the old state.
        "bahdanau_step": _step(_ATTN, "", """
    c, w = attn(s_prev[:, None], enc_states, enc_states, src_mask[:, None], W_q, W_k, v)
    c, w = c[:, 0], w[:, 0]
    x = torch.cat([prev_emb, c], -1)
    i_r, i_z, i_n = (x @ W_ih.T + b_ih).chunk(3, -1)
    h_r, h_z, h_n = (s_prev @ W_hh.T + b_hh).chunk(3, -1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    return z * torch.tanh(i_n + r * h_n) + (1 - z) * s_prev, w, c
"""),
    },
    {
        # No shift before exp(): scores in the hundreds overflow.
        "additive_context": ("""
import torch

def additive_context(query, keys, values, mask, W_q, W_k, v):
    scores = torch.tanh((query @ W_q.T).unsqueeze(-2) + (keys @ W_k.T).unsqueeze(-3)) @ v
    e = scores.exp() * mask
    total = e.sum(-1, keepdim=True)
    w = torch.where(total > 0, e / total.clamp_min(1e-30), torch.zeros_like(e))
    return w @ values, w
""", "large scores"),
        # The reset gate outside the hidden bias: r * (s W_hn^T) + b_hn, not torch's r * (s W_hn^T + b_hn).
        "bahdanau_step": _step(_ATTN, "", """
    c, w = attn(s_prev[:, None], enc_states, enc_states, src_mask[:, None], W_q, W_k, v)
    c, w = c[:, 0], w[:, 0]
    x = torch.cat([prev_emb, c], -1)
    i_r, i_z, i_n = (x @ W_ih.T + b_ih).chunk(3, -1)
    h_r, h_z, h_n = (s_prev @ W_hh.T).chunk(3, -1)
    b_r, b_z, b_n = b_hh.chunk(3)
    r, z = torch.sigmoid(i_r + h_r + b_r), torch.sigmoid(i_z + h_z + b_z)
    return (1 - z) * torch.tanh(i_n + r * h_n + b_n) + z * s_prev, w, c
"""),
    },
]
