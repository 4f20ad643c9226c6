"""Exercise 4: one step of an attention decoder (practises chapter 5, attention in seq2seq).

Tasks:
    additive_context(query, keys, values, mask, W_q, W_k, v)        -> (context, weights)
        additive scores v^T tanh(W_q q + W_k k) -> masked softmax -> weighted sum of values
    bahdanau_step(prev_emb, s_prev, enc_states, src_mask, W_q, W_k, v, W_ih, W_hh, b_ih, b_hh)
                                                                    -> (s, weights, context)
        Bahdanau's decoder step: the previous state s_{t-1} is the query, the context c_t is
        GRU input: s_t = GRU([embed(y_{t-1}); c_t], s_{t-1})

The references are built from the library pieces that ``seq2seq.BahdanauDecoder.step`` uses
(``AdditiveScore``, ``masked_softmax``, ``context_vector``, ``GRUInputCombine``), and a test
checks that ``bahdanau_step_reference`` equals ``BahdanauDecoder.step`` for the same weights.

Dimension glossary::

    B  batch    S  source length    L  queries (1 per step in a decoder)
    E  embedding width of the previous token    D  decoder state width    K  encoder state width
    h  hidden width of the additive score       GRU weights: W_ih (3D, E + K), W_hh (3D, D),
                                                b_ih, b_hh (3D,), gate order (r, z, n) as torch's
"""

from __future__ import annotations

import torch

from ..attention import context_vector
from ..combine import GRUInputCombine
from ..grading.tasks import Case, Exercise, Task, randn
from ..masking import masked_softmax, padding_mask
from ..scoring import AdditiveScore

_SHORTCUTS = ("attn_course.scoring.AdditiveScore.forward", "attn_course.masking.masked_softmax",
              "attn_course.masking.masked_softmax_unchecked",
              "attn_course.attention.scaled_dot_product_attention",
               "attn_course.attention.attention_weights_unchecked", "attn_course.seq2seq.BahdanauDecoder.step")
_GRU = ("torch.gru_cell", "torch.nn.GRUCell.forward", "torch.nn.GRU.forward",
        "attn_course.combine.GRUInputCombine.forward")


def additive_module(W_q: torch.Tensor, W_k: torch.Tensor, v: torch.Tensor) -> AdditiveScore:
    """An ``AdditiveScore`` holding ``W_q (h, d_q)``, ``W_k (h, d_k)`` and ``v (h,)``."""
    module = AdditiveScore(W_q.shape[1], W_k.shape[1], W_q.shape[0]).to(W_q.dtype)
    with torch.no_grad():
        module.W_q.weight.copy_(W_q)  # (h, d_q)
        module.W_k.weight.copy_(W_k)  # (h, d_k)
        module.v.weight.copy_(v[None])  # (1, h)
    return module


def gru_combine(W_ih: torch.Tensor, W_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor,
                input_dim: int) -> GRUInputCombine:
    """A ``GRUInputCombine`` whose cell holds the given weights (input = [prev_emb; context])."""
    D = W_hh.shape[1]
    combine = GRUInputCombine(context_dim=W_ih.shape[1] - input_dim, input_dim=input_dim, state_dim=D).to(W_ih.dtype)
    with torch.no_grad():
        combine.cell.weight_ih.copy_(W_ih)  # (3D, E + K)
        combine.cell.weight_hh.copy_(W_hh)  # (3D, D)
        combine.cell.bias_ih.copy_(b_ih)  # (3D,)
        combine.cell.bias_hh.copy_(b_hh)  # (3D,)
    return combine


def additive_context_reference(query, keys, values, mask, W_q, W_k, v):
    with torch.no_grad():
        scores = additive_module(W_q, W_k, v)(query, keys)  # (..., L, S)
    weights = masked_softmax(scores, mask)  # (..., L, S)
    return context_vector(weights, values), weights  # (..., L, d_v), (..., L, S)


def bahdanau_step_reference(prev_emb, s_prev, enc_states, src_mask, W_q, W_k, v, W_ih, W_hh, b_ih, b_hh):
    """``BahdanauDecoder.step`` without the embedding and output layers, from plain tensors."""
    with torch.no_grad():
        scores = additive_module(W_q, W_k, v)(s_prev.unsqueeze(1), enc_states)  # (B, 1, D), (B, S, K) -> (B, 1, S)
        weights = masked_softmax(scores, src_mask.unsqueeze(1))  # (B, 1, S); mask (B, 1, S)
        context = context_vector(weights, enc_states).squeeze(1)  # (B, 1, K) -> (B, K)
        s = gru_combine(W_ih, W_hh, b_ih, b_hh, prev_emb.shape[-1])(context, s_prev, prev_emb)  # (B, D)
    return s, weights.squeeze(1), context  # (B, D), (B, S), (B, K)


# --------------------------------------------------------------------------- cases


def _lengths_mask(lengths: list[int], S: int) -> torch.Tensor:
    return padding_mask(lengths, S)[:, 0, 0]  # (B, 1, 1, S) -> (B, S)


def _additive_context_cases(g: torch.Generator) -> list[Case]:
    def weights(h: int, d_q: int, d_k: int) -> tuple[torch.Tensor, ...]:
        return randn(g, h, d_q, scale=d_q ** -0.5), randn(g, h, d_k, scale=d_k ** -0.5), randn(g, h)

    dead = torch.ones(2, 3, 5, dtype=torch.bool)
    dead[1, 2] = False
    return [
        Case("one query, nothing masked", (randn(g, 1, 4), randn(g, 6, 4), randn(g, 6, 3),
                                           torch.ones(1, 6, dtype=torch.bool), *weights(5, 4, 4)),
             hint="Nothing is masked here: only the scores (v, tanh, the two projections) can differ."),
        Case("batched, padding mask (B, 1, S)", (randn(g, 2, 3, 4), randn(g, 2, 5, 6), randn(g, 2, 5, 6),
                                                 padding_mask([5, 2])[:, 0], *weights(7, 4, 6)),
             hint="The mask (B, 1, S) broadcasts over the L queries; padded keys get weight exactly 0."),
        Case("values differ from keys", (randn(g, 2, 2, 3), randn(g, 2, 4, 5), randn(g, 2, 4, 2),
                                         torch.ones(2, 2, 4, dtype=torch.bool), *weights(4, 3, 5)),
             hint="The weights come from (query, keys); the context is the weighted sum of VALUES."),
        Case("a query that may attend to nothing", (randn(g, 2, 3, 4), randn(g, 2, 5, 4), randn(g, 2, 5, 3), dead,
                                                    *weights(6, 4, 4)),
             hint="A fully masked row gets all-zero weights (not NaN), so a zero context."),
        Case("large scores", _large_score_args(g),
             hint="v is scaled so that the first query scores 300 against the first key: exp(300) overflows "
                  "float32."),
    ]


def _large_score_args(g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Additive-context inputs whose score of query 0 against key 0 (allowed) is 300, whatever the draw."""
    query, keys, values = randn(g, 1, 2, 4), randn(g, 1, 6, 4), randn(g, 1, 6, 2)
    W_q, W_k = randn(g, 3, 4), randn(g, 3, 4)
    hidden = torch.tanh(query[0, 0] @ W_q.T + keys[0, 0] @ W_k.T)  # (h,): the pair (query 0, key 0)
    v = 300.0 * hidden / hidden.dot(hidden)  # v . hidden = 300
    return query, keys, values, _lengths_mask([4], 6)[:, None], W_q, W_k, v


def _step_args(g: torch.Generator, B: int, S: int, E: int, D: int, K: int, h: int, lengths: list[int],
               pad_value: float = 0.0) -> tuple[torch.Tensor, ...]:
    enc = randn(g, B, S, K)
    mask = _lengths_mask(lengths, S)  # (B, S)
    enc = torch.where(mask[..., None], enc, torch.full_like(enc, pad_value))  # (B, S, K)
    return (
        randn(g, B, E),  # prev_emb
        randn(g, B, D, scale=0.5),  # s_prev
        enc,
        mask,
        randn(g, h, D, scale=D ** -0.5),  # W_q
        randn(g, h, K, scale=K ** -0.5),  # W_k
        randn(g, h),  # v
        randn(g, 3 * D, E + K, scale=(E + K) ** -0.5),  # W_ih
        randn(g, 3 * D, D, scale=D ** -0.5),  # W_hh
        randn(g, 3 * D, scale=0.1),  # b_ih
        randn(g, 3 * D, scale=0.1),  # b_hh
    )


def _bahdanau_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("one sequence, no padding", _step_args(g, 1, 5, 3, 4, 4, 6, [5]),
             hint="No padding: the attention, the order of the GRU's input or its gates are what differ."),
        Case("a batch with padding", _step_args(g, 3, 6, 4, 5, 5, 7, [6, 2, 4]),
             hint="The source mask (B, S) must reach the softmax: padded positions get weight 0."),
        Case("padding that holds garbage", _step_args(g, 2, 5, 3, 4, 4, 4, [3, 5], pad_value=50.0),
             hint="Padding must get zero weight whatever the encoder put there."),
        Case("a source of length 1", _step_args(g, 2, 4, 2, 3, 3, 5, [1, 4]),
             hint="With one real source token its weight is 1 and the context is that token's state."),
        Case("encoder width != decoder width", _step_args(g, 2, 4, 3, 4, 6, 5, [4, 3]),
             hint="The encoder states are K = 6 wide, the decoder state D = 4: W_q (h, D) belongs to s_prev, "
                  "W_k (h, K) to the encoder states, and the GRU input is E + K = 9 wide."),
    ]


EXERCISE = Exercise(
    id="ex04_decoder_step",
    title="One step of an attention decoder",
    tasks=(
        Task("additive_context", additive_context_reference, _additive_context_cases, points=2,
             arg_names=("query", "keys", "values", "mask", "W_q", "W_k", "v"), forbidden=_SHORTCUTS,
             hint="The three steps of exercise 2 (additive scores, a masked softmax, a weighted sum), written "
                  "again in this notebook: which tensor do the weights average, the keys or the values?"),
        Task("bahdanau_step", bahdanau_step_reference, _bahdanau_cases, points=3,
             arg_names=("prev_emb", "s_prev", "enc_states", "src_mask", "W_q", "W_k", "v",
                        "W_ih", "W_hh", "b_ih", "b_hh"),
             forbidden=_SHORTCUTS + _GRU,
             hint="Two halves. Attention first: which state is the query at step t, before the GRU has "
                  "run, and how does a (B, D) query become one query of additive_context? Then one GRU step "
                  "written from the chapter's equations: cut W_ih, W_hh and the biases into their three "
                  "gate blocks (torch's order), and check which gate multiplies which term."),
    ),
)
