"""Synthetic sequence-to-sequence tasks: reverse or copy a random token sequence.

The tasks are tiny and exactly solvable, so any error a model makes is the model's fault,
and the input length is a knob we can turn to see where a model breaks.

Dimension glossary (used in shape comments)::

    B   batch size
    S   source length (longest source sequence in the batch)
    T   target length, T == S + 1 (the target carries one extra BOS or EOS token)

Token ids::

    PAD = 0   padding after the end of a shorter sequence (ignored by the loss)
    BOS = 1   "begin of sequence": the decoder's first input
    EOS = 2   "end of sequence": the decoder's last output
    3 ..      the ``n_symbols`` content symbols, ids ``FIRST_SYMBOL .. FIRST_SYMBOL + n_symbols - 1``

A batch for the sequence ``a b c`` reversed (``S = 3``, ``T = 4``)::

    src     = [a, b, c]            (B, S)   what the encoder reads
    tgt_in  = [BOS, c, b, a]       (B, T)   what the decoder reads (teacher forcing)
    tgt_out = [c, b, a, EOS]       (B, T)   what the decoder must predict

Shorter sequences in the same batch are right-padded with ``PAD``; ``src_lengths``
holds the true lengths. All randomness comes from an explicit ``torch.Generator`` so
that the same seed gives the same batches.

This lab also trains and measures the Seq2Seq models of :mod:`attn_course.seq2seq` on these
tasks (chapters 1 and 5): :func:`train_seq2seq`, :func:`evaluate_by_length` (accuracy against
source length) and the alignment measurements (:func:`true_alignment`, :func:`alignment_offsets`,
:func:`alignment_accuracy`). The token ids ``PAD``, ``BOS``, ``EOS`` and ``FIRST_SYMBOL`` belong
to the models and are defined in :mod:`attn_course.seq2seq`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from attn_course._validation import (
    fmt_shape,
    require_floating,
    require_int,
    require_optional_int,
    require_tensor,
    shape_error,
)
from attn_course.labs.training import TrainHistory, run_steps
from attn_course.seq2seq import (
    BOS,
    EOS,
    FIRST_SYMBOL,
    PAD,
    Seq2Seq,
    check_source,
    lengths_to_mask,
    sequence_loss,
)

TASK_KINDS = ("reverse", "copy")


@dataclass(frozen=True)
class Batch:
    """One batch of a sequence task. All tensors are ``torch.long`` except ``src_mask``."""

    src: torch.Tensor  # (B, S)  source tokens, PAD after each sequence's end
    src_lengths: torch.Tensor  # (B,)  true source lengths, 1 <= length <= S
    tgt_in: torch.Tensor  # (B, T)  BOS followed by the target tokens, PAD-padded
    tgt_out: torch.Tensor  # (B, T)  the target tokens followed by EOS, PAD-padded

    @property
    def src_mask(self) -> torch.Tensor:
        """``(B, S)`` bool, ``True`` at real source tokens ("may attend"), ``False`` at padding."""
        return self.src != PAD

    @property
    def tgt_lengths(self) -> torch.Tensor:
        """``(B,)`` number of real tokens in ``tgt_out`` (the target plus its EOS)."""
        return self.src_lengths + 1

    def __len__(self) -> int:
        return self.src.shape[0]


@dataclass(frozen=True)
class SequenceTask:
    """A random-sequence task: read ``n`` random symbols, output them reversed (or copied).

    ``make_batch`` draws each sequence's length uniformly from ``[min_len, max_len]``
    unless a fixed ``length`` is asked for (which is how we evaluate one length at a time).
    """

    kind: str = "reverse"  # "reverse" or "copy"
    n_symbols: int = 10  # number of distinct content symbols (chance accuracy is 1 / n_symbols)
    min_len: int = 4  # shortest training sequence
    max_len: int = 24  # longest training sequence

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"kind must be one of {TASK_KINDS}, got {self.kind!r}")
        require_int(self.n_symbols, "n_symbols", 2)
        require_int(self.min_len, "min_len")
        require_int(self.max_len, "max_len (at least min_len)", self.min_len)

    @property
    def vocab_size(self) -> int:
        """Number of token ids: the special tokens plus the content symbols."""
        return FIRST_SYMBOL + self.n_symbols

    def target_for(self, src: torch.Tensor, src_lengths: torch.Tensor) -> torch.Tensor:
        """The target tokens (no BOS/EOS) for ``src`` ``(B, S)``: same shape, PAD where ``src`` is PAD."""
        src, src_lengths = check_source(src, src_lengths)
        if self.kind == "copy":
            return src.clone()
        # Reverse each row within its own length: position i reads source position length - 1 - i.
        S = src.shape[1]
        pos = torch.arange(S).unsqueeze(0)  # (1, S)
        idx = src_lengths.unsqueeze(1) - 1 - pos  # (B, S)  negative past the end
        valid = idx >= 0  # (B, S)
        out = torch.gather(src, 1, idx.clamp(min=0))  # (B, S)
        return torch.where(valid, out, torch.full_like(out, PAD))

    def make_batch(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        length: int | None = None,
    ) -> Batch:
        """Draw ``batch_size`` random sequences.

        Args:
            batch_size: number of sequences ``B``.
            generator: the source of randomness; pass a seeded ``torch.Generator`` for
                repeatable batches (``None`` uses torch's global generator).
            length: if given, every sequence has exactly this length (any length >= 1,
                also outside ``[min_len, max_len]``); otherwise lengths are uniform in
                ``[min_len, max_len]``.

        Returns:
            a :class:`Batch` with ``src`` ``(B, S)``, ``src_lengths`` ``(B,)``,
            ``tgt_in`` and ``tgt_out`` ``(B, S + 1)``, where ``S`` is the longest length drawn.
        """
        require_int(batch_size, "batch_size")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if length is None:
            lengths = torch.randint(
                self.min_len, self.max_len + 1, (batch_size,), generator=generator
            )  # (B,)
        else:
            require_optional_int(length, "length")
            lengths = torch.full((batch_size,), length, dtype=torch.long)  # (B,)
        S = int(lengths.max())
        symbols = torch.randint(
            FIRST_SYMBOL, FIRST_SYMBOL + self.n_symbols, (batch_size, S), generator=generator
        )  # (B, S)
        real = torch.arange(S).unsqueeze(0) < lengths.unsqueeze(1)  # (B, S)  True at real tokens
        src = torch.where(real, symbols, torch.full_like(symbols, PAD))  # (B, S)
        return self._batch_from(src, lengths)

    def batch_from_source(self, src: torch.Tensor, src_lengths: torch.Tensor) -> Batch:
        """Build the :class:`Batch` (targets included) for a given source ``(B, S)``."""
        src, src_lengths = check_source(src, src_lengths)
        bad = (src >= FIRST_SYMBOL + self.n_symbols) | (src < 0)
        if bool(bad.any()):
            raise ValueError(
                f"src holds token ids outside [0, {self.vocab_size - 1}] for a task with "
                f"n_symbols={self.n_symbols}"
            )
        return self._batch_from(src, src_lengths)

    def _batch_from(self, src: torch.Tensor, lengths: torch.Tensor) -> Batch:
        B = src.shape[0]
        target = self.target_for(src, lengths)  # (B, S)
        pad_col = torch.full((B, 1), PAD, dtype=torch.long)  # (B, 1)
        tgt_out = torch.cat([target, pad_col], dim=1)  # (B, T)
        tgt_out.scatter_(1, lengths.unsqueeze(1), EOS)  # EOS right after each target
        bos_col = torch.full((B, 1), BOS, dtype=torch.long)  # (B, 1)
        tgt_in = torch.cat([bos_col, target], dim=1)  # (B, T)
        return Batch(src=src, src_lengths=lengths, tgt_in=tgt_in, tgt_out=tgt_out)


def ReverseTask(n_symbols: int = 10, min_len: int = 4, max_len: int = 24) -> SequenceTask:
    """Output the input sequence backwards: ``a b c -> c b a``."""
    return SequenceTask("reverse", n_symbols, min_len, max_len)


def CopyTask(n_symbols: int = 10, min_len: int = 4, max_len: int = 24) -> SequenceTask:
    """Output the input sequence unchanged: ``a b c -> a b c``."""
    return SequenceTask("copy", n_symbols, min_len, max_len)


def make_batch(
    task: SequenceTask,
    batch_size: int,
    generator: torch.Generator | None = None,
    length: int | None = None,
) -> Batch:
    """Function form of :meth:`SequenceTask.make_batch`."""
    if not isinstance(task, SequenceTask):
        raise TypeError(f"task must be a SequenceTask, got {type(task).__name__}")
    return task.make_batch(batch_size, generator=generator, length=length)

def train_seq2seq(
    model: Seq2Seq,
    task: SequenceTask,
    steps: int,
    *,
    batch_size: int = 64,
    lr: float = 3e-3,
    generator: torch.Generator | None = None,
    grad_clip: float | None = 1.0,
    progress: bool = True,
    desc: str = "training",
) -> TrainHistory:
    """Train ``model`` with Adam on fresh random batches of ``task`` (teacher forcing).

    Args:
        model: any :class:`Seq2Seq`, whatever its decoder.
        task: the task that draws the batches (lengths uniform in ``[task.min_len, task.max_len]``).
        steps: number of optimizer steps (one new batch each).
        batch_size: sequences per batch.
        lr: Adam learning rate; it decays linearly to 10 % of this over the run.
        generator: randomness for the batches (pass a seeded one for repeatable training).
        grad_clip: clip the gradient norm to this (``None``: no clipping).
        progress: show a tqdm progress bar with the running loss.
        desc: label of the progress bar.
    """
    if not isinstance(model, Seq2Seq):
        raise TypeError(f"model must be a Seq2Seq, got {type(model).__name__}")
    if not isinstance(task, SequenceTask):
        raise TypeError(f"task must be a SequenceTask, got {type(task).__name__}")
    if task.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"task needs vocab_size {task.vocab_size} but the model has {model.config.vocab_size}"
        )
    require_int(steps, "steps")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0 - 0.9 * i / steps)

    def loss_for_step(i: int) -> torch.Tensor:
        batch = task.make_batch(batch_size, generator=generator)
        logits = model(
            batch.src.to(device), batch.src_lengths.to(device), batch.tgt_in.to(device)
        )  # (B, T, V)
        return sequence_loss(logits, batch.tgt_out.to(device))

    start = time.perf_counter()
    losses = run_steps(
        model, loss_for_step, optimizer, schedule, steps, grad_clip=grad_clip, progress=progress, desc=desc,
        postfix_every=25,
    )
    return TrainHistory(losses=losses, seconds=time.perf_counter() - start)


@dataclass
class LengthAccuracy:
    """Accuracy of a model at each source length, as returned by :func:`evaluate_by_length`."""

    token: dict[int, float]  # length -> fraction of output positions predicted correctly
    sequence: dict[int, float]  # length -> fraction of outputs entirely right (all tokens, then EOS)
    by_position: dict[int, list[float]]  # length -> accuracy at output position 0 .. length-1


@torch.no_grad()
def evaluate_by_length(
    model: Seq2Seq,
    task: SequenceTask,
    lengths,
    n_per_length: int = 200,
    generator: torch.Generator | None = None,
    *,
    teacher_forcing: bool = False,
) -> LengthAccuracy:
    """Accuracy of ``model`` on ``n_per_length`` fresh sequences of each length in ``lengths``.

    With ``teacher_forcing=False`` (the default) the model decodes greedily from BOS, as it
    would in use; position ``i`` counts as correct when the ``i``-th emitted token is the
    ``i``-th target token. With ``teacher_forcing=True`` the decoder is fed the true previous
    tokens, so each position measures what the model can recall with no earlier mistakes to
    inherit.
    """
    if not isinstance(model, Seq2Seq):
        raise TypeError(f"model must be a Seq2Seq, got {type(model).__name__}")
    if not isinstance(task, SequenceTask):
        raise TypeError(f"task must be a SequenceTask, got {type(task).__name__}")
    lengths = list(lengths)
    if not lengths:
        raise ValueError(f"lengths must be a non-empty sequence of positive ints, got {lengths!r}")
    for i, n in enumerate(lengths):
        require_int(n, f"lengths[{i}]")
    require_int(n_per_length, "n_per_length")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    token, sequence, by_position = {}, {}, {}
    for L in lengths:
        batch = task.make_batch(n_per_length, generator=generator, length=L)
        src, src_lengths = batch.src.to(device), batch.src_lengths.to(device)
        target = batch.tgt_out.to(device)  # (N, L + 1): L tokens then EOS
        if teacher_forcing:
            pred = model(src, src_lengths, batch.tgt_in.to(device)).argmax(dim=-1)  # (N, L + 1)
        else:
            pred = model.generate(src, src_lengths, max_len=L + 1)  # (N, <= L + 1)
            if pred.shape[1] < L + 1:  # every row stopped early: pad to the target length
                fill = torch.full(
                    (pred.shape[0], L + 1 - pred.shape[1]), PAD, dtype=pred.dtype, device=device
                )
                pred = torch.cat([pred, fill], dim=1)  # (N, L + 1)
        correct = pred == target  # (N, L + 1)
        by_pos = correct[:, :L].float().mean(dim=0)  # (L,)
        token[L] = float(by_pos.mean())
        sequence[L] = float(correct.all(dim=1).float().mean())
        by_position[L] = [float(a) for a in by_pos]
    model.train(was_training)
    return LengthAccuracy(token=token, sequence=sequence, by_position=by_position)


def true_alignment(src_lengths: torch.Tensor, tgt_len: int, kind: str = "reverse") -> torch.Tensor:
    """The source position each output position copies, ``(B, tgt_len)``; ``-1`` where none.

    For ``kind="reverse"`` output position ``t`` copies source position ``length - 1 - t``
    (the anti-diagonal); for ``"copy"`` it copies position ``t`` (the diagonal). Positions
    ``t >= length`` (the EOS step and padding) copy nothing and get ``-1``.

    Args:
        src_lengths: ``(B,)`` true source lengths (integer tensor).
        tgt_len: ``T``, the number of output positions.
        kind: ``"reverse"`` or ``"copy"``, as in :class:`~attn_course.labs.reversal.SequenceTask`.
    """
    require_tensor(src_lengths, "src_lengths")
    if src_lengths.dim() != 1:
        raise shape_error("src_lengths", src_lengths, "(B,)")
    if src_lengths.dtype == torch.bool or src_lengths.is_floating_point() or src_lengths.is_complex():
        raise TypeError(f"src_lengths must be an integer tensor, got dtype {src_lengths.dtype}")
    require_int(tgt_len, "tgt_len", 0)
    if kind not in TASK_KINDS:
        raise ValueError(f"kind must be one of {TASK_KINDS}, got {kind!r}")
    t = torch.arange(tgt_len, device=src_lengths.device).unsqueeze(0)  # (1, T)
    lengths = src_lengths.long().unsqueeze(1)  # (B, 1)
    src_pos = lengths - 1 - t if kind == "reverse" else t.expand(lengths.shape[0], -1)  # (B, T)
    return torch.where(t < lengths, src_pos, torch.full_like(src_pos, -1))  # (B, T)


def alignment_offsets(
    attn: torch.Tensor,
    src_lengths: torch.Tensor,
    tgt_lengths: torch.Tensor | None = None,
    kind: str = "reverse",
) -> torch.Tensor:
    """How far the attention's peak lands from the true source position, one entry per scored position.

    Returns a 1-D long tensor of ``argmax_j attn[b, t, j] - true_position[b, t]`` over the
    scored output positions (see :func:`alignment_accuracy`), in row-major ``(b, t)`` order:
    ``0`` = on the true source token, ``+1`` = one position to its right, and so on.
    """
    require_floating(attn, "attn")
    if attn.dim() != 3:
        raise shape_error("attn", attn, "(B, T, S)")
    B, T, S = attn.shape
    require_tensor(src_lengths, "src_lengths")
    if src_lengths.shape != (B,):
        raise shape_error("src_lengths", src_lengths, f"(B,) = ({B},) to match attn {fmt_shape(attn.shape)}")
    if B and (int(src_lengths.min()) < 1 or int(src_lengths.max()) > S):
        raise ValueError(f"src_lengths must lie in [1, S={S}] for attn of shape {fmt_shape(attn.shape)}")
    if tgt_lengths is None:
        tgt_lengths = torch.full((B,), T, dtype=torch.long, device=attn.device)  # (B,)
    require_tensor(tgt_lengths, "tgt_lengths")
    if tgt_lengths.shape != (B,):
        raise shape_error("tgt_lengths", tgt_lengths, f"(B,) = ({B},) to match attn {fmt_shape(attn.shape)}")
    if tgt_lengths.dtype == torch.bool or tgt_lengths.is_floating_point():
        raise TypeError(f"tgt_lengths must be an integer tensor, got dtype {tgt_lengths.dtype}")
    if B and (int(tgt_lengths.min()) < 0 or int(tgt_lengths.max()) > T):
        raise ValueError(f"tgt_lengths must lie in [0, T={T}] for attn of shape {fmt_shape(attn.shape)}")
    truth = true_alignment(src_lengths.to(attn.device), T, kind)  # (B, T), -1 where nothing is copied
    scored = (truth >= 0) & lengths_to_mask(tgt_lengths.to(attn.device), T)  # (B, T)
    if not bool(scored.any()):
        raise ValueError("no output position copies a source token: nothing to score")
    return (attn.argmax(dim=-1) - truth)[scored]  # (N,) over the scored positions


def alignment_accuracy(
    attn: torch.Tensor,
    src_lengths: torch.Tensor,
    tgt_lengths: torch.Tensor | None = None,
    kind: str = "reverse",
    *,
    tolerance: int = 0,
) -> float:
    """Fraction of output positions whose largest attention weight is on the true source position.

    Only output positions that copy a source token count: ``t < src_lengths[b]`` (so not the
    EOS step) and ``t < tgt_lengths[b]`` (so not padding, or positions after an early EOS).
    The true position is :func:`true_alignment`'s: ``length - 1 - t`` for reversal.

    Args:
        attn: ``(B, T, S)`` attention weights (from ``model(..., return_attention=True)`` or
            ``model.generate(..., return_attention=True)``).
        src_lengths: ``(B,)`` true source lengths, each in ``[1, S]``.
        tgt_lengths: ``(B,)`` output positions to score per row, each in ``[0, T]``
            (default: all ``T``).
        kind: ``"reverse"`` (the anti-diagonal) or ``"copy"`` (the diagonal).
        tolerance: also count a peak at most this many positions away from the true one.

    Returns:
        a float in ``[0, 1]``.
    """
    require_int(tolerance, "tolerance", 0)
    offsets = alignment_offsets(attn, src_lengths, tgt_lengths, kind)  # (N,)
    return float((offsets.abs() <= tolerance).float().mean())
