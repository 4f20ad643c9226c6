"""The generation lab: the bracket language (the rule-checker, the grammar, a short training run),
left padding, work counting and the sampling distributions."""

import math
import random

import matplotlib.pyplot as plt
import pytest
import torch

from attn_course.decoding import generation_macs
from attn_course.gpt import GPT, GPTConfig
from attn_course.labs.bracket_language import (
    BracketTask,
    check_brackets,
    default_model_config,
    forward_flops,
    left_pad,
    plot_sampling_distributions,
    plot_temperature,
    sample_sentences,
    train_bracket_model,
)


@pytest.mark.parametrize("text, error", [
    ("( [ ] ) [ ( ) ] .", None),
    ("( ) .", None),
    ("( [ ) ] .", "')' at position 2 closes '[' from position 1"),
    (") .", "')' at position 0 closes nothing"),
    ("( ( .", "'.' at position 2 while '(' from position 1 is still open"),
    ("( )", "no '.' at the end"),
    ("( [", "'[' from position 1 is never closed"),
    (".", "empty sentence"),
    ("( ) . (", "tokens after '.' at position 2"),
    ("( x ) .", "unknown token 'x' at position 1"),
])
def test_check_brackets(text, error):
    assert check_brackets(text) == error


def test_check_brackets_limits():
    assert check_brackets("( ( ( ) ) ) .", max_depth=2) == "nested 3 deep at position 2, more than max_depth = 2"
    assert check_brackets("( ) ( ) ( ) .", max_pairs=2) == "more than max_pairs = 2 pairs"


def test_grammar_sentences_follow_the_rules():
    task = BracketTask(max_pairs=6, max_depth=3)
    rng = random.Random(0)
    sentences = [task.sentence(rng) for _ in range(300)]
    assert all(check_brackets(s, 3, 6) is None for s in sentences)
    assert max(len(s.split()) for s in sentences) == task.seq_len - 1
    batch = task.batch(4, rng)
    assert batch.shape == (4, task.seq_len)
    assert task.decode(task.encode(sentences[0])) == sentences[0]
    assert task.encode(task.decode(batch[0])) == [i for i in batch[0].tolist() if i != 0]


def test_short_training_learns_some_rules():
    task = BracketTask(max_pairs=4, max_depth=3)
    untrained = sample_sentences(GPT(default_model_config(task)).eval(), task, 100)
    model, history = train_bracket_model(task, steps=250, progress=False)
    assert history.losses[-1] < history.losses[0] - 0.5
    trained = sample_sentences(model, task, 100, temperature=0.7)
    assert trained.valid_fraction > untrained.valid_fraction + 0.3
    windowed = sample_sentences(model, task, 100, temperature=0.7, window=2)
    assert len(windowed.sentences) == 100


def test_left_pad():
    idx, mask = left_pad([[5, 6, 7], [8]], pad=0)
    assert idx.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="prompts"):
        left_pad([[1], []])


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
def test_forward_flops_counts_linear_layers_and_the_attention_apart(attention):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=31, context_length=32, n_layer=2, n_head=4, n_embd=16,
                          attention=attention)).eval()
    N, D = model.config.n_layer, model.config.n_embd
    t = 7
    idx = torch.randint(0, 31, (1, t))
    full = forward_flops(model, idx)
    assert full.linear == 2 * (generation_macs(t, model.config, cached=False) - N * D * t * (t + 1))
    assert full.attention == N * 2 * 2 * t * t * D  # the naive path computes the whole t x t square
    assert full.total == full.linear + full.attention
    cache = model.new_cache("dynamic")
    with torch.no_grad():
        model(idx[:, :-1], cache)
    one = forward_flops(model, idx[:, -1:], cache)  # one query over t keys: exactly the formula
    assert one.linear + one.attention == 2 * generation_macs(t, model.config, cached=True)
    assert cache.seq_len == t
    assert all(block.attn.naive == (attention == "naive") for block in model.h)  # the setting is restored
    assert not model.h[0].attn.qkv._forward_hooks and not model.h[0].attn._forward_pre_hooks  # hooks removed


def test_temperature_frame_flattens_and_the_nucleus_grows():
    from matplotlib.figure import Figure

    logits = torch.tensor([-2.0, -1.0, 0.0, 3.0, 1.0, 2.5, 0.5])  # (V,)
    kept = []
    for temperature in (0.25, 1.0, 4.0):
        fig = Figure()
        shaped, nucleus = plot_temperature(fig, logits, temperature, top_p=0.9, valid={"(", "["})
        assert len(fig.axes) == 2 and math.isclose(shaped.sum().item(), 1, rel_tol=1e-6)
        assert bool(((nucleus > 0) <= (shaped > 0)).all())
        kept.append(int((nucleus > 0).sum()))
    assert kept[0] < kept[1] < kept[2]
    with pytest.raises(ValueError, match="temperature"):
        plot_temperature(Figure(), logits, 0)


def test_sampling_distributions_sum_to_one():
    fig, probs = plot_sampling_distributions(torch.randn(7), {"greedy": {"temperature": 0}, "T=1": {}})
    assert probs["greedy"].sum() == 1 and math.isclose(probs["T=1"].sum().item(), 1, rel_tol=1e-6)
    plt.close("all")
