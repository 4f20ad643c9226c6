"""A GRU encoder-decoder (Seq2Seq) whose decoder can be swapped: fixed context now, attention later.

The encoder reads the source and returns every hidden state plus the final one. The
*fixed-context* decoder of Cho et al. (2014) sees only that final vector: it starts
from it and is fed it again at every step. Everything the decoder will ever know about the
source must fit in those ``D`` numbers, which is the bottleneck chapter 1 measures.

Two attention decoders fill the same slot: :class:`BahdanauDecoder` (additive score, the
previous decoder state is the query, the context is GRU input) and :class:`LuongDecoder`
(general score, the current state is the query, ``h~ = tanh(W_c [c; h])`` predicts).
(:func:`attn_course.labs.reversal.alignment_accuracy` measures how well their attention
weights find the source token each output copies.)

A decoder is any :class:`Decoder`: it turns the encoder's output into an opaque ``state``
(:meth:`Decoder.init_state`) and then predicts one token at a time (:meth:`Decoder.step`).
``step`` receives all encoder states and the source mask, so an attention decoder fits the
same slot; :class:`Seq2Seq` (and the lab's ``train_seq2seq`` and ``evaluate_by_length``) never
look inside a decoder and work unchanged for any of them.

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

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attn_course._validation import fmt_shape, require_int, require_optional_int, require_tensor, shape_error
from attn_course.attention import context_vector
from attn_course.combine import GRUInputCombine, LuongCombine
from attn_course.masking import masked_softmax
from attn_course.scoring import AdditiveScore, GeneralScore

__all__ = [
    "Seq2SeqConfig",
    "Encoder",
    "Decoder",
    "FixedContextDecoder",
    "BahdanauDecoder",
    "LuongDecoder",
    "Seq2Seq",
    "sequence_loss",
    "lengths_to_mask",
    "check_source",
    "PAD",
    "BOS",
    "EOS",
    "FIRST_SYMBOL",
]


# Token ids shared by the models and the tasks (attn_course.labs.reversal) that feed them.
PAD = 0  # padding after the end of a shorter sequence (ignored by the loss)
BOS = 1  # "begin of sequence": the decoder's first input
EOS = 2  # "end of sequence": the decoder's last output
FIRST_SYMBOL = 3  # id of the first content symbol; ids below this are special tokens


def check_source(src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


@dataclass
class Seq2SeqConfig:
    """Sizes of the encoder-decoder. Build one per task: ``Seq2SeqConfig(vocab_size=task.vocab_size)``."""

    vocab_size: int = 13  # V: token ids incl. PAD/BOS/EOS; use task.vocab_size (10 symbols + 3 specials)
    embed_dim: int = 32  # E: width of the token embeddings (encoder and decoder each have their own)
    hidden_dim: int = 128  # D: GRU state width = size of the single vector the decoder gets

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embed_dim", "hidden_dim"):
            value = getattr(self, name)
            require_int(value, name)
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
        src, src_lengths = check_source(src, src_lengths)
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
    chapter 5 keep this layout and replace the fixed ``c`` with a context ``c_t``
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


class BahdanauDecoder(Decoder):
    """Additive attention in the decoder, as in Bahdanau et al. (2015).

    At step ``t``, with ``s_{t-1}`` the previous decoder state and ``h_j`` the encoder states::

        e_tj  = v^T tanh(W_q s_{t-1} + W_k h_j)            AdditiveScore: the query is s_{t-1}
        a_t   = masked_softmax(e_t, src_mask)             (B, S): zero weight on padding
        c_t   = sum_j a_tj h_j                            context_vector
        s_t   = GRU([embed(y_{t-1}); c_t], s_{t-1})       GRUInputCombine: c_t is GRU input
        logits = W_o [s_t; c_t; embed(y_{t-1})] + b_o

    The context depends on ``s_{t-1}`` and ``s_t`` on the context, so the steps cannot run in
    parallel: teacher forcing (:meth:`forward`) is still a loop over the steps, but what no step
    depends on is taken out of it: the keys' projection ``W_k h_j`` (once per sequence, not once
    per step), the embeddings and the output layer. Simplifications
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
        attn_hidden = D if attn_hidden is None else require_int(attn_hidden, "attn_hidden")
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

    def forward(self, tgt_in, state, encoder_outputs, src_mask):
        # The steps of step(), with the work that does not change from step to step done once:
        # the keys' projection, the embeddings, the embeddings' share of the GRU's input gates
        # (GRU([e; c]) multiplies W_ih = [W_e | W_c] by [e; c] = W_e e + W_c c) and the output layer.
        # The loop keeps only what depends on the previous state. Inputs were checked by Seq2Seq.
        cell = self.combine.cell
        D = cell.hidden_size
        emb = self.embedding(tgt_in)  # (B, T, E)
        keys = self.score.W_k(encoder_outputs)  # (B, S, h): W_k h_j, the same at every step
        w_emb, w_ctx = cell.weight_ih.split([emb.shape[-1], D], dim=1)  # (3D, E), (3D, D)
        gates_emb = F.linear(emb, w_emb, cell.bias_ih)  # (B, T, 3D): W_e e_t + b_ih for every step
        blocked = ~src_mask.unsqueeze(1)  # (B, 1, S): padding; every row has a real token, so no row is all -inf
        s = state  # (B, D)
        states, contexts, weights = [], [], []
        # unbind, not gates_emb[:, t]: indexing's backward writes a zero tensor the size of all
        # T steps at every step (a third of the training time); unbind's backward stacks once.
        for gates_t in gates_emb.unbind(dim=1):  # (B, 3D) per step
            scores = self.score.score_projected_keys(s.unsqueeze(1), keys)  # (B, 1, S)
            w = scores.masked_fill(blocked, float("-inf")).softmax(dim=-1)  # (B, 1, S)
            c = torch.bmm(w, encoder_outputs).squeeze(1)  # (B, 1, D) -> (B, D): the context c_t
            # GRU([e_t; c_t], s_{t-1}), as nn.GRUCell computes it (gate order r, z, n).
            i_r, i_z, i_n = (gates_t + F.linear(c, w_ctx)).chunk(3, dim=-1)  # (B, D) each
            h_r, h_z, h_n = F.linear(s, cell.weight_hh, cell.bias_hh).chunk(3, dim=-1)  # (B, D) each
            r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            s = n + z * (s - n)  # (1 - z) n + z s_{t-1}
            states.append(s)
            contexts.append(c)
            weights.append(w.squeeze(1))  # (B, S)
        S_t, C_t = torch.stack(states, dim=1), torch.stack(contexts, dim=1)  # (B, T, D) each
        logits = self.out(torch.cat([S_t, C_t, emb], dim=-1))  # (B, T, 2D + E) -> (B, T, V)
        return logits, torch.stack(weights, dim=1)  # (B, T, V), (B, T, S)


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

    def attend(self, hs, encoder_outputs, src_mask):
        """Queries ``hs`` ``(B, T, D)`` -> logits ``(B, T, V)`` and weights ``(B, T, S)``."""
        scores = self.score(hs, encoder_outputs)  # (B, T, D), (B, S, D) -> (B, T, S)
        weights = masked_softmax(scores, src_mask.unsqueeze(1))  # (B, T, S); mask (B, 1, S)
        context = context_vector(weights, encoder_outputs)  # (B, T, D)
        h_tilde = self.combine(context, hs)  # (B, T, D): tanh(W_c [c; h])
        return self.out(h_tilde), weights  # (B, T, V), (B, T, S)

    def step(self, prev_token, state, encoder_outputs, src_mask):
        x = self.embedding(prev_token).unsqueeze(1)  # (B, 1, E)
        h_seq, _ = self.gru(x, state.unsqueeze(0).contiguous())  # (B, 1, D); h_0 as (1, B, D)
        logits, weights = self.attend(h_seq, encoder_outputs, src_mask)  # (B, 1, V), (B, 1, S)
        return logits.squeeze(1), h_seq.squeeze(1), weights.squeeze(1)  # (B, V), (B, D), (B, S)

    def forward(self, tgt_in, state, encoder_outputs, src_mask):
        # The same computation as the step loop, all T steps at once: one GRU call, one attention.
        hs, _ = self.gru(self.embedding(tgt_in), state.unsqueeze(0).contiguous())  # (B, T, D)
        return self.attend(hs, encoder_outputs, src_mask)  # (B, T, V), (B, T, S)


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
        src, src_lengths = check_source(src, src_lengths)
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
            tgt_in: ``(B, T)`` decoder inputs (BOS + target), as in :class:`~attn_course.labs.reversal.Batch`.
            return_attention: also return the ``(B, T, S)`` attention weights (``None`` for a
                fixed-context decoder).

        Returns:
            ``logits`` ``(B, T, V)`` (and the attention weights if asked).
        """
        src, src_lengths = check_source(src, src_lengths)
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
        src, src_lengths = check_source(src, src_lengths)
        if max_len is None:
            max_len = src.shape[1] + 1
        require_optional_int(max_len, "max_len")
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
