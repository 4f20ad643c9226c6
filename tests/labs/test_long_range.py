"""Chapter 19's experiment: the signal task, the masked classifier, and how far patterns reach."""

import pytest
import torch

from attn_course.labs.long_range import (
    SignalTask,
    SparsePatternClassifier,
    accuracy_by_position,
    hops_to_connect,
    train_pattern,
)
from attn_course.sparse import longformer_mask, sliding_window_mask, strided_mask


def test_each_sequence_has_cls_and_exactly_one_signal():
    task = SignalTask(seq_len=20, n_signals=5, n_filler=7)
    tokens, labels, positions = task.make_batch(50, torch.Generator().manual_seed(0))
    assert tokens.shape == (50, 20) and (tokens[:, 0] == 0).all()
    is_signal = (tokens >= 1) & (tokens <= task.n_signals)
    assert (is_signal.sum(1) == 1).all()
    assert torch.equal(is_signal.float().argmax(1), positions) and torch.equal(tokens[torch.arange(50), positions], labels + 1)
    with pytest.raises(ValueError):
        SignalTask(seq_len=1)


def test_hops_to_connect():
    assert hops_to_connect(sliding_window_mask(33, 4)) == 8
    assert hops_to_connect(sliding_window_mask(64, 8) | strided_mask(64, 8)) == 2
    assert hops_to_connect(longformer_mask(40, 1, [0])) == 2
    assert hops_to_connect(torch.eye(5, dtype=torch.bool), max_hops=3) == -1  # never connected
    with pytest.raises(ValueError):
        hops_to_connect(torch.ones(3, 4, dtype=torch.bool))


def test_the_mask_decides_what_cls_sees():
    task = SignalTask(seq_len=16)
    model = SparsePatternClassifier(task, sliding_window_mask(16, 2), num_layers=1).eval()
    tokens, _, _ = task.make_batch(4, torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 3:] = task.vocab_size - 1  # beyond [CLS]'s window
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), model(changed))  # one layer, window 2: [CLS] never sees 3+
    two_layers = SparsePatternClassifier(task, sliding_window_mask(16, 2), num_layers=2).eval()
    far = tokens.clone()
    far[:, 5:] = task.vocab_size - 1  # beyond the reach of two layers (2 x 2)
    with torch.no_grad():
        torch.testing.assert_close(two_layers(tokens), two_layers(far))
        assert not torch.allclose(two_layers(tokens), two_layers(changed))  # positions 3, 4 are within reach
    with pytest.raises(ValueError, match="mask"):
        SparsePatternClassifier(task, torch.ones(15, 15, dtype=torch.bool))


def test_a_short_run_learns_with_full_attention():
    task = SignalTask(seq_len=16, n_signals=4, n_filler=4)
    run = train_pattern(task, torch.ones(16, 16, dtype=torch.bool), steps=60, batch_size=32, num_layers=1,
                        progress=False, eval_size=200)
    assert run.accuracy > 0.8 and len(run.history.losses) == 60
    correct, positions = accuracy_by_position(run.model, task, 100, torch.Generator().manual_seed(3))
    assert correct.shape == positions.shape == (100,)
