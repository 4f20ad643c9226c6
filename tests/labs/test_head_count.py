"""Tests for attn_course.labs.head_count: the two-offset copy task, the attention-only model, training."""

from __future__ import annotations

import pytest
import torch

from attn_course.labs.head_count import (
    IGNORE,
    AttentionOnlyModel,
    TwoOffsetCopyTask,
    compare_head_counts,
    evaluate,
    offset_attention_mass,
    train_model,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- the task


@pytest.mark.parametrize("offsets", [(1, 3), (2, 1), (4,), (1, 2, 5)])
def test_targets_copy_the_tokens_at_the_offsets(offsets):
    task = TwoOffsetCopyTask(vocab_size=7, seq_len=9, offsets=offsets)
    tokens, targets = task.make_batch(5, generator=gen())
    assert tokens.shape == (5, 9) and targets.shape == (5, 9, len(offsets))
    assert tokens.dtype == targets.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 7
    m = max(offsets)
    assert task.first_target == m and task.num_slots == len(offsets)
    assert torch.all(targets[:, :m] == IGNORE)
    for t in range(m, 9):
        for k, o in enumerate(offsets):
            assert torch.equal(targets[:, t, k], tokens[:, t - o])


def test_batches_are_repeatable_with_a_seeded_generator():
    task = TwoOffsetCopyTask()
    a, b = task.make_batch(4, generator=gen(3)), task.make_batch(4, generator=gen(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], task.make_batch(4, generator=gen(4))[0])


@pytest.mark.parametrize("kwargs,match", [
    (dict(offsets=(1, 1)), "distinct positive ints"),
    (dict(offsets=()), "distinct positive ints"),
    (dict(offsets=(0, 2)), "each offset must be a positive int"),
    (dict(seq_len=4, offsets=(1, 4)), r"largest offset \(4\) must be < seq_len \(4\)"),
    (dict(vocab_size=0), "vocab_size must be a positive int"),
])
def test_task_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TwoOffsetCopyTask(**kwargs)


def test_targets_shape_error():
    with pytest.raises(ValueError, match=r"tokens has shape \(2, 5\); expected \(B, 12\)"):
        TwoOffsetCopyTask().targets(torch.zeros(2, 5, dtype=torch.long))


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("H", [1, 2, 4])
def test_model_shapes_causality_and_size(H):
    task = TwoOffsetCopyTask(vocab_size=5, seq_len=7, offsets=(1, 2))
    torch.manual_seed(0)
    model = AttentionOnlyModel.for_task(task, embed_dim=8, num_heads=H)
    tokens, _ = task.make_batch(3, generator=gen())
    logits, weights = model(tokens, need_weights=True)
    assert logits.shape == (3, 7, 2, 5) and weights.shape == (3, H, 7, 7)
    assert torch.all(weights.triu(1) == 0)  # causal: no weight on later positions
    assert model(tokens)[1] is None
    # a change at position 4 changes nothing before it
    changed = tokens.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 5
    torch.testing.assert_close(model(changed)[0][:, :4], logits[:, :4])
    # the size does not depend on the number of heads
    assert sum(p.numel() for p in model.parameters()) == 5 * 8 + 7 * 8 + 4 * (8 * 8 + 8) + 8 * 10 + 10


def test_model_accepts_shorter_sequences_and_rejects_longer():
    model = AttentionOnlyModel(vocab_size=4, seq_len=6, embed_dim=4, num_heads=2)
    assert model(torch.zeros(2, 3, dtype=torch.long))[0].shape == (2, 3, 2, 4)
    with pytest.raises(ValueError, match=r"tokens has shape \(2, 7\); expected \(B, T\) with T <= seq_len = 6"):
        model(torch.zeros(2, 7, dtype=torch.long))


# --------------------------------------------------------------------------- measuring attention


def test_offset_attention_mass_on_known_weights():
    B, T = 2, 6
    one_back = torch.zeros(B, 1, T, T)
    one_back[:, 0, 0, 0] = 1.0
    for t in range(1, T):
        one_back[:, 0, t, t - 1] = 1.0
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]  # (T, T)
    weights = torch.cat([one_back, uniform.expand(B, 1, T, T)], dim=1)  # (B, 2, T, T)
    mass = offset_attention_mass(weights, (1, 3))
    assert mass.shape == (2, 2)
    torch.testing.assert_close(mass[0], torch.tensor([1.0, 0.0]))
    expected = torch.tensor([1 / (t + 1) for t in range(3, T)]).mean()  # uniform over t + 1 keys
    torch.testing.assert_close(mass[1], torch.stack([expected, expected]))


def test_offset_attention_mass_errors():
    with pytest.raises(ValueError, match=r"weights has shape \(2, 3, 4\); expected \(B, H, T, T\)"):
        offset_attention_mass(torch.zeros(2, 3, 4), (1,))
    with pytest.raises(ValueError, match=r"offsets\[0\] must be an int in \[1, 3\], got 4"):
        offset_attention_mass(torch.zeros(1, 1, 4, 4), (4,))


# --------------------------------------------------------------------------- training


@pytest.mark.threads(2)  # more than the function under test sets, so that restoring shows
def test_train_model_restores_threads_and_validates():
    task = TwoOffsetCopyTask(vocab_size=4, seq_len=5, offsets=(1, 2))
    model = AttentionOnlyModel.for_task(task, 4, 2)
    before = torch.get_num_threads()
    history = train_model(model, task, 3, batch_size=4, generator=gen(), progress=False)
    assert len(history.losses) == 3 and history.seconds > 0
    assert torch.get_num_threads() == before and not model.training
    with pytest.raises(TypeError, match="model must be an AttentionOnlyModel"):
        train_model(torch.nn.Linear(2, 2), task, 1)
    with pytest.raises(ValueError, match="does not fit the task"):
        train_model(model, TwoOffsetCopyTask(vocab_size=5, seq_len=5, offsets=(1, 2)), 1)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train_model(model, task, 0)


def test_evaluate_counts_only_target_positions():
    task = TwoOffsetCopyTask(vocab_size=3, seq_len=6, offsets=(1, 2))
    model = AttentionOnlyModel.for_task(task, 4, 1)
    acc = evaluate(model, task, n=50, generator=gen())
    assert 0 <= acc.all_slots <= min(acc.per_slot) <= 1 and len(acc.per_slot) == 2


@pytest.mark.slow
def test_two_heads_solve_the_task_one_head_does_not():
    """The chapter's claim at a small budget: 2 heads of width 4 reach ~100 %, 1 head of width 8 does not."""
    task = TwoOffsetCopyTask()
    runs = compare_head_counts(task, 8, [1, 2], steps=400, seed=0, n_eval=500, progress=False)
    one, two = runs[1].accuracy, runs[2].accuracy
    assert two.all_slots > 0.95
    assert one.all_slots < 0.3 and max(one.per_slot) > 0.9  # one slot right, the other near chance
    tokens, _ = task.make_batch(200, generator=gen(5))
    mass = offset_attention_mass(runs[2].model(tokens, need_weights=True)[1], task.offsets)  # (H, K)
    best = mass.argmax(0)  # the head that looks at each offset most
    assert best[0] != best[1] and mass.max(0).values.min() > 0.75
