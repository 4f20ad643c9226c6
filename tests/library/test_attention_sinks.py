"""The attention-sink cache: what it keeps, that it equals a sliding window without sinks and a
full cache with a long window, and that the model attends over exactly the sinks and the window."""

import pytest
import torch

from attn_course.attention_sinks import SinkCache
from attn_course.decoding import generate
from attn_course.gpt import GPT, GPTConfig


def _model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=13, context_length=64, n_layer=2, n_head=2, n_embd=16)).eval()


def test_it_keeps_the_first_positions_and_the_last_window():
    cache = SinkCache(1, 1, 1, num_sinks=2, window=3)
    for p in range(9):
        k_all, _ = cache.update(0, torch.full((1, 1, 1, 1), float(p)), torch.zeros(1, 1, 1, 1))
    assert k_all.flatten().tolist() == [0, 1, 6, 7, 8]
    assert cache.key_positions(1).tolist() == [0, 1, 7, 8, 9]  # the next token's view
    assert cache.allocated_bytes() == 2 * 5 * 4


def test_no_sinks_is_a_sliding_window_and_a_long_window_is_a_full_cache():
    model = _model()
    prompt = torch.randint(0, 13, (2, 1))
    _, window_logits = generate(model, prompt, 30, cache=model.new_cache("sliding", 2, window=6), return_logits=True)
    _, sink0 = generate(model, prompt, 30, cache=SinkCache(2, 2, 8, num_sinks=0, window=6), return_logits=True)
    torch.testing.assert_close(sink0, window_logits, rtol=0, atol=1e-5)
    _, full = generate(model, prompt, 30, return_logits=True)
    _, long = generate(model, prompt, 30, cache=SinkCache(2, 2, 8, num_sinks=4, window=40), return_logits=True)
    torch.testing.assert_close(long, full, rtol=0, atol=1e-5)


def test_sinks_change_what_the_window_sees():
    model = _model()
    prompt = torch.randint(0, 13, (1, 1))
    _, a = generate(model, prompt, 20, cache=SinkCache(2, 2, 8, num_sinks=0, window=6), return_logits=True)
    _, b = generate(model, prompt, 20, cache=SinkCache(2, 2, 8, num_sinks=2, window=6), return_logits=True)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6) and not torch.allclose(a[:, 8:], b[:, 8:])


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="window"):
        SinkCache(1, 1, 4, num_sinks=2, window=0)
    with pytest.raises(ValueError, match="num_sinks"):
        SinkCache(1, 1, 4, num_sinks=-1)
