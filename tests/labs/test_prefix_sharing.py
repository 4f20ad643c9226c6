"""Chapter 28's lab: the chat trace, the tree's hits against a brute-force bound, the model check, figures."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from attn_course.labs.prefix_sharing import (  # noqa: E402
    capacity_sweep,
    chat_scripts,
    draw_capacity_frame,
    draw_radix_tree,
    longest_earlier_prefix,
    run_chat,
    word_tree,
)
from attn_course.labs.serving_trace import tiny_model  # noqa: E402


def test_an_unbounded_tree_finds_every_shared_prefix():
    scripts = chat_scripts(10, seed=1)
    assert scripts == chat_scripts(10, seed=1)
    unbounded = run_chat(scripts)
    assert unbounded.matched == longest_earlier_prefix(scripts)
    runs = capacity_sweep(scripts, [32, 256, None])
    assert runs[32].hit_rate < runs[256].hit_rate <= runs[None].hit_rate == unbounded.hit_rate
    assert all(r.tree.capacity is None or r.tree.size <= r.tree.capacity for r in runs.values())


def test_answers_from_cached_prefixes_equal_answers_from_scratch():
    run = run_chat(chat_scripts(4, seed=2), 300, tiny_model())
    assert run.outputs_equal and run.hit_rate > 0.3


def test_word_tree_and_figures():
    tree, matched, names = word_tree(["<s> you are a helpful assistant . hello",
                                      "<s> you are a helpful assistant . what is the capital of france ?"], lock=0)
    assert matched == [0, 7] and tree.size == 8 + 7  # the 7 shared words once
    fig = draw_radix_tree(tree, names)
    assert fig.get_label()
    runs = capacity_sweep(chat_scripts(6), [64, 128, None])
    fig2 = plt.figure()
    draw_capacity_frame(fig2, 64, runs)
    assert len(fig2.axes) == 2
    plt.close(fig)
    plt.close(fig2)
    with pytest.raises(ValueError, match="vocabulary"):
        word_tree(["<s> bonjour"])
