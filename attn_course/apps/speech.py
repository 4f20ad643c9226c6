"""Attention in speech: frames of "audio" to a shorter label sequence, LAS-style with a Bahdanau speller.

Listen, Attend and Spell (Chan et al., 2016) encodes the audio frames with a pyramidal
bidirectional LSTM "listener" (three layers that each concatenate neighbouring outputs, eight
times fewer time steps), and its "speller" decodes characters while attending over the listener's
states with a dot product of two MLP projections, ``e_tu = phi(s_t) . psi(h_u)``, ``s_t`` the
speller's *current* state. Ours is LAS-style: the listener is ``FrameEncoder`` (one pyramid step,
stack pairs of frames, then a GRU) and the speller is the library's own
``seq2seq.BahdanauDecoder``, whose score is additive, ``v^T tanh(W_q s_{t-1} + W_k h_u)`` on the
*previous* state; the baseline is the library's ``seq2seq.FixedContextDecoder``, which sees the
utterance only through the listener's last state.

``make_speech_data`` renders each label as a few noisy frames of its own spectrum-like prototype,
so the alignment from labels to frames is monotonic: the attention map shows a diagonal.

Dimension glossary: B batch, S frames (after the pyramid: S // 2), F features per frame, L labels,
D hidden width, V label vocabulary (special tokens included).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._validation import require_floating, require_int, shape_error
from ..seq2seq import (
    BOS,
    EOS,
    FIRST_SYMBOL,
    PAD,
    BahdanauDecoder,
    Decoder,
    FixedContextDecoder,
    Seq2SeqConfig,
)

__all__ = ["SpeechData", "make_speech_data", "FrameEncoder", "ListenAttendSpell"]


@dataclass
class SpeechData:
    frames: torch.Tensor  # (N, S, F) frame features, zeros after each utterance
    frame_lengths: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N, L + 1) label ids then EOS, PAD after
    label_lengths: torch.Tensor  # (N,) labels before EOS
    boundaries: list[list[int]]  # first frame of each label, per utterance
    vocab_size: int


def make_speech_data(n: int, generator: torch.Generator, symbols: int = 8, min_labels: int = 4,
                     max_labels: int = 8, min_frames: int = 3, max_frames: int = 6, features: int = 12,
                     noise: float = 0.6) -> SpeechData:
    """``n`` utterances: each label lasts 3-6 frames of its prototype vector plus noise."""
    n, A, F = require_int(n, "n"), require_int(symbols, "symbols"), require_int(features, "features")
    protos = torch.randn(A, F, generator=torch.Generator().manual_seed(1234))  # the same "phones" every call
    S_max = max_labels * max_frames
    frames = torch.zeros(n, S_max, F)
    labels = torch.full((n, max_labels + 1), PAD, dtype=torch.long)
    flen, llen, bounds = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), []
    for i in range(n):
        L = int(torch.randint(min_labels, max_labels + 1, (1,), generator=generator))
        seq = torch.randint(0, A, (L,), generator=generator)
        t, starts = 0, []
        for s in seq.tolist():
            d = int(torch.randint(min_frames, max_frames + 1, (1,), generator=generator))
            frames[i, t:t + d] = protos[s] + noise * torch.randn(d, F, generator=generator)
            starts.append(t)
            t += d
        labels[i, :L], labels[i, L] = seq + FIRST_SYMBOL, EOS
        flen[i], llen[i] = t, L
        bounds.append(starts)
    return SpeechData(frames, flen, labels, llen, bounds, FIRST_SYMBOL + A)


class FrameEncoder(nn.Module):
    """The listener: concatenate each pair of frames (halving the time resolution), then a GRU.

    Returns ``(outputs (B, S // 2, D), final (B, D), mask (B, S // 2))``, the format the library's
    decoders read.
    """

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.features = require_int(features, "features")
        self.gru = nn.GRU(2 * features, require_int(hidden, "hidden"), batch_first=True)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor):
        require_floating(frames, "frames")
        if frames.dim() != 3 or frames.shape[-1] != self.features:
            raise shape_error("frames", frames, f"(B, S, {self.features})")
        B, S, F = frames.shape
        S2 = S // 2
        x = frames[:, :2 * S2].reshape(B, S2, 2 * F)  # (B, S, F) -> (B, S/2, 2F): the pyramid step
        lengths = ((lengths + 1) // 2).clamp(1, S2)  # (B,) pairs that hold a real frame
        outputs, _ = self.gru(x)  # (B, S/2, D)
        mask = torch.arange(S2)[None, :] < lengths[:, None]  # (B, S/2)
        final = outputs[torch.arange(B), lengths - 1]  # (B, D): the state after the last real pair
        return outputs * mask[..., None], final, mask


class ListenAttendSpell(nn.Module):
    """LAS-style: ``FrameEncoder`` + a library decoder, ``BahdanauDecoder`` (``attention=True``) or ``FixedContextDecoder``."""

    def __init__(self, vocab_size: int, features: int = 12, hidden: int = 64, embed: int = 16,
                 attention: bool = True) -> None:
        super().__init__()
        config = Seq2SeqConfig(vocab_size=vocab_size, embed_dim=embed, hidden_dim=hidden)
        self.encoder = FrameEncoder(features, hidden)
        self.decoder: Decoder = BahdanauDecoder(config) if attention else FixedContextDecoder(config)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor):
        """Teacher forcing: ``(logits (B, L + 1, V), weights (B, L + 1, S // 2) or None)`` for BOS + labels."""
        out, final, mask = self.encoder(frames, lengths)
        tgt_in = torch.cat([torch.full_like(labels[:, :1], BOS), labels[:, :-1]], 1)  # (B, L + 1)
        state = self.decoder.init_state(out, final, mask)
        return self.decoder(tgt_in, state, out, mask)

    @torch.no_grad()
    def transcribe(self, frames: torch.Tensor, lengths: torch.Tensor, steps: int):
        """Greedy decoding for ``steps`` steps: ``(tokens (B, steps), weights (B, steps, S // 2) or None)``."""
        out, final, mask = self.encoder(frames, lengths)
        state = self.decoder.init_state(out, final, mask)
        prev = torch.full((frames.shape[0],), BOS, dtype=torch.long)
        tokens, weights = [], []
        for _ in range(steps):
            logits, state, w = self.decoder.step(prev, state, out, mask)  # (B, V), state, (B, S/2) or None
            prev = logits.argmax(-1)
            tokens.append(prev)
            weights.append(w)
        ws = None if weights[0] is None else torch.stack(weights, 1)
        return torch.stack(tokens, 1), ws
