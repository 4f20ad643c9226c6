"""Plausible wrong solutions of exercise 5 (see tests/grading/test_wrong_submissions.py).

Each definition is self-contained (it calls none of the notebook's other functions).
"""


def _block(ln: str = "(z - mu) / torch.sqrt(var + 1e-5)", var: str = "unbiased=False", scale: str = "d",
           gelu: str = "F.gelu(z)", first: str = "h = x + attn(a)", last: str = "h + mlp(ln(h, 'norm2'))") -> str:
    """A pre-norm block with one piece bent (each keyword is the correct piece by default)."""
    return f"""
import math
import torch
import torch.nn.functional as F

def pre_norm_block(x, params, num_heads, causal):
    p = params
    B, T, D = x.shape
    d = D // num_heads

    def ln(z, n):
        mu, var = z.mean(-1, keepdim=True), z.var(-1, keepdim=True, {var})
        return {ln} * p[n + ".weight"] + p[n + ".bias"]

    def lin(z, n):
        return z @ p[n + ".weight"].T + p[n + ".bias"]

    def attn(a):
        q, k, v = (lin(a, "attn." + n + "_proj").reshape(B, T, num_heads, d).transpose(1, 2) for n in "qkv")
        s = q @ k.transpose(-2, -1) / math.sqrt({scale})
        if causal:
            s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        return lin((torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, D), "attn.out_proj")

    def mlp(z):
        z = lin(z, "mlp.fc1")
        return lin({gelu}, "mlp.fc2")

    a = ln(x, "norm1")
    {first}
    return {last}
"""


VARIANTS = [
    {
        # The residual adds the normalised input LN(x) instead of x.
        "pre_norm_block": _block(first="h = a + attn(a)"),
        # <= instead of <: draws equal to the rate are chosen too.
        "mask_for_mlm": ("""
def mask_for_mlm(tokens, maskable, mask_id, rate, uniform):
    chosen = maskable & (uniform <= rate)
    return tokens.masked_fill(chosen, mask_id), tokens.masked_fill(~chosen, -100)
""", "uniform equal to the rate"),
        # No shift: every position is asked to predict itself.
        "next_token_batch": """
def next_token_batch(tokens, pad_id=None):
    targets = tokens if pad_id is None else tokens.masked_fill(tokens == pad_id, -100)
    return tokens, targets
""",
        # Fed only the last token each step: the model loses the prefix and the positions.
        "greedy_generate": """
import torch

def greedy_generate(model, prompt, max_new_tokens):
    out = prompt
    for _ in range(max_new_tokens):
        nxt = model(out[:, -1:])[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
    return out
""",
    },
    {
        # Scores scaled by the model's width D instead of the head's width d.
        "pre_norm_block": (_block(scale="D"), "2 heads, decoder (causal)"),
        # maskable ignored: special tokens and padding get masked.
        "mask_for_mlm": ("""
def mask_for_mlm(tokens, maskable, mask_id, rate, uniform):
    chosen = uniform < rate
    return tokens.masked_fill(chosen, mask_id), tokens.masked_fill(~chosen, -100)
""", "never masked"),
        # `if pad_id:` skips pad_id = 0, the usual padding token.
        "next_token_batch": ("""
def next_token_batch(tokens, pad_id=None):
    targets = tokens[:, 1:]
    if pad_id:
        targets = targets.masked_fill(targets == pad_id, -100)
    return tokens[:, :-1], targets
""", "padded targets are ignored"),
        # The next token read at the prompt's last position every step, not at the sequence's.
        "greedy_generate": """
import torch

def greedy_generate(model, prompt, max_new_tokens):
    out, last = prompt, prompt.shape[1] - 1
    for _ in range(max_new_tokens):
        nxt = model(out)[:, last].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
    return out
""",
    },
    {
        # GELU's tanh approximation instead of the exact one.
        "pre_norm_block": _block(gelu='F.gelu(z, approximate="tanh")'),
        # Every target kept: the loss would also be asked to predict the unmasked tokens.
        "mask_for_mlm": """
def mask_for_mlm(tokens, maskable, mask_id, rate, uniform):
    chosen = maskable & (uniform < rate)
    return tokens.masked_fill(chosen, mask_id), tokens.clone()
""",
        # The pad tokens replaced in the inputs as well as in the targets.
        "next_token_batch": """
def next_token_batch(tokens, pad_id=None):
    if pad_id is not None:
        tokens = tokens.masked_fill(tokens == pad_id, -100)
    return tokens[:, :-1], tokens[:, 1:]
""",
        # Counts the prompt in max_new_tokens: stops when the whole sequence is max_new_tokens long.
        "greedy_generate": """
import torch

def greedy_generate(model, prompt, max_new_tokens):
    out = prompt
    while out.shape[1] < max_new_tokens:
        nxt = model(out)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
    return out
""",
    },
    {
        # Post-norm (the original Transformer's order) where the task asks for pre-norm.
        "pre_norm_block": _block(first="h = ln(x + attn(x), 'norm1')", last="ln(h + mlp(h), 'norm2')"),
        # Writes -100 into its own view of the input: tokens change under the caller.
        "next_token_batch": ("""
def next_token_batch(tokens, pad_id=None):
    targets = tokens[:, 1:]
    if pad_id is not None:
        targets.masked_fill_(targets == pad_id, -100)
    return tokens[:, :-1], targets
""", "in place"),
    },
    {
        # The unbiased variance (divides by D - 1) in LayerNorm.
        "pre_norm_block": _block(var="unbiased=True"),
    },
]
