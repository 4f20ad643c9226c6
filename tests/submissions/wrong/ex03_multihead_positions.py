"""Plausible wrong solutions of exercise 3 (see tests/grading/test_wrong_submissions.py).

Each definition is self-contained (it calls none of the notebook's other functions).
"""

VARIANTS = [
    {
        # Reshaped straight to (B, H, T, d): tokens and heads mixed.
        "split_heads": """
def split_heads(x, num_heads):
    B, T, D = x.shape
    return x.reshape(B, num_heads, T, D // num_heads)
""",
        # Reshaped without moving the head axis back: tokens and heads mixed.
        "merge_heads": """
def merge_heads(x):
    B, H, T, d = x.shape
    return x.reshape(B, T, H * d)
""",
        # The upper triangle: every query sees the future.
        "causal_mask": """
import torch

def causal_mask(T):
    return torch.ones(T, T, dtype=torch.bool).triu()
""",
        # <= instead of <: one padding position too many counted as real.
        "padding_mask": """
import torch

def padding_mask(lengths, max_len):
    return torch.arange(max_len)[None, :] <= lengths[:, None]
""",
        # Scaled by the model's width D instead of the head's width d.
        "multi_head_self_attention": ("""
import math
import torch

def multi_head_self_attention(x, W_q, W_k, W_v, W_o, num_heads, mask):
    B, T, D = x.shape
    q, k, v = ((x @ W.T).reshape(B, T, num_heads, D // num_heads).transpose(1, 2) for W in (W_q, W_k, W_v))
    s = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, dim=-1)
    return (w @ v).transpose(1, 2).reshape(B, T, D) @ W_o.T
""", "2 heads"),
        # The exponent uses the column index j instead of the pair's 2i.
        "sinusoidal_encoding": """
import torch

def sinusoidal_encoding(seq_len, dim):
    pos = torch.arange(seq_len, dtype=torch.float32)[:, None]
    j = torch.arange(dim)
    angles = pos * 10000.0 ** (-j.float() / dim)
    return torch.where(j % 2 == 0, angles.sin(), angles.cos())
""",
        # Rotates the halves (i, i + d/2) instead of the adjacent pairs (2i, 2i + 1).
        "apply_rope": """
import torch

def apply_rope(x):
    T, d = x.shape[-2], x.shape[-1]
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = torch.arange(T, dtype=torch.float32)[:, None] * theta
    cos, sin = angles.cos(), angles.sin()
    a, b = x[..., : d // 2], x[..., d // 2:]
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
""",
    },
    {
        # Heads interleaved: head h takes features h, h + H, h + 2H, ...
        "split_heads": """
def split_heads(x, num_heads):
    B, T, D = x.shape
    return x.reshape(B, T, D // num_heads, num_heads).permute(0, 3, 1, 2)
""",
        # Heads interleaved on the way back: feature j of head h lands at j * H + h.
        "merge_heads": """
def merge_heads(x):
    B, H, T, d = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, H * d)
""",
        # Strictly below the diagonal: a query cannot see itself.
        "causal_mask": """
import torch

def causal_mask(T):
    return torch.ones(T, T, dtype=torch.bool).tril(diagonal=-1)
""",
        # True at the padding instead of at the real tokens.
        "padding_mask": """
import torch

def padding_mask(lengths, max_len):
    return torch.arange(max_len)[None, :] >= lengths[:, None]
""",
        # The heads split without moving the head axis: each "head" is a slice of tokens.
        "multi_head_self_attention": """
import math
import torch

def multi_head_self_attention(x, W_q, W_k, W_v, W_o, num_heads, mask):
    B, T, D = x.shape
    q, k, v = ((x @ W.T).reshape(B, num_heads, T, D // num_heads) for W in (W_q, W_k, W_v))
    s = (q @ k.transpose(-2, -1) / math.sqrt(D // num_heads)).masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, dim=-1)
    return (w @ v).reshape(B, T, D) @ W_o.T
""",
        # Sines in the first half of the columns, cosines in the second (the other common layout).
        "sinusoidal_encoding": """
import torch

def sinusoidal_encoding(seq_len, dim):
    pos = torch.arange(seq_len, dtype=torch.float32)[:, None]
    half = (dim + 1) // 2
    freq = 10000.0 ** (-2 * torch.arange(half, dtype=torch.float32) / dim)
    angles = pos * freq
    return torch.cat((angles.sin(), angles.cos()), dim=-1)[:, :dim]
""",
        # Turned the other way: by -m * theta_i.
        "apply_rope": """
import torch

def apply_rope(x):
    T, d = x.shape[-2], x.shape[-1]
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = torch.arange(T, dtype=torch.float32)[:, None] * theta
    cos, sin = angles.cos(), angles.sin()
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * cos + b * sin, -a * sin + b * cos), dim=-1).flatten(-2)
""",
    },
    {
        # Transposed first, then reshaped: the tokens' features are cut across tokens.
        "split_heads": """
def split_heads(x, num_heads):
    B, T, D = x.shape
    return x.transpose(1, 2).reshape(B, num_heads, T, D // num_heads)
""",
        # The heads averaged instead of concatenated.
        "merge_heads": """
def merge_heads(x):
    B, H, T, d = x.shape
    return x.mean(dim=1).repeat(1, 1, H)
""",
        # A float mask instead of a boolean one.
        "causal_mask": """
import torch

def causal_mask(T):
    return torch.ones(T, T).tril()
""",
        # The mask only as long as the longest sequence, not max_len.
        "padding_mask": """
import torch

def padding_mask(lengths, max_len):
    return torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
""",
        # Projected with x @ W instead of x @ W.T (nn.Linear's layout misread).
        "multi_head_self_attention": """
import math
import torch

def multi_head_self_attention(x, W_q, W_k, W_v, W_o, num_heads, mask):
    B, T, D = x.shape
    q, k, v = ((x @ W).reshape(B, T, num_heads, D // num_heads).transpose(1, 2) for W in (W_q, W_k, W_v))
    s = (q @ k.transpose(-2, -1) / math.sqrt(D // num_heads)).masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, dim=-1)
    return (w @ v).transpose(1, 2).reshape(B, T, D) @ W_o
""",
        # Cosine in the even columns, sine in the odd ones.
        "sinusoidal_encoding": """
import torch

def sinusoidal_encoding(seq_len, dim):
    pos = torch.arange(seq_len, dtype=torch.float32)[:, None]
    pair = torch.arange(dim) // 2
    angles = pos * 10000.0 ** (-2 * pair.float() / dim)
    return torch.where(torch.arange(dim) % 2 == 0, angles.cos(), angles.sin())
""",
        # theta_i = 10000^(-i/d): the pair index not doubled.
        "apply_rope": """
import torch

def apply_rope(x):
    T, d = x.shape[-2], x.shape[-1]
    theta = 10000.0 ** (-torch.arange(d // 2, dtype=torch.float32) / d)
    angles = torch.arange(T, dtype=torch.float32)[:, None] * theta
    cos, sin = angles.cos(), angles.sin()
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
""",
    },
    {
        # True where attending is forbidden (the mask inverted).
        "causal_mask": """
import torch

def causal_mask(T):
    return torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
""",
        # The mask ignored: every token sees every token, padding included.
        "multi_head_self_attention": """
import math
import torch

def multi_head_self_attention(x, W_q, W_k, W_v, W_o, num_heads, mask):
    B, T, D = x.shape
    q, k, v = ((x @ W.T).reshape(B, T, num_heads, D // num_heads).transpose(1, 2) for W in (W_q, W_k, W_v))
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // num_heads), dim=-1)
    return (w @ v).transpose(1, 2).reshape(B, T, D) @ W_o.T
""",
        # Positions counted from 1.
        "sinusoidal_encoding": """
import torch

def sinusoidal_encoding(seq_len, dim):
    pos = torch.arange(1, seq_len + 1, dtype=torch.float32)[:, None]
    pair = torch.arange(dim) // 2
    angles = pos * 10000.0 ** (-2 * pair.float() / dim)
    return torch.where(torch.arange(dim) % 2 == 0, angles.sin(), angles.cos())
""",
        # Positions counted from 1: position 0 is turned too.
        "apply_rope": """
import torch

def apply_rope(x):
    T, d = x.shape[-2], x.shape[-1]
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = torch.arange(1, T + 1, dtype=torch.float32)[:, None] * theta
    cos, sin = angles.cos(), angles.sin()
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
""",
    },
]
