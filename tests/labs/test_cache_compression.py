"""The smaller-caches lab: the bytes table, a short training run and its measurements, the figures."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from attn_course.gpt import GPT, GPTConfig  # noqa: E402
from attn_course.kv_quant import QuantizedCache  # noqa: E402
from attn_course.labs import cache_compression as cc  # noqa: E402
from attn_course.labs.bracket_language import BOS  # noqa: E402


def test_bytes_table():
    rows = {r["key"]: r for r in cc.bytes_table()}
    assert rows["llama3-8b"]["gqa"] == 131_072 and rows["llama3-8b"]["mha"] == 4 * 131_072
    assert rows["deepseek-v2"]["mla"] == 60 * 576 * 2 and rows["deepseek-v2"]["int8"] is None


def _model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=7, context_length=32, n_layer=2, n_head=2, n_embd=16)).eval()


def test_measurements_on_a_small_model():
    model, hist = cc.train_stream_lm(context=16, steps=2, progress=False)
    assert len(hist.losses) == 2
    model = _model()
    tokens = cc.heldout_batch(3, 24)
    assert tokens.shape == (3, 24) and bool((tokens[:, 0] == BOS).all())
    q = cc.cache_quality(model, tokens, {"int8": lambda: QuantizedCache(2, 2, 8, "int8")})
    assert q["float32"]["agreement"] == 1.0 and q["int8"]["agreement"] > 0.9
    k, v = cc.layer_keys(model, tokens)
    assert k.shape == (3, 2, 24, 8)
    e = cc.group_errors(k, v, 4)
    assert set(e) == {"keys_per_channel", "keys_per_token", "values_per_channel", "values_per_token"}
    ppl = cc.windowed_perplexity(model, tokens, window=4, num_sinks=2)
    assert set(ppl) == {"full", "window", "sinks"} and all(p > 1 for p in ppl.values())
    w = cc.attention_on_first(model, tokens, first=1, from_position=4)
    assert w.shape == (2, 2) and bool(((w > 0) & (w < 1)).all())


@pytest.mark.parametrize("name", ["draw_latent_attention", "draw_quant_groups", "draw_sink_cache"])
def test_diagrams_carry_their_alt_text(name):
    fig = getattr(cc, name)()
    assert fig.get_label() == cc.ALT[name]
    plt.close(fig)


def test_the_slider_frame_draws():
    fig = plt.figure()
    cc.plot_group_size(fig, 8, {4: dict.fromkeys(("keys_per_channel", "keys_per_token", "values_per_token",
                                                   "values_per_channel"), 0.1),
                                8: dict.fromkeys(("keys_per_channel", "keys_per_token", "values_per_token",
                                                   "values_per_channel"), 0.2)})
    assert len(fig.axes) == 2
    plt.close(fig)


def test_the_recall_language_and_its_model():
    x, answer = cc.recall_batch(4, 32, seed=0)
    assert x.shape == answer.shape == (4, 32) and bool((x[:, 0] == 0).all())
    assert bool((x[:, 1:][answer[:, 1:]] == x[:, 1:2].expand(-1, 31)[answer[:, 1:]]).all())  # the answer: position 1
    assert bool((x[:, :-1][answer[:, 1:]] == 1).all())  # every answer follows a '?'
    model, hist = cc.train_recall_lm(steps=3, length=32, progress=False)
    assert len(hist.losses) == 3 and model.config.vocab_size == len(cc.RECALL_VOCAB)


def test_the_serving_benchmarks_headline():
    r = cc.compression_headline(steps=3)
    assert r["llama3_8b_bytes"]["float16"] == 131_072 and r["deepseek_v2_bytes"]["mla"] == 69_120
    assert set(r["agreement"]) == set(r["perplexity_ratio"]) == {"int8", "int4"}
    assert 0 <= r["agreement"]["int8"] <= 1 and r["perplexity_ratio"]["int8"] > 0
