"""Prepacked linear layers: same values as nn.Linear, weights kept, training and fallbacks intact."""

import copy
import io

import pytest
import torch
from torch import nn

from attn_course import prepack
from attn_course.decoding import generate
from attn_course.gpt import GPT, GPTConfig
from attn_course.prepack import PackedLinear, prepack_available, prepack_linears

needs_onednn = pytest.mark.skipif(not prepack_available(), reason="this torch build has no oneDNN prepacking")


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=61, context_length=48, n_layer=2, n_head=4, n_embd=32)).eval()


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7,), (1, 1), (2, 5), (3, 4, 2)], ids=str)
def test_packed_linear_matches_nn_linear(shape, bias):
    torch.manual_seed(0)
    lin = nn.Linear(24, 40, bias=bias)
    packed = PackedLinear(lin)
    x = torch.randn(*shape, 24)
    with torch.no_grad():
        y = packed(x)
        assert packed._packed is not None  # the packed path ran
        torch.testing.assert_close(y, lin(x), rtol=1e-5, atol=1e-5)
    assert y.shape == (*shape, 40)


@needs_onednn
def test_packed_gpt_generates_the_same_tokens_and_logits():
    model = tiny_gpt()
    packed = copy.deepcopy(model)
    assert prepack_linears(packed) == 2 * 4 + 1  # qkv, out, c_fc, c_proj per layer, and the output layer
    idx = torch.randint(0, 61, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(packed(idx), model(idx), rtol=1e-5, atol=1e-5)
        for cache in ("dynamic", "static"):
            ref, ref_logits = generate(model, idx, 10, cache=cache, return_logits=True)
            out, logits = generate(packed, idx, 10, cache=cache, return_logits=True)
            assert torch.equal(out, ref)
            torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_weights_stay_shared_and_the_state_dict_unchanged():
    model = tiny_gpt()
    keys = list(model.state_dict())
    prepack_linears(model)
    assert list(model.state_dict()) == keys
    assert model.lm_head.weight is model.wte.weight  # tying survives
    assert isinstance(model.lm_head, PackedLinear)


@needs_onednn
def test_an_in_place_weight_change_repacks():
    torch.manual_seed(0)
    lin = nn.Linear(8, 8)
    packed = PackedLinear(lin)
    x = torch.randn(3, 8)
    with torch.no_grad():
        packed(x)
        lin.weight.mul_(2.0)  # what an optimiser step does
        torch.testing.assert_close(packed(x), lin(x), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_a_packed_model_can_be_copied_and_saved():
    model = tiny_gpt()
    prepack_linears(model)
    idx = torch.randint(0, 61, (1, 5))
    with torch.no_grad():
        ref = model(idx)
        clone = copy.deepcopy(model)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        for other in (clone, loaded):
            torch.testing.assert_close(other(idx), ref)
            assert other.lm_head.weight is other.wte.weight


def test_training_takes_the_plain_path_and_gets_gradients():
    model = tiny_gpt()
    prepack_linears(model)
    model.train()
    idx = torch.randint(0, 61, (2, 6))
    logits = model(idx)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert all(m._packed is None for m in model.modules() if isinstance(m, PackedLinear))  # never packed


def test_a_trainable_bias_alone_still_gets_its_gradient():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    lin.weight.requires_grad_(False)  # a frozen weight, a trained bias
    packed = PackedLinear(lin)
    packed(torch.randn(3, 6)).sum().backward()
    torch.testing.assert_close(lin.bias.grad, torch.full((4,), 3.0))


def test_without_onednn_nothing_is_replaced(monkeypatch):
    monkeypatch.setattr(prepack, "_ops", lambda: None)
    model = tiny_gpt()
    assert prepack_linears(model) == 0
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, PackedLinear)


def test_unsupported_dtype_falls_back_to_f_linear():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4).double()
    packed = PackedLinear(lin)
    x = torch.randn(2, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), lin(x))
    assert packed._packed is None


def test_bad_arguments_name_themselves():
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        PackedLinear(nn.Conv1d(2, 2, 1))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        prepack_linears("gpt2")
