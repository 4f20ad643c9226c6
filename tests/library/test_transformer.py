"""TransformerBlock, TransformerEncoder/Decoder: shapes, masks, parameter count, agreement with torch."""

import pytest
import torch
from torch import nn

from attn_course.masking import causal_mask
from attn_course.transformer import (
    TransformerBlock,
    TransformerConfig,
    TransformerDecoder,
    TransformerEncoder,
    num_parameters,
)

SMALL = TransformerConfig(vocab_size=11, max_len=12, d_model=24, num_heads=3, num_layers=2, d_ff=40)


def tokens(B=3, T=9, V=11, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- config


def test_config_checks_divisibility_with_a_clear_message():
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by num_heads \(4\).*\[1, 2, 3, 5, 6"):
        TransformerConfig(d_model=30, num_heads=4)
    assert TransformerConfig(d_model=30, num_heads=5).head_dim == 6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vocab_size": 0}, "vocab_size must be a positive int"),
        ({"num_layers": 1.5}, "num_layers must be a positive int"),
        ({"d_ff": True}, "d_ff must be a positive int"),
        ({"dropout": 1.0}, r"dropout must be a float in \[0, 1\)"),
        ({"activation": "tanh"}, "activation must be one of"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig(**kwargs)


# --------------------------------------------------------------------------- shapes and masks


@pytest.mark.parametrize("cls", [TransformerEncoder, TransformerDecoder])
def test_shapes(cls):
    model = cls(SMALL).eval()
    x = tokens(B=3, T=7)
    logits = model(x)
    assert logits.shape == (3, 7, SMALL.vocab_size)
    logits2, attention = model(x, return_attention=True)
    torch.testing.assert_close(logits, logits2)
    assert len(attention) == SMALL.num_layers
    for w in attention:
        assert w.shape == (3, SMALL.num_heads, 7, 7)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, SMALL.num_heads, 7))


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_is_causal_earlier_logits_ignore_later_tokens(norm_first):
    torch.manual_seed(0)
    config = TransformerConfig(**{**SMALL.__dict__, "norm_first": norm_first})
    model = TransformerDecoder(config).eval()
    x = tokens(B=2, T=10)
    t = 4
    changed = x.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % config.vocab_size  # every later token differs
    a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().amax() > 1e-3
    _, attention = model(x, return_attention=True)
    upper = ~causal_mask(10)  # (T, T): keys after the query
    for w in attention:
        assert (w[..., upper] == 0).all()  # exactly zero, not merely small


def test_encoder_is_bidirectional_earlier_logits_see_later_tokens():
    torch.manual_seed(0)
    model = TransformerEncoder(SMALL).eval()
    x = tokens(B=2, T=10)
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] + 1) % SMALL.vocab_size
    assert (model(x)[:, 0] - model(changed)[:, 0]).abs().amax() > 1e-4
    _, attention = model(x, return_attention=True)
    assert all((w[..., ~causal_mask(10)] > 0).all() for w in attention)


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_padding_invariance(norm_first):
    torch.manual_seed(0)
    config = TransformerConfig(**{**SMALL.__dict__, "norm_first": norm_first})
    model = TransformerEncoder(config).eval()
    x = tokens(B=1, T=5)
    alone = model(x)  # (1, 5, V)
    for pad_len, pad_seed in [(3, 1), (7, 2)]:
        padded = torch.cat([x, tokens(B=1, T=pad_len, seed=pad_seed)], dim=1)  # any ids in the padding
        mask = torch.arange(5 + pad_len)[None] < 5  # (1, T): True = real token
        torch.testing.assert_close(model(padded, mask)[:, :5], alone, rtol=0, atol=1e-5)
    # without the mask, the padding is attended to and changes the outputs
    assert (model(padded)[:, :5] - alone).abs().amax() > 1e-4


def test_batched_padding_matches_one_sequence_at_a_time():
    torch.manual_seed(0)
    model = TransformerEncoder(SMALL).eval()
    lengths = [9, 4, 6]
    x = tokens(B=3, T=9)
    mask = torch.arange(9)[None] < torch.tensor(lengths)[:, None]  # (B, T)
    batched = model(x, mask)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(batched[b, :n], model(x[b : b + 1, :n])[0], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    "config",
    [
        SMALL,
        TransformerConfig(vocab_size=15, max_len=15, d_model=32, num_heads=4, num_layers=2, d_ff=128),
        TransformerConfig(vocab_size=7, max_len=5, d_model=16, num_heads=1, num_layers=3, d_ff=8, norm_first=False),
        TransformerConfig(vocab_size=50, max_len=64, d_model=48, num_heads=6, num_layers=1, d_ff=192, activation="relu"),
    ],
)
@pytest.mark.parametrize("cls", [TransformerEncoder, TransformerDecoder])
def test_parameter_count_formula(config, cls):
    parts = num_parameters(config)
    model = cls(config)
    assert sum(p.numel() for p in model.parameters()) == parts["total"]
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    D, N = config.d_model, config.num_layers
    block = sum(p.numel() for p in model.blocks[0].parameters())
    assert block * N == parts["attention"] + parts["mlp"] + N * 4 * D


def test_parameter_count_does_not_depend_on_heads():
    counts = {num_parameters(TransformerConfig(d_model=24, num_heads=h))["total"] for h in (1, 2, 3, 4, 6, 8)}
    assert len(counts) == 1


# --------------------------------------------------------------------------- agreement with torch


def random_torch_layer(norm_first, activation, D=24, H=3, F=40, seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(
        D, H, F, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first
    )
    with torch.no_grad():  # perturb every parameter, so that zero biases and unit norms are tested too
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_from_torch_agrees_with_transformer_encoder_layer(norm_first, activation, causal, training):
    layer = random_torch_layer(norm_first, activation).train(training)
    block = TransformerBlock.from_torch(layer, causal=causal)
    assert block.norm_first == norm_first and block.causal == causal and block.training == training
    B, T = 3, 7
    x = torch.randn(B, T, 24, generator=torch.Generator().manual_seed(1))
    real = torch.arange(T)[None] < torch.tensor([7, 5, 3])[:, None]  # (B, T): True = real token
    ours, weights = block(x, real)
    src_mask = ~causal_mask(T) if causal else None  # torch: True = NOT allowed
    ref = layer(x, src_mask=src_mask, src_key_padding_mask=~real, is_causal=causal)
    # torch's eval fast path zeroes the outputs at padded positions; compare the real ones
    torch.testing.assert_close(ours[real], ref[real], rtol=0, atol=1e-5)
    assert weights.shape == (B, 3, T, T)


def test_from_torch_without_mask_and_double_precision():
    layer = random_torch_layer(True, "gelu").double().eval()
    block = TransformerBlock.from_torch(layer)
    assert next(block.parameters()).dtype == torch.float64
    x = torch.randn(2, 6, 24, dtype=torch.float64)
    torch.testing.assert_close(block(x)[0], layer(x), rtol=0, atol=1e-12)


def test_from_torch_rejects_what_it_cannot_copy():
    with pytest.raises(TypeError, match="TransformerEncoderLayer"):
        TransformerBlock.from_torch(nn.Linear(3, 3))
    custom = nn.TransformerEncoderLayer(8, 2, 16, activation=torch.tanh, batch_first=True)
    with pytest.raises(ValueError, match="custom activation"):
        TransformerBlock.from_torch(custom)
    no_bias = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, bias=False)
    with pytest.raises(ValueError, match="bias=False"):
        TransformerBlock.from_torch(no_bias)


# --------------------------------------------------------------------------- validation


def test_token_validation_messages():
    model = TransformerEncoder(SMALL)
    with pytest.raises(ValueError, match=r"tokens must be ids in \[0, vocab_size\) = \[0, 11\), got values from 0 to 11"):
        model(torch.tensor([[0, 11]]))
    with pytest.raises(ValueError, match=r"tokens has shape \(1, 13\); expected \(B, T\) with 1 <= T <= max_len = 12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tokens has shape \(4,\)"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor of token ids"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"key_padding_mask has shape \(1, 3\).*expected bool \(1, 4\)"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 5\); expected \(B, T, 24\)"):
        TransformerBlock(SMALL)(torch.zeros(2, 3, 5))
    with pytest.raises(TypeError, match="config must be a TransformerConfig"):
        TransformerEncoder({"d_model": 8})


# --------------------------------------------------------------------------- generation


def test_generate_greedy_length_prompt_and_determinism():
    torch.manual_seed(0)
    model = TransformerDecoder(SMALL)
    prompt = tokens(B=2, T=3)
    out = model.generate(prompt, 5)
    assert out.shape == (2, 8) and out.dtype == torch.long
    assert torch.equal(out[:, :3], prompt)
    assert model.training  # the mode is restored
    # greedy: each new token is the arg-max of the logits after the tokens before it
    logits = model.eval()(out[:, :-1])
    assert torch.equal(out[:, 3:], logits[:, 2:].argmax(-1))
    assert torch.equal(model.generate(prompt, 0), prompt)


def test_generate_sampling_is_reproducible_with_a_generator():
    torch.manual_seed(0)
    model = TransformerDecoder(SMALL)
    prompt = tokens(B=4, T=2)
    a = model.generate(prompt, 6, sample=True, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 6, sample=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (4, 8)


def test_generate_refuses_to_go_past_max_len():
    model = TransformerDecoder(SMALL)
    with pytest.raises(ValueError, match=r"result would have 13 tokens; expected at most max_len = 12"):
        model.generate(tokens(B=1, T=4), 9)
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative int"):
        model.generate(tokens(B=1, T=4), -1)


def test_next_token_batch_shifts_by_one_and_ignores_padding():
    from attn_course.transformer import IGNORE_INDEX, next_token_batch

    tokens = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    inputs, targets = next_token_batch(tokens, pad_id=0)
    assert inputs.tolist() == [[5, 6, 7], [8, 9, 0]]
    assert targets.tolist() == [[6, 7, IGNORE_INDEX], [9, IGNORE_INDEX, IGNORE_INDEX]]
    with pytest.raises(ValueError, match="tokens has shape"):
        next_token_batch(torch.tensor([[1]]))


def test_mask_for_mlm_masks_only_maskable_tokens_at_the_rate():
    from attn_course.transformer import IGNORE_INDEX, mask_for_mlm

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 20, (64, 32), generator=g)
    maskable = torch.ones_like(tokens, dtype=torch.bool)
    maskable[:, 0] = False
    inputs, targets = mask_for_mlm(tokens, maskable, mask_id=1, rate=0.25, generator=g)
    chosen = inputs == 1
    assert not chosen[:, 0].any() and 0.2 < chosen.float().mean() < 0.3
    assert torch.equal(targets[chosen], tokens[chosen]) and (targets[~chosen] == IGNORE_INDEX).all()
    assert torch.equal(inputs[~chosen], tokens[~chosen])
    with pytest.raises(ValueError, match="rate must be in"):
        mask_for_mlm(tokens, maskable, 1, rate=0.0)
