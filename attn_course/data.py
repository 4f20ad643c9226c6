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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import fmt_shape, require_tensor, shape_error

PAD = 0
BOS = 1
EOS = 2
FIRST_SYMBOL = 3  # id of the first content symbol; ids below this are special tokens

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
        if not isinstance(self.n_symbols, int) or self.n_symbols < 2:
            raise ValueError(f"n_symbols must be an int >= 2, got {self.n_symbols!r}")
        if not isinstance(self.min_len, int) or self.min_len < 1:
            raise ValueError(f"min_len must be an int >= 1, got {self.min_len!r}")
        if not isinstance(self.max_len, int) or self.max_len < self.min_len:
            raise ValueError(f"max_len must be an int >= min_len ({self.min_len}), got {self.max_len!r}")

    @property
    def vocab_size(self) -> int:
        """Number of token ids: the special tokens plus the content symbols."""
        return FIRST_SYMBOL + self.n_symbols

    def target_for(self, src: torch.Tensor, src_lengths: torch.Tensor) -> torch.Tensor:
        """The target tokens (no BOS/EOS) for ``src`` ``(B, S)``: same shape, PAD where ``src`` is PAD."""
        src, src_lengths = _check_src(src, src_lengths)
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
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if length is None:
            lengths = torch.randint(
                self.min_len, self.max_len + 1, (batch_size,), generator=generator
            )  # (B,)
        else:
            if not isinstance(length, int) or isinstance(length, bool) or length < 1:
                raise ValueError(f"length must be a positive int or None, got {length!r}")
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
        src, src_lengths = _check_src(src, src_lengths)
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


def _check_src(src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a padded source batch ``(B, S)`` and its lengths ``(B,)``."""
    require_tensor(src, "src")
    require_tensor(src_lengths, "src_lengths")
    if src.dim() != 2:
        raise shape_error("src", src, "(B, S)")
    if src.dtype != torch.long:
        raise TypeError(f"src must hold token ids (torch.long), got dtype {src.dtype}")
    B, S = src.shape
    if src_lengths.dim() != 1 or src_lengths.shape[0] != B:
        raise shape_error(
            "src_lengths", src_lengths, f"(B,) = {fmt_shape((B,))} to match src {fmt_shape(src.shape)}"
        )
    if src_lengths.dtype != torch.long:
        raise TypeError(f"src_lengths must be torch.long, got dtype {src_lengths.dtype}")
    if B > 0 and (int(src_lengths.min()) < 1 or int(src_lengths.max()) > S):
        raise ValueError(f"src_lengths must lie in [1, S={S}] for src of shape {fmt_shape(src.shape)}")
    return src, src_lengths
