"""Tests of attn_course.labs.position_ablation: the sorted-or-not task and the one-layer attention model."""

from __future__ import annotations

import pytest
import torch

from attn_course.labs.position_ablation import (
    POSITION_SCHEMES,
    PositionalSelfAttention,
    PositionToyClassifier,
    accuracy,
    make_sorted_task,
    position_ablation,
    train_classifier,
)


def test_sorted_task_pairs_share_their_tokens():
    tokens, labels = make_sorted_task(500, 6, 10, torch.Generator().manual_seed(0))
    assert tokens.shape == (1000, 6) and labels.shape == (1000,)
    assert tokens.dtype == labels.dtype == torch.long
    assert labels[:500].eq(1).all() and labels[500:].eq(0).all()
    sorted_rows, shuffled = tokens[:500], tokens[500:]
    assert (sorted_rows[:, 1:] > sorted_rows[:, :-1]).all()  # strictly ascending: distinct tokens
    assert ((shuffled[:, 1:] < shuffled[:, :-1]).any(dim=1)).all()  # never sorted
    assert torch.equal(shuffled.sort(dim=1).values, sorted_rows)  # the same multiset, row by row
    assert tokens.min() >= 0 and tokens.max() < 10


def test_sorted_task_is_reproducible_and_handles_tiny_sizes():
    a = make_sorted_task(20, 4, 8, torch.Generator().manual_seed(3))
    b = make_sorted_task(20, 4, 8, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    tokens, _ = make_sorted_task(50, 2, 2)  # T = V = 2: every negative is [1, 0]
    assert tokens[:50].tolist() == [[0, 1]] * 50 and tokens[50:].tolist() == [[1, 0]] * 50


def test_sorted_task_errors():
    with pytest.raises(ValueError, match="vocab_size >= seq_len"):
        make_sorted_task(4, 9, 8)
    with pytest.raises(ValueError, match="seq_len"):
        make_sorted_task(4, 1, 8)
    with pytest.raises(ValueError, match="n_pairs"):
        make_sorted_task(0, 4, 8)


@pytest.mark.parametrize("position", POSITION_SCHEMES)
def test_classifier_shapes(position):
    torch.manual_seed(0)
    model = PositionToyClassifier(16, 8, position, dim=16, num_heads=2)
    tokens = torch.randint(0, 16, (5, 6))
    assert model(tokens).shape == (5, 2)


@pytest.mark.parametrize("position", POSITION_SCHEMES)
def test_only_no_positions_is_permutation_invariant(position):
    torch.manual_seed(0)
    model = PositionToyClassifier(16, 8, position, dim=16, num_heads=2).eval()
    tokens = torch.randint(0, 16, (4, 8))
    perm = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    diff = (model(tokens) - model(tokens[:, perm])).abs().max().item()
    if position == "none":
        assert diff < 1e-5
    else:
        assert diff > 1e-4


@pytest.mark.parametrize("position", ["none", "rope", "alibi"])
def test_attention_layer_is_equivariant_without_positions_only(position):
    torch.manual_seed(1)
    layer = PositionalSelfAttention(12, 3, position)
    x = torch.randn(2, 7, 12)
    perm = torch.randperm(7)
    out, weights = layer(x)
    assert out.shape == (2, 7, 12) and weights.shape == (2, 3, 7, 7)
    diff = (layer(x[:, perm])[0] - out[:, perm]).abs().max().item()
    assert (diff < 1e-5) if position == "none" else (diff > 1e-4)
    # a causal mask alone already breaks the symmetry
    causal = (layer(x[:, perm], is_causal=True)[0] - layer(x, is_causal=True)[0][:, perm]).abs().max().item()
    assert causal > 1e-4


def test_attention_layer_causal_alibi_ignores_the_future():
    torch.manual_seed(2)
    layer = PositionalSelfAttention(8, 2, "alibi")
    x = torch.randn(1, 6, 8)
    y = x.clone()
    y[:, 4:] = torch.randn(1, 2, 8)
    out_x, w = layer(x, is_causal=True)
    out_y, _ = layer(y, is_causal=True)
    torch.testing.assert_close(out_x[:, :4], out_y[:, :4])
    assert (w.triu(1) == 0).all()


def test_errors():
    with pytest.raises(ValueError, match="position must be one of"):
        PositionToyClassifier(8, 4, "relative")
    with pytest.raises(ValueError, match="divisible"):
        PositionalSelfAttention(10, 3)
    with pytest.raises(ValueError, match="even head width"):
        PositionalSelfAttention(6, 2, "rope")
    with pytest.raises(ValueError, match=r"\(1, 4, 8\)"):
        PositionalSelfAttention(6, 2)(torch.zeros(1, 4, 8))
    model = PositionToyClassifier(8, 4)
    with pytest.raises(ValueError, match="T <= max_len = 4"):
        model(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="PositionToyClassifier"):
        train_classifier(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_training_learns_with_positions_and_not_without():
    """A short run: learned positions pass 80%; without positions the paired test set gives exactly 50%."""
    threads = torch.get_num_threads()
    result = position_ablation(("none", "learned"), seq_len=8, vocab_size=32, steps=120, test_pairs=200, progress=False)
    assert torch.get_num_threads() == threads
    assert result.accuracy["none"] == pytest.approx(0.5, abs=1e-9)
    assert result.accuracy["learned"] > 0.8
    assert len(result.losses["learned"]) == 120 and result.losses["learned"][-1] < result.losses["learned"][0]
    assert set(result.models) == {"none", "learned"} and not result.models["learned"].training


def test_accuracy_restores_the_training_mode():
    model = PositionToyClassifier(8, 4).train()
    tokens, labels = make_sorted_task(10, 4, 8)
    acc = accuracy(model, tokens, labels)
    assert 0.0 <= acc <= 1.0 and model.training


# --------------------------------------------------------------------------- the chapter's plot helpers


def test_plot_helpers_draw_and_validate():
    import matplotlib.pyplot as plt

    from attn_course.labs.position_ablation import (
        plot_alibi_heads,
        plot_position_matrix,
        plot_scheme_accuracy,
        plot_vs_offset,
    )
    from attn_course.positional import alibi_bias, alibi_slopes, sinusoidal_encoding

    ax = plot_position_matrix(sinusoidal_encoding(10, 8), title="t", xlabel="x", ylabel="y")
    assert ax.get_title() == "t" and ax.get_xlabel() == "x"
    plot_position_matrix(torch.rand(4, 4), centered=False, colorbar=False, title="t", xlabel="x", ylabel="y")
    ax = plot_vs_offset([-1, 0, 1], {"a": [1.0, 2.0, 1.0], "b": [float("nan"), 2.0, 1.0]}, title="t", ylabel="y")
    assert len(ax.get_lines()) == 3  # two curves and the zero line
    bias = alibi_bias(6, 5)
    axes = plot_alibi_heads(bias.masked_fill(bias == 0, float("nan")), alibi_slopes(6).tolist(), ncols=4)
    assert axes.shape == (2, 4) and not axes[1, 3].axison
    ax = plot_scheme_accuracy({"none": 0.5, "rope": 0.99}, chance=0.5)
    assert len(ax.patches) == 2
    with pytest.raises(ValueError, match="expected 2 dimensions"):
        plot_position_matrix(torch.zeros(3), title="t", xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match="slopes has 2 entries"):
        plot_alibi_heads(bias, [1.0, 0.5])
    with pytest.raises(TypeError, match="accuracies"):
        plot_scheme_accuracy({})
    plt.close("all")
