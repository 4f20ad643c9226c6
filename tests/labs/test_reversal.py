"""Unit tests for attn_course.labs.reversal: the synthetic reverse/copy tasks."""

import pytest
import torch

from attn_course.labs.reversal import Batch, CopyTask, ReverseTask, SequenceTask, make_batch
from attn_course.seq2seq import BOS, EOS, FIRST_SYMBOL, PAD


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shapes_and_dtypes():
    task = ReverseTask(n_symbols=7, min_len=3, max_len=9)
    b = task.make_batch(16, generator=gen())
    B, S = b.src.shape
    assert B == 16 and len(b) == 16
    assert S == int(b.src_lengths.max())
    assert b.src_lengths.shape == (16,)
    assert b.tgt_in.shape == (16, S + 1) and b.tgt_out.shape == (16, S + 1)
    assert b.src_mask.shape == (16, S) and b.src_mask.dtype == torch.bool
    for t in (b.src, b.src_lengths, b.tgt_in, b.tgt_out):
        assert t.dtype == torch.long
    assert torch.equal(b.tgt_lengths, b.src_lengths + 1)


def test_lengths_within_range_and_vocab():
    task = ReverseTask(n_symbols=5, min_len=2, max_len=6)
    assert task.vocab_size == FIRST_SYMBOL + 5
    b = task.make_batch(200, generator=gen(1))
    assert int(b.src_lengths.min()) >= 2 and int(b.src_lengths.max()) <= 6
    real = b.src[b.src_mask]
    assert int(real.min()) >= FIRST_SYMBOL and int(real.max()) < task.vocab_size


def test_same_seed_same_batch_different_seed_different_batch():
    task = ReverseTask()
    a, b = (task.make_batch(32, generator=gen(3)) for _ in range(2))
    assert torch.equal(a.src, b.src) and torch.equal(a.src_lengths, b.src_lengths)
    assert torch.equal(a.tgt_out, b.tgt_out)
    c, d = (task.make_batch(32, generator=gen(s), length=10) for s in (3, 4))
    assert not torch.equal(c.src, d.src)


def test_padding_and_mask_agree_with_lengths():
    task = ReverseTask(min_len=1, max_len=10)
    b = task.make_batch(64, generator=gen(2))
    assert torch.equal(b.src_mask.sum(dim=1), b.src_lengths)
    for i in range(64):
        n = int(b.src_lengths[i])
        assert (b.src[i, n:] == PAD).all()
        assert (b.src[i, :n] != PAD).all()


def test_reverse_targets_bos_eos_and_pad():
    task = ReverseTask(min_len=1, max_len=8)
    b = task.make_batch(32, generator=gen(5))
    for i in range(32):
        n = int(b.src_lengths[i])
        seq = b.src[i, :n]
        assert torch.equal(b.tgt_out[i, :n], seq.flip(0))
        assert int(b.tgt_out[i, n]) == EOS
        assert (b.tgt_out[i, n + 1 :] == PAD).all()
        assert int(b.tgt_in[i, 0]) == BOS
        assert torch.equal(b.tgt_in[i, 1 : n + 1], seq.flip(0))
        assert (b.tgt_in[i, n + 1 :] == PAD).all()


def test_tgt_in_is_tgt_out_shifted_right():
    b = ReverseTask().make_batch(8, generator=gen(6), length=5)
    assert torch.equal(b.tgt_in[:, 1:], b.tgt_out[:, :-1])


def test_copy_task_targets():
    task = CopyTask(min_len=2, max_len=7)
    assert task.kind == "copy"
    b = task.make_batch(20, generator=gen(7))
    for i in range(20):
        n = int(b.src_lengths[i])
        assert torch.equal(b.tgt_out[i, :n], b.src[i, :n])
        assert int(b.tgt_out[i, n]) == EOS


def test_fixed_length_batch_even_outside_training_range():
    task = ReverseTask(min_len=4, max_len=8)
    b = task.make_batch(5, generator=gen(), length=12)
    assert b.src.shape == (5, 12)
    assert (b.src_lengths == 12).all()
    assert not (b.src == PAD).any()


def test_known_example():
    task = ReverseTask(n_symbols=5)
    src = torch.tensor([[3, 4, 5], [6, 7, PAD]])
    b = task.batch_from_source(src, torch.tensor([3, 2]))
    assert b.tgt_in.tolist() == [[BOS, 5, 4, 3], [BOS, 7, 6, PAD]]
    assert b.tgt_out.tolist() == [[5, 4, 3, EOS], [7, 6, EOS, PAD]]


def test_make_batch_function_matches_method():
    task = ReverseTask()
    a = make_batch(task, 4, generator=gen(9))
    b = task.make_batch(4, generator=gen(9))
    assert isinstance(a, Batch) and torch.equal(a.src, b.src)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="sort"), "kind"),
        (dict(n_symbols=1), "n_symbols"),
        (dict(min_len=0), "min_len"),
        (dict(min_len=5, max_len=4), "max_len"),
    ],
)
def test_task_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SequenceTask(**kwargs)


def test_make_batch_validation():
    task = ReverseTask()
    with pytest.raises(ValueError, match="batch_size"):
        task.make_batch(0)
    with pytest.raises(ValueError, match="length"):
        task.make_batch(2, length=0)
    with pytest.raises(TypeError, match="generator"):
        task.make_batch(2, generator=0)
    with pytest.raises(TypeError, match="task"):
        make_batch("reverse", 2)


def test_source_validation_names_argument_and_shapes():
    task = ReverseTask()
    with pytest.raises(ValueError, match=r"src has shape \(3,\); expected \(B, S\)"):
        task.batch_from_source(torch.tensor([3, 4, 5]), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"src_lengths has shape \(3,\); expected \(B,\)"):
        task.batch_from_source(torch.tensor([[3, 4, 5]]), torch.tensor([3, 3, 3]))
    with pytest.raises(ValueError, match="src_lengths must lie in"):
        task.batch_from_source(torch.tensor([[3, 4, 5]]), torch.tensor([4]))
    with pytest.raises(ValueError, match="token ids outside"):
        task.batch_from_source(torch.tensor([[3, 99]]), torch.tensor([2]))
    with pytest.raises(TypeError, match="src must hold token ids"):
        task.batch_from_source(torch.tensor([[3.0, 4.0]]), torch.tensor([2]))
