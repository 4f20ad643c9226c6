"""Exercise 4 (one attention-decoder step): the references match the library, and plausible
wrong submissions lose their points with a message that says where to look.

Whole notebooks (the solution source: full marks; the learner notebook: 0) are graded in
tests/grading/test_grading.py.
"""

import torch

from attn_course.exercises.ex04_decoder_step import (
    EXERCISE,
    additive_context_reference,
    additive_module,
    bahdanau_step_reference,
)
from attn_course.masking import masked_softmax
from attn_course.seq2seq import BahdanauDecoder, Seq2SeqConfig


def test_bahdanau_reference_equals_the_decoder_step():
    torch.manual_seed(0)
    dec = BahdanauDecoder(Seq2SeqConfig(vocab_size=9, embed_dim=5, hidden_dim=6), attn_hidden=7).eval()
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)  # (B, S)
    enc = torch.randn(3, 4, 6) * mask[..., None]  # (B, S, D), zero at padding like the encoder's
    prev, s0 = torch.tensor([1, 4, 5]), torch.randn(3, 6)
    with torch.no_grad():
        logits, s, weights = dec.step(prev, s0, enc, mask)
        emb, cell = dec.embedding(prev), dec.combine.cell
        s_ref, w_ref, context = bahdanau_step_reference(
            emb, s0, enc, mask, dec.score.W_q.weight, dec.score.W_k.weight, dec.score.v.weight[0],
            cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        assert torch.allclose(s_ref, s, atol=1e-6) and torch.allclose(w_ref, weights, atol=1e-6)
        # the decoder predicts from [s; c; emb]: the reference's context gives its logits
        assert torch.allclose(dec.out(torch.cat([s_ref, context, emb], dim=-1)), logits, atol=1e-6)


def test_additive_context_reference_is_score_softmax_sum():
    g = torch.Generator().manual_seed(1)
    q, k, vals = torch.randn(2, 3, 4, generator=g), torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 2, generator=g)
    W_q, W_k, v = torch.randn(7, 4, generator=g), torch.randn(7, 6, generator=g), torch.randn(7, generator=g)
    mask = torch.rand(2, 3, 5, generator=g) < 0.6
    context, weights = additive_context_reference(q, k, vals, mask, W_q, W_k, v)
    scores = torch.tanh((q @ W_q.T)[..., :, None, :] + (k @ W_k.T)[..., None, :, :]) @ v  # (B, L, S)
    assert torch.allclose(weights, masked_softmax(scores, mask), atol=1e-6)
    assert torch.allclose(context, weights @ vals, atol=1e-6)
    assert torch.allclose(additive_module(W_q, W_k, v)(q, k), scores, atol=1e-5)


def _additive(query, keys, values, mask, W_q, W_k, v, use_mask=True):
    scores = torch.tanh((query @ W_q.T).unsqueeze(-2) + (keys @ W_k.T).unsqueeze(-3)) @ v
    if use_mask:
        scores = scores.masked_fill(~mask, -1e9)
    weights = torch.softmax(scores, dim=-1) * (mask if use_mask else 1)
    return weights @ values, weights


def _step(prev_emb, s_prev, enc, src_mask, W_q, W_k, v, W_ih, W_hh, b_ih, b_hh, order="emb_first", use_mask=True):
    c, w = _additive(s_prev[:, None], enc, enc, src_mask[:, None], W_q, W_k, v, use_mask)
    c, w = c[:, 0], w[:, 0]
    x = torch.cat([prev_emb, c] if order == "emb_first" else [c, prev_emb], dim=-1)
    i_r, i_z, i_n = (x @ W_ih.T + b_ih).chunk(3, -1)
    h_r, h_z, h_n = (s_prev @ W_hh.T + b_hh).chunk(3, -1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * s_prev, w, c


def test_a_careful_submission_passes(check):
    assert check("bahdanau_step", _step, quiet=True).passed


def test_context_first_in_the_gru_input_fails_on_values(check):
    def bahdanau_step(*args):
        return _step(*args, order="context_first")

    result = check("bahdanau_step", bahdanau_step, quiet=True)
    assert result.points == 0 and result.status == "failed"
    assert "result[0] has wrong values" in result.message and "case 'one sequence, no padding'" in result.message
    assert "order of the GRU's input" in result.message  # the case's diagnosis, not the task's hint
    assert EXERCISE.task("bahdanau_step").hint not in result.message


def test_forgotten_source_mask_is_caught_on_the_padded_case(check):
    def bahdanau_step(*args):
        return _step(*args, use_mask=False)

    result = check("bahdanau_step", bahdanau_step, quiet=True)
    assert result.points == 0
    assert "a batch with padding" in result.message and "source mask" in result.message


def test_library_gru_cell_is_refused(check):
    def bahdanau_step(prev_emb, s_prev, enc, src_mask, W_q, W_k, v, W_ih, W_hh, b_ih, b_hh):
        c, w = _additive(s_prev[:, None], enc, enc, src_mask[:, None], W_q, W_k, v)
        cell = torch.nn.GRUCell(W_ih.shape[1], W_hh.shape[1])
        with torch.no_grad():
            for p, val in zip(cell.parameters(), (W_ih, W_hh, b_ih, b_hh)):
                p.copy_(val)
        return cell(torch.cat([prev_emb, c[:, 0]], -1), s_prev), w[:, 0], c[:, 0]

    result = check("bahdanau_step", bahdanau_step, quiet=True)
    assert result.points == 0 and "calls `torch.nn.GRUCell.forward`" in result.message


def test_nan_on_a_fully_masked_query_gets_the_hint(check):
    def additive_context(query, keys, values, mask, W_q, W_k, v):
        scores = torch.tanh((query @ W_q.T).unsqueeze(-2) + (keys @ W_k.T).unsqueeze(-3)) @ v
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        return weights @ values, weights

    result = check("additive_context", additive_context, quiet=True)
    assert result.points == 0
    assert "a query that may attend to nothing" in result.message and "NaN" in result.message
    assert "not NaN" in result.message  # the case's hint
