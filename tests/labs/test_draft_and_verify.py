"""The speculative-decoding lab: the stream, the pair of models, the sweep's counts, the figures."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from attn_course.gpt import GPT  # noqa: E402
from attn_course.labs import draft_and_verify as dv  # noqa: E402
from attn_course.labs.bracket_language import BOS, VOCAB  # noqa: E402


def test_the_stream_is_sentences_after_bos():
    data = dv.bracket_stream(200, seed=0)
    assert data.shape == (200,) and data[0] == BOS and int(data.max()) < len(VOCAB)
    assert BOS not in data[1:].tolist() and torch.equal(data, dv.bracket_stream(200, seed=0))


def test_a_short_training_and_sweep_count_consistently():
    data = dv.bracket_stream(5_000)
    target, draft, hist = dv.train_pair(data, context=16, target_steps=3, draft_steps=2, workers=1, progress=False)
    assert isinstance(target, GPT) and len(hist["target"].losses) == 3 and len(hist["draft"].losses) == 2
    prompts = dv.stream_prompts(2, length=3)
    res = dv.sweep_drafts(target, draft, prompts, (1, 3), new_tokens=8)
    for r in res.values():
        s = r["stats"]
        assert r["identical"] and r["tokens"] == 16
        assert s.accepted + s.rounds == 16 and s.target_calls == s.rounds and s.draft_calls == s.drafted
    assert dv.call_cost_ratio(target, draft, context=4, repeats=2) > 0


def test_the_figures_draw():
    fig = dv.draw_draft_and_verify()
    assert fig.get_label() == dv.ALT["draw_draft_and_verify"]
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "target: one call over 5 positions" in texts and "] rejected:\nresampled" in texts
    fig2 = plt.figure()
    dv.plot_tokens_per_call(fig2, 4, 0.7, {1: 1.7})
    assert len(fig2.axes) == 2
    plt.close("all")


def test_the_serving_benchmarks_headline_is_a_dict_of_numbers():
    r = dv.speculative_comparison(k=3, new_tokens=8, num_prompts=2, context=16, target_steps=10, draft_steps=5)
    assert r["identical"] and r["tokens"] == 16 and r["target_calls"] <= r["target_calls_alone"] == 16
    assert r["tokens_per_s_target"] > 0 and r["tokens_per_s_speculative"] > 0 and r["speedup"] > 0
    assert r["tokens_per_target_call"] == 16 / r["target_calls"]


def test_the_benchmarks_prepacked_sequential_path_keeps_greedy_output_identical():
    # The benchmark's settings: the target trained first on two threads, prepacked for both arms.
    r = dv.speculative_comparison(k=2, new_tokens=6, num_prompts=2, context=16, target_steps=4, draft_steps=3,
                                  target_lr=2e-3, workers=1, threads=2, prepack=True, repeats=2)
    assert r["identical"] and r["tokens"] == 12 and r["cost_ratio"] > 0 and r["target_parameters"] > 0
    assert r["target_calls"] <= r["target_calls_alone"] == 12
