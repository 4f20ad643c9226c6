"""Exercise 5 (Transformer block, BERT's inputs, GPT's outputs): the references agree with the
library, and plausible wrong submissions lose their points with a useful message.

Whole notebooks (the solution source: full marks; the learner notebook: 0) are graded in
tests/grading/test_grading.py.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from attn_course import transformer
from attn_course.exercises.ex05_transformer_block import (
    EXERCISE,
    block_from_params,
    greedy_generate_reference,
    mask_for_mlm_reference,
    random_params,
)
from attn_course.grading.fixtures import TableLM, resolve
from attn_course.transformer import TransformerBlock, TransformerConfig, TransformerDecoder


@pytest.mark.parametrize("causal", [False, True])
def test_block_reference_is_the_library_block_with_these_weights(causal):
    torch.manual_seed(0)
    block = TransformerBlock(TransformerConfig(d_model=8, num_heads=2, d_ff=12, norm_first=True), causal=causal).eval()
    params = {k: v.clone() for k, v in block.state_dict().items()}
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        assert torch.allclose(block_from_params(params, 2, causal)(x)[0], block(x)[0])
    assert set(random_params(torch.Generator().manual_seed(0), 8, 12)) == set(params)


def test_mlm_reference_equals_the_library_with_the_same_draws():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(3, 30, (4, 9), generator=g)
    maskable = torch.rand(4, 9, generator=g) < 0.8
    lib = transformer.mask_for_mlm(tokens, maskable, 2, 0.3, generator=torch.Generator().manual_seed(5))
    ours = mask_for_mlm_reference(tokens, maskable, 2, 0.3, torch.rand(4, 9, generator=torch.Generator().manual_seed(5)))
    assert all(torch.equal(a, b) for a, b in zip(lib, ours))


def test_greedy_reference_equals_transformer_decoder_generate():
    torch.manual_seed(0)
    model = TransformerDecoder(TransformerConfig(vocab_size=11, max_len=10, d_model=16, num_heads=2, num_layers=1, d_ff=32))
    prompt = torch.randint(0, 11, (3, 2))
    assert torch.equal(greedy_generate_reference(model.eval(), prompt, 6), model.generate(prompt, 6))


def test_generation_cases_build_a_table_lm_and_stay_within_its_length():
    task = EXERCISE.task("greedy_generate")
    for case in task.cases(torch.Generator().manual_seed(0)):
        model, prompt, n = resolve(case.args)
        assert isinstance(model, TableLM) and prompt.shape[1] + n <= model.max_len


def _block(x, p, H, causal, eps=1e-5, gelu=F.gelu, residual_from_norm=False, scale_by_D=False):
    B, T, D = x.shape
    d = D // H

    def ln(z, n):
        mu, var = z.mean(-1, keepdim=True), z.var(-1, keepdim=True, unbiased=False)
        return (z - mu) / torch.sqrt(var + eps) * p[f"{n}.weight"] + p[f"{n}.bias"]

    def lin(z, n):
        return z @ p[f"{n}.weight"].T + p[f"{n}.bias"]

    a = ln(x, "norm1")
    q, k, v = (lin(a, f"attn.{n}_proj").reshape(B, T, H, d).transpose(1, 2) for n in "qkv")
    s = q @ k.transpose(-2, -1) / math.sqrt(D if scale_by_D else d)
    if causal:
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    att = lin((torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, D), "attn.out_proj")
    h = (a if residual_from_norm else x) + att
    return h + lin(gelu(lin(ln(h, "norm2"), "mlp.fc1")), "mlp.fc2")


def test_a_careful_block_passes(check):
    assert check("pre_norm_block", _block, quiet=True).passed


@pytest.mark.parametrize("mistake, case", [
    (dict(residual_from_norm=True), "one head, encoder"),
    (dict(scale_by_D=True), "2 heads, decoder (causal)"),
    (dict(gelu=lambda z: F.gelu(z, approximate="tanh")), "one head, encoder"),
])
def test_plausible_block_mistakes_fail_with_the_case(check, mistake, case):
    def pre_norm_block(x, params, num_heads, causal):
        return _block(x, params, num_heads, causal, **mistake)

    result = check("pre_norm_block", pre_norm_block, quiet=True)
    assert result.points == 0 and result.status == "failed"
    assert f"case '{case}'" in result.message and "Hint:" in result.message  # the case's diagnosis
    assert EXERCISE.task("pre_norm_block").hint not in result.message  # the task's hint only on request


def test_block_with_torch_attention_is_refused(check):
    def pre_norm_block(x, p, H, causal):
        return F.scaled_dot_product_attention(x, x, x)

    result = check("pre_norm_block", pre_norm_block, quiet=True)
    assert result.points == 0 and "calls `torch.nn.functional.scaled_dot_product_attention`" in result.message


def test_mlm_with_less_or_equal_fails_on_the_tie(check):
    def mask_for_mlm(tokens, maskable, mask_id, rate, uniform):
        chosen = maskable & (uniform <= rate)
        return tokens.masked_fill(chosen, mask_id), tokens.masked_fill(~chosen, -100)

    result = check("mask_for_mlm", mask_for_mlm, quiet=True)
    assert result.points == 0 and "uniform equal to the rate" in result.message and "strictly" in result.message


def test_mlm_that_ignores_maskable_fails(check):
    def mask_for_mlm(tokens, maskable, mask_id, rate, uniform):
        chosen = uniform < rate
        return tokens.masked_fill(chosen, mask_id), tokens.masked_fill(~chosen, -100)

    result = check("mask_for_mlm", mask_for_mlm, quiet=True)
    assert result.points == 0 and "never masked" in result.message


def test_shift_that_writes_into_the_input_is_caught(check):
    def next_token_batch(tokens, pad_id=None):
        targets = tokens[:, 1:]
        if pad_id is not None:
            targets.masked_fill_(targets == pad_id, -100)
        return tokens[:, :-1], targets

    result = check("next_token_batch", next_token_batch, quiet=True)
    assert result.points == 0 and "changed its input `tokens` in place" in result.message


def test_generation_from_the_last_token_only_fails(check):
    def greedy_generate(model, prompt, max_new_tokens):
        out = prompt
        for _ in range(max_new_tokens):
            out = torch.cat([out, model(out[:, -1:])[:, -1].argmax(-1, keepdim=True)], dim=1)
        return out

    result = check("greedy_generate", greedy_generate, quiet=True)
    assert result.points == 0 and "the result differs at index" in result.message
    assert "model: table_lm" in result.message and "whole prefix" in result.message
