"""Chapter 19's experiment: the signal task, the masked classifier, and how far patterns reach."""

import pytest
import torch

from attn_course.labs.long_range import (
    PointerTask,
    SignalTask,
    SparsePatternClassifier,
    SparsePatternTagger,
    accuracy_by_position,
    hops_to_connect,
    pointer_accuracy,
    train_pattern,
    train_pointer,
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
    assert hops_to_connect(sliding_window_mask(33, 5)) == 8  # W = 5 reaches W - 1 = 4 further per layer
    assert hops_to_connect(sliding_window_mask(64, 8) | strided_mask(64, 8)) == 2  # a window of W = s keys
    assert hops_to_connect(sliding_window_mask(64, 7) | strided_mask(64, 8)) == 3  # one key short: 3 hops
    assert hops_to_connect(longformer_mask(40, 2, [0])) == 2
    assert hops_to_connect(torch.eye(5, dtype=torch.bool), max_hops=3) == -1  # never connected
    with pytest.raises(ValueError):
        hops_to_connect(torch.ones(3, 4, dtype=torch.bool))


def test_the_mask_decides_what_cls_sees():
    task = SignalTask(seq_len=16)
    model = SparsePatternClassifier(task, sliding_window_mask(16, 3), num_layers=1).eval()
    tokens, _, _ = task.make_batch(4, torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 3:] = task.vocab_size - 1  # beyond [CLS]'s window
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), model(changed))  # one layer, W = 3: [CLS] sees 0, 1, 2 only
    two_layers = SparsePatternClassifier(task, sliding_window_mask(16, 3), num_layers=2).eval()
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


def test_pointer_task_batches():
    task = PointerTask(n_memory=6, n_queries=5, n_symbols=4, n_global=2)
    assert (task.seq_len, task.first_query, task.vocab_size) == (13, 8, 11)
    tokens, targets, sources = task.make_batch(30, torch.Generator().manual_seed(0))
    assert tokens.shape == (30, 13) and targets.shape == sources.shape == (30, 5)
    assert (tokens[:, :2] == 0).all()
    memory, pointers = tokens[:, 2:8], tokens[:, 8:]
    assert ((memory >= 1) & (memory <= 4)).all() and (pointers > 4).all()
    assert torch.equal(sources, 2 + pointers - 5)  # pointer token 5 + s names slot s, at position 2 + s
    assert torch.equal(torch.gather(tokens, 1, sources), targets + 1)  # the answer is the symbol stored there
    with pytest.raises(ValueError, match="n_symbols"):
        PointerTask(n_symbols=1)


def test_tagger_reads_every_pointer_and_obeys_its_mask():
    task = PointerTask(n_memory=8, n_queries=4, n_symbols=4)
    T = task.seq_len
    model = SparsePatternTagger(task, sliding_window_mask(T, 2), num_layers=1).eval()
    tokens, _, _ = task.make_batch(3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(tokens)
        assert logits.shape == (3, 4, 4)
        changed = tokens.clone()
        changed[:, :task.first_query - 1] = 1  # everything the first pointer cannot see (W = 2: itself and one back)
        torch.testing.assert_close(model(changed)[:, 0], logits[:, 0])
    correct, distance = pointer_accuracy(model, task, 10, torch.Generator().manual_seed(2))
    assert correct.shape == distance.shape == (10, 4) and (distance >= 1).all()
    with pytest.raises(ValueError, match="mask"):
        SparsePatternTagger(task, torch.ones(T - 1, T - 1, dtype=torch.bool))


def test_full_attention_learns_the_pointer_task_quickly():
    task = PointerTask(n_memory=6, n_queries=6, n_symbols=4)
    run = train_pointer(task, torch.ones(task.seq_len, task.seq_len, dtype=torch.bool), steps=80, progress=False,
                        eval_size=100)
    assert run.accuracy > 0.9 and len(run.history.losses) == 80
