"""A GRU encoder-decoder (Seq2Seq) whose decoder can be swapped: fixed context now, attention later.

The encoder reads the source and returns every hidden state plus the final one. The
*fixed-context* decoder of Cho et al. (2014) sees only that final vector: it starts
from it and is fed it again at every step. Everything the decoder will ever know about the
source must fit in those ``D`` numbers, which is the bottleneck chapter 1 measures.

Two attention decoders fill the same slot: :class:`BahdanauDecoder` (additive score, the
previous decoder state is the query, the context is GRU input) and :class:`LuongDecoder`
(general score, the current state is the query, ``h~ = tanh(W_c [c; h])`` predicts).
:func:`alignment_accuracy` measures how well their attention weights find the source token
each output copies.

A decoder is any :class:`Decoder`: it turns the encoder's output into an opaque ``state``
(:meth:`Decoder.init_state`) and then predicts one token at a time (:meth:`Decoder.step`).
``step`` receives all encoder states and the source mask, so an attention decoder fits the
same slot; :class:`Seq2Seq`, :func:`train_seq2seq` and :func:`evaluate_by_length` never look
inside a decoder and work unchanged for any of them.

Dimension glossary (used in shape comments)::

    B   batch size
    S   source length (longest source in the batch)
    T   target length (decoder steps; T == S + 1 for the reverse/copy tasks)
    E   token embedding width
    D   hidden width of the GRUs (the size of the fixed context vector)
    V   vocabulary size (special tokens + content symbols)

Masks follow the package rule: ``True`` means "real token, may attend".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import fmt_shape, require_floating, require_tensor, shape_error
from .attention import context_vector
from .combine import GRUInputCombine, LuongCombine
from .data import BOS, EOS, PAD, TASK_KINDS, SequenceTask, _check_src
from .masking import masked_softmax
from .scoring import AdditiveScore, GeneralScore
from .training import TrainHistory, run_steps

__all__ = [
    "Seq2SeqConfig",
    "Encoder",
    "Decoder",
    "FixedContextDecoder",
    "BahdanauDecoder",
    "LuongDecoder",
    "Seq2Seq",
    "sequence_loss",
    "TrainHistory",
    "train_seq2seq",
    "LengthAccuracy",
    "evaluate_by_length",
    "lengths_to_mask",
    "true_alignment",
    "alignment_offsets",
    "alignment_accuracy",
]


@dataclass
class Seq2SeqConfig:
    """Sizes of the encoder-decoder. Build one per task: ``Seq2SeqConfig(vocab_size=task.vocab_size)``."""

    vocab_size: int = 13  # V: token ids incl. PAD/BOS/EOS; use task.vocab_size (10 symbols + 3 specials)
    embed_dim: int = 32  # E: width of the token embeddings (encoder and decoder each have their own)
    hidden_dim: int = 128  # D: GRU state width = size of the single vector the decoder gets

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embed_dim", "hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.vocab_size <= EOS:
            raise ValueError(f"vocab_size must exceed the special tokens (> {EOS}), got {self.vocab_size}")


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B,)`` lengths -> ``(B, max_len)`` bool mask, ``True`` at the first ``length`` positions."""
    require_tensor(lengths, "lengths")
    if lengths.dim() != 1:
        raise shape_error("lengths", lengths, "(B,)")
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, max_len)


class Encoder(nn.Module):
    """Embedding + one-layer unidirectional GRU over the source."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=PAD)
        self.gru = nn.GRU(config.embed_dim, config.hidden_dim, batch_first=True)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a padded batch.

        Args:
            src: ``(B, S)`` token ids, PAD after each sequence's end.
            src_lengths: ``(B,)`` true lengths.

        Returns:
            ``outputs`` ``(B, S, D)``: the hidden state after each source token (zeros at padding);
            ``final`` ``(B, D)``: the hidden state after each sequence's *last real* token.
        """
        src, src_lengths = _check_src(src, src_lengths)
        x = self.embedding(src)  # (B, S, E)
        outputs, _ = self.gru(x)  # (B, S, D)
        # The GRU runs left to right, so the state at position length-1 has not seen any padding:
        # it is exactly the state after the last real token.
        last = (src_lengths - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[2])  # (B, 1, D)
        final = outputs.gather(1, last).squeeze(1)  # (B, D)
        mask = lengths_to_mask(src_lengths, src.shape[1])  # (B, S)
        outputs = outputs * mask.unsqueeze(-1)  # (B, S, D)  zero the states computed on padding
        return outputs, final


class Decoder(nn.Module):
    """Interface every decoder implements; :class:`Seq2Seq` only talks to a decoder through it.

    Subclasses implement :meth:`init_state` and :meth:`step`; :meth:`forward` (teacher
    forcing over a whole target) loops over ``step`` and may be overridden by a faster
    equivalent.
    """

    def init_state(
        self, encoder_outputs: torch.Tensor, encoder_final: torch.Tensor, src_mask: torch.Tensor
    ) -> Any:
        """Build the decoder's starting state from ``encoder_outputs`` ``(B, S, D)``,
        ``encoder_final`` ``(B, D)`` and ``src_mask`` ``(B, S)``. The state is opaque to callers."""
        raise NotImplementedError

    def step(
        self,
        prev_token: torch.Tensor,
        state: Any,
        encoder_outputs: torch.Tensor,
        src_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """One decoding step.

        Args:
            prev_token: ``(B,)`` the previous output token (BOS at the first step).
            state: what ``init_state`` or the previous ``step`` returned.
            encoder_outputs: ``(B, S, D)`` all encoder states.
            src_mask: ``(B, S)`` bool, ``True`` at real source tokens.

        Returns:
            ``logits`` ``(B, V)`` for the next token, the new ``state``, and the attention
            weights ``(B, S)`` over the source, or ``None`` for a decoder without attention.
        """
        raise NotImplementedError

    def forward(
        self,
        tgt_in: torch.Tensor,
        state: Any,
        encoder_outputs: torch.Tensor,
        src_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: feed ``tgt_in`` ``(B, T)`` one token per step.

        Returns ``logits`` ``(B, T, V)`` and attention weights ``(B, T, S)`` (``None`` if the
        decoder has no attention).
        """
        logits, weights = [], []
        for t in range(tgt_in.shape[1]):
            step_logits, state, w = self.step(tgt_in[:, t], state, encoder_outputs, src_mask)
            logits.append(step_logits)  # each (B, V)
            weights.append(w)  # each (B, S) or None
        all_logits = torch.stack(logits, dim=1)  # (B, T, V)
        if any(w is None for w in weights):
            return all_logits, None
        return all_logits, torch.stack(weights, dim=1)  # (B, T, S)


class FixedContextDecoder(Decoder):
    """GRU decoder that sees the source only through one vector ``c``, the encoder's final state.

    As in Cho et al. (2014): the decoder starts from ``c``, reads ``[embed(prev token); c]``
    at every step, and predicts the next token from ``[h_t; c]``. The attention decoders of
    the next chapter keep this layout and replace the fixed ``c`` with a context ``c_t``
    recomputed at every step. ``state`` is the pair ``(h, c)``, both ``(B, D)``.
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        D = config.hidden_dim
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=PAD)
        self.gru = nn.GRU(config.embed_dim + D, D, batch_first=True)
        self.out = nn.Linear(2 * D, config.vocab_size)

    def init_state(self, encoder_outputs, encoder_final, src_mask):
        return (encoder_final, encoder_final)  # (h, c), each (B, D)

    def step(self, prev_token, state, encoder_outputs, src_mask):
        h, c = state  # (B, D), (B, D)
        x = torch.cat([self.embedding(prev_token), c], dim=-1)  # (B, E + D)
        _, h_new = self.gru(x.unsqueeze(1), h.unsqueeze(0).contiguous())  # x: (B, 1, E + D); h_new: (1, B, D)
        h_new = h_new.squeeze(0)  # (B, D)
        logits = self.out(torch.cat([h_new, c], dim=-1))  # (B, V)
        return logits, (h_new, c), None

    def forward(self, tgt_in, state, encoder_outputs, src_mask):
        # Same computation as looping over step(), in one GRU call: c does not change between steps.
        h, c = state  # (B, D), (B, D)
        T = tgt_in.shape[1]
        c_seq = c.unsqueeze(1).expand(-1, T, -1)  # (B, T, D)
        x = torch.cat([self.embedding(tgt_in), c_seq], dim=-1)  # (B, T, E + D)
        hs, _ = self.gru(x, h.unsqueeze(0).contiguous())  # (B, T, D)
        logits = self.out(torch.cat([hs, c_seq], dim=-1))  # (B, T, V)
        return logits, None


def _check_attn_dim(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class BahdanauDecoder(Decoder):
    """Additive attention in the decoder, as in Bahdanau et al. (2015).

    At step ``t``, with ``s_{t-1}`` the previous decoder state and ``h_j`` the encoder states::

        e_tj  = v^T tanh(W_q s_{t-1} + W_k h_j)            AdditiveScore: the query is s_{t-1}
        a_t   = masked_softmax(e_t, src_mask)             (B, S): zero weight on padding
        c_t   = sum_j a_tj h_j                            context_vector
        s_t   = GRU([embed(y_{t-1}); c_t], s_{t-1})       GRUInputCombine: c_t is GRU input
        logits = W_o [s_t; c_t; embed(y_{t-1})] + b_o

    The context depends on ``s_{t-1}`` and ``s_t`` on the context, so the steps cannot run in
    parallel: teacher forcing (:meth:`forward`) is the :class:`Decoder` step loop. Simplifications
    of the paper: a unidirectional encoder, ``s_0`` = the encoder's final state, and a linear
    output layer instead of the maxout layer. ``state`` is ``s`` ``(B, D)``.

    Args:
        config: the sizes; keys and values are the encoder states (width ``D``).
        attn_hidden: hidden width ``h`` of the additive score (default ``D``).
    """

    def __init__(self, config: Seq2SeqConfig, attn_hidden: int | None = None):
        super().__init__()
        if not isinstance(config, Seq2SeqConfig):
            raise TypeError(f"config must be a Seq2SeqConfig, got {type(config).__name__}")
        D, E = config.hidden_dim, config.embed_dim
        attn_hidden = D if attn_hidden is None else _check_attn_dim(attn_hidden, "attn_hidden")
        self.embedding = nn.Embedding(config.vocab_size, E, padding_idx=PAD)
        self.score = AdditiveScore(query_dim=D, key_dim=D, hidden_dim=attn_hidden)
        self.combine = GRUInputCombine(context_dim=D, input_dim=E, state_dim=D)
        self.out = nn.Linear(2 * D + E, config.vocab_size)

    def init_state(self, encoder_outputs, encoder_final, src_mask):
        return encoder_final  # s_0: (B, D)

    def step(self, prev_token, state, encoder_outputs, src_mask):
        s_prev = state  # (B, D)
        emb = self.embedding(prev_token)  # (B, E)
        scores = self.score(s_prev.unsqueeze(1), encoder_outputs)  # (B, 1, D), (B, S, D) -> (B, 1, S)
        weights = masked_softmax(scores, src_mask.unsqueeze(1))  # (B, 1, S); mask (B, 1, S)
        context = context_vector(weights, encoder_outputs).squeeze(1)  # (B, 1, D) -> (B, D)
        s = self.combine(context, s_prev, emb)  # (B, D): GRU([emb; c], s_prev)
        logits = self.out(torch.cat([s, context, emb], dim=-1))  # (B, 2D + E) -> (B, V)
        return logits, s, weights.squeeze(1)  # (B, V), (B, D), (B, S)


class LuongDecoder(Decoder):
    """Multiplicative ("general") attention after the GRU, as in Luong et al. (2015), no input feeding.

    At step ``t``, with ``h_t`` the *current* decoder state and ``h̄_j`` the encoder states::

        h_t    = GRU(embed(y_{t-1}), h_{t-1})             the GRU never sees the context
        e_tj   = h_t^T W_a h̄_j                            GeneralScore: the query is h_t
        a_t    = masked_softmax(e_t, src_mask)            (B, S)
        c_t    = sum_j a_tj h̄_j                           context_vector
        h~_t   = tanh(W_c [c_t; h_t])                     LuongCombine: the attentional state
        logits = W_s h~_t + b_s

    Since the context does not feed back into the GRU, the GRU runs over a whole teacher-forced
    target in one call and the attention for all ``T`` positions is one batched product:
    :meth:`forward` does that, and equals the :meth:`step` loop (which greedy decoding uses).
    ``state`` is ``h`` ``(B, D)``; ``h_0`` is the encoder's final state.
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        if not isinstance(config, Seq2SeqConfig):
            raise TypeError(f"config must be a Seq2SeqConfig, got {type(config).__name__}")
        D, E = config.hidden_dim, config.embed_dim
        self.embedding = nn.Embedding(config.vocab_size, E, padding_idx=PAD)
        self.gru = nn.GRU(E, D, batch_first=True)
        self.score = GeneralScore(query_dim=D, key_dim=D)
        self.combine = LuongCombine(context_dim=D, state_dim=D, out_dim=D)
        self.out = nn.Linear(D, config.vocab_size)

    def init_state(self, encoder_outputs, encoder_final, src_mask):
        return encoder_final  # h_0: (B, D)

    def _attend(self, hs, encoder_outputs, src_mask):
        """Queries ``hs`` ``(B, T, D)`` -> logits ``(B, T, V)`` and weights ``(B, T, S)``."""
        scores = self.score(hs, encoder_outputs)  # (B, T, D), (B, S, D) -> (B, T, S)
        weights = masked_softmax(scores, src_mask.unsqueeze(1))  # (B, T, S); mask (B, 1, S)
        context = context_vector(weights, encoder_outputs)  # (B, T, D)
        h_tilde = self.combine(context, hs)  # (B, T, D): tanh(W_c [c; h])
        return self.out(h_tilde), weights  # (B, T, V), (B, T, S)

    def step(self, prev_token, state, encoder_outputs, src_mask):
        x = self.embedding(prev_token).unsqueeze(1)  # (B, 1, E)
        h_seq, _ = self.gru(x, state.unsqueeze(0).contiguous())  # (B, 1, D); h_0 as (1, B, D)
        logits, weights = self._attend(h_seq, encoder_outputs, src_mask)  # (B, 1, V), (B, 1, S)
        return logits.squeeze(1), h_seq.squeeze(1), weights.squeeze(1)  # (B, V), (B, D), (B, S)

    def forward(self, tgt_in, state, encoder_outputs, src_mask):
        # The same computation as the step loop, all T steps at once: one GRU call, one attention.
        hs, _ = self.gru(self.embedding(tgt_in), state.unsqueeze(0).contiguous())  # (B, T, D)
        return self._attend(hs, encoder_outputs, src_mask)  # (B, T, V), (B, T, S)


class Seq2Seq(nn.Module):
    """Encoder + any :class:`Decoder` (default: :class:`FixedContextDecoder`)."""

    def __init__(self, config: Seq2SeqConfig, decoder: Decoder | None = None):
        super().__init__()
        if not isinstance(config, Seq2SeqConfig):
            raise TypeError(f"config must be a Seq2SeqConfig, got {type(config).__name__}")
        if decoder is not None and not isinstance(decoder, Decoder):
            raise TypeError(f"decoder must be a Decoder or None, got {type(decoder).__name__}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = decoder if decoder is not None else FixedContextDecoder(config)

    def _check_tokens(self, x: torch.Tensor, name: str) -> None:
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.config.vocab_size):
            raise ValueError(f"{name} holds token ids outside [0, {self.config.vocab_size - 1}] (vocab_size)")

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor):
        """Run the encoder and set up the decoder.

        Returns ``encoder_outputs`` ``(B, S, D)``, ``src_mask`` ``(B, S)`` and the decoder's initial state.
        """
        src, src_lengths = _check_src(src, src_lengths)
        self._check_tokens(src, "src")
        encoder_outputs, final = self.encoder(src, src_lengths)  # (B, S, D), (B, D)
        src_mask = lengths_to_mask(src_lengths, src.shape[1])  # (B, S)
        state = self.decoder.init_state(encoder_outputs, final, src_mask)
        return encoder_outputs, src_mask, state

    def forward(
        self,
        src: torch.Tensor,
        src_lengths: torch.Tensor,
        tgt_in: torch.Tensor,
        return_attention: bool = False,
    ):
        """Teacher-forced logits.

        Args:
            src: ``(B, S)`` source tokens; src_lengths: ``(B,)``.
            tgt_in: ``(B, T)`` decoder inputs (BOS + target), as in :class:`~attn_course.data.Batch`.
            return_attention: also return the ``(B, T, S)`` attention weights (``None`` for a
                fixed-context decoder).

        Returns:
            ``logits`` ``(B, T, V)`` (and the attention weights if asked).
        """
        src, src_lengths = _check_src(src, src_lengths)
        require_tensor(tgt_in, "tgt_in")
        if tgt_in.dim() != 2 or tgt_in.shape[0] != src.shape[0]:
            raise shape_error("tgt_in", tgt_in, f"(B, T) with B = {src.shape[0]} to match src")
        if tgt_in.dtype != torch.long:
            raise TypeError(f"tgt_in must hold token ids (torch.long), got dtype {tgt_in.dtype}")
        self._check_tokens(tgt_in, "tgt_in")
        encoder_outputs, src_mask, state = self.encode(src, src_lengths)
        logits, weights = self.decoder(tgt_in, state, encoder_outputs, src_mask)  # (B, T, V), (B, T, S)|None
        return (logits, weights) if return_attention else logits

    @torch.no_grad()
    def generate(
        self,
        src: torch.Tensor,
        src_lengths: torch.Tensor,
        max_len: int | None = None,
        return_attention: bool = False,
    ):
        """Greedy decoding: feed back the most likely token until EOS or ``max_len`` tokens.

        Args:
            src: ``(B, S)`` source tokens; src_lengths: ``(B,)``.
            max_len: most tokens to emit per sequence, EOS included (default ``S + 1``,
                enough for reverse/copy).
            return_attention: also return attention weights ``(B, T, S)`` (``None`` without attention).

        Returns:
            ``tokens`` ``(B, T)`` with ``T <= max_len``: each row is the output up to and
            including its first EOS, then PAD. Decoding stops early once every row has an EOS.
        """
        src, src_lengths = _check_src(src, src_lengths)
        if max_len is None:
            max_len = src.shape[1] + 1
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            raise ValueError(f"max_len must be a positive int or None, got {max_len!r}")
        encoder_outputs, src_mask, state = self.encode(src, src_lengths)
        B = src.shape[0]
        prev = torch.full((B,), BOS, dtype=torch.long, device=src.device)  # (B,)
        finished = torch.zeros(B, dtype=torch.bool, device=src.device)  # (B,)
        tokens, weights = [], []
        for _ in range(max_len):
            logits, state, w = self.decoder.step(prev, state, encoder_outputs, src_mask)  # (B, V)
            nxt = logits.argmax(dim=-1)  # (B,)
            nxt = torch.where(finished, torch.full_like(nxt, PAD), nxt)  # PAD after EOS
            tokens.append(nxt)
            weights.append(w)
            finished = finished | (nxt == EOS)
            prev = nxt
            if bool(finished.all()):
                break
        out = torch.stack(tokens, dim=1)  # (B, T)
        if not return_attention:
            return out
        if any(w is None for w in weights):
            return out, None
        return out, torch.stack(weights, dim=1)  # (B, T, S)


def sequence_loss(logits: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over real target tokens: ``logits`` ``(B, T, V)``, ``tgt_out`` ``(B, T)``; PAD ignored."""
    require_tensor(logits, "logits")
    require_tensor(tgt_out, "tgt_out")
    if logits.dim() != 3:
        raise shape_error("logits", logits, "(B, T, V)")
    if tgt_out.shape != logits.shape[:2]:
        raise shape_error("tgt_out", tgt_out, f"(B, T) = {fmt_shape(logits.shape[:2])} to match logits")
    V = logits.shape[-1]
    return F.cross_entropy(
        logits.reshape(-1, V),  # (B * T, V)
        tgt_out.reshape(-1),  # (B * T,)
        ignore_index=PAD,
    )


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
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
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
    if not lengths or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in lengths):
        raise ValueError(f"lengths must be a non-empty sequence of positive ints, got {lengths!r}")
    if not isinstance(n_per_length, int) or isinstance(n_per_length, bool) or n_per_length < 1:
        raise ValueError(f"n_per_length must be a positive int, got {n_per_length!r}")
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


# --------------------------------------------------------------------------- alignment


def true_alignment(src_lengths: torch.Tensor, tgt_len: int, kind: str = "reverse") -> torch.Tensor:
    """The source position each output position copies, ``(B, tgt_len)``; ``-1`` where none.

    For ``kind="reverse"`` output position ``t`` copies source position ``length - 1 - t``
    (the anti-diagonal); for ``"copy"`` it copies position ``t`` (the diagonal). Positions
    ``t >= length`` (the EOS step and padding) copy nothing and get ``-1``.

    Args:
        src_lengths: ``(B,)`` true source lengths (integer tensor).
        tgt_len: ``T``, the number of output positions.
        kind: ``"reverse"`` or ``"copy"``, as in :class:`~attn_course.data.SequenceTask`.
    """
    require_tensor(src_lengths, "src_lengths")
    if src_lengths.dim() != 1:
        raise shape_error("src_lengths", src_lengths, "(B,)")
    if src_lengths.dtype == torch.bool or src_lengths.is_floating_point() or src_lengths.is_complex():
        raise TypeError(f"src_lengths must be an integer tensor, got dtype {src_lengths.dtype}")
    if isinstance(tgt_len, bool) or not isinstance(tgt_len, int) or tgt_len < 0:
        raise ValueError(f"tgt_len must be a non-negative int, got {tgt_len!r}")
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
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be a non-negative int, got {tolerance!r}")
    offsets = alignment_offsets(attn, src_lengths, tgt_lengths, kind)  # (N,)
    return float((offsets.abs() <= tolerance).float().mean())
