"""Unit tests for attn_course.seq2seq (and the plots that draw its results). Each runs in about a second."""

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attn_course.labs.reversal import LengthAccuracy, ReverseTask, evaluate_by_length, train_seq2seq
from attn_course.labs.training import TrainHistory
from attn_course.plotting import (
    plot_accuracy_by_length,
    plot_accuracy_by_position,
    plot_losses,
)
from attn_course.seq2seq import (
    EOS,
    PAD,
    Decoder,
    Encoder,
    FixedContextDecoder,
    Seq2Seq,
    Seq2SeqConfig,
    lengths_to_mask,
    sequence_loss,
)

TASK = ReverseTask(n_symbols=6, min_len=2, max_len=7)


def small_model(seed: int = 0, hidden_dim: int = 16) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(Seq2SeqConfig(vocab_size=TASK.vocab_size, embed_dim=8, hidden_dim=hidden_dim))


def batch(seed: int = 0, n: int = 5, length=None):
    return TASK.make_batch(n, generator=torch.Generator().manual_seed(seed), length=length)


# --- an "oracle" decoder: reads the source through encoder_outputs, as an attention decoder would ---


class OneHotEncoder(nn.Module):
    """Stands in for the encoder: its outputs are the one-hot source tokens (D == V)."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, src, src_lengths):
        outputs = F.one_hot(src, self.vocab_size).float()  # (B, S, V)
        return outputs, outputs[:, 0]


class OracleReverseDecoder(Decoder):
    """Attends to source position length-1-t at step t and copies that token; then EOS."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size
        self.dummy = nn.Parameter(torch.zeros(()))  # so that the model has a parameter

    def init_state(self, encoder_outputs, encoder_final, src_mask):
        return 0

    def step(self, prev_token, state, encoder_outputs, src_mask):
        t = state
        B, S, _ = encoder_outputs.shape
        lengths = src_mask.sum(dim=1)  # (B,)
        src_pos = (lengths - 1 - t).clamp(min=0)  # (B,)
        weights = F.one_hot(src_pos, S).float() * src_mask  # (B, S)
        token = encoder_outputs[torch.arange(B), src_pos].argmax(dim=-1)  # (B,)
        token = torch.where(t >= lengths, torch.full_like(token, EOS), token)  # (B,)
        logits = F.one_hot(token, self.vocab_size).float() * 10 + self.dummy  # (B, V)
        return logits, t + 1, weights


def oracle_model() -> Seq2Seq:
    cfg = Seq2SeqConfig(vocab_size=TASK.vocab_size, embed_dim=4, hidden_dim=TASK.vocab_size)
    model = Seq2Seq(cfg, decoder=OracleReverseDecoder(TASK.vocab_size))
    model.encoder = OneHotEncoder(TASK.vocab_size)
    return model


# --- shapes -------------------------------------------------------------------------------------


def test_encoder_shapes_and_final_is_last_real_state():
    model = small_model()
    b = batch()
    outputs, final = model.encoder(b.src, b.src_lengths)
    B, S = b.src.shape
    assert outputs.shape == (B, S, 16) and final.shape == (B, 16)
    for i in range(B):
        n = int(b.src_lengths[i])
        alone_out, alone_final = model.encoder(b.src[i : i + 1, :n], b.src_lengths[i : i + 1])
        torch.testing.assert_close(final[i], alone_final[0])
        torch.testing.assert_close(outputs[i, :n], alone_out[0])
        assert (outputs[i, n:] == 0).all()


def test_forward_logits_shape_and_padding_invariance():
    model = small_model()
    b = batch(n=4)
    logits = model(b.src, b.src_lengths, b.tgt_in)
    assert logits.shape == (4, b.tgt_in.shape[1], TASK.vocab_size)
    # More padding on the source must not change anything.
    pad = torch.full((4, 3), PAD, dtype=torch.long)
    logits2 = model(torch.cat([b.src, pad], dim=1), b.src_lengths, b.tgt_in)
    torch.testing.assert_close(logits, logits2)
    out, attn = model(b.src, b.src_lengths, b.tgt_in, return_attention=True)
    assert attn is None
    torch.testing.assert_close(out, logits)


def test_fixed_context_fast_forward_equals_step_loop():
    model = small_model(seed=1)
    b = batch(seed=1, n=6)
    enc_out, mask, state = model.encode(b.src, b.src_lengths)
    fast, _ = model.decoder(b.tgt_in, state, enc_out, mask)
    slow, w = Decoder.forward(model.decoder, b.tgt_in, state, enc_out, mask)
    assert w is None
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_fixed_context_decoder_ignores_encoder_outputs():
    """Its only view of the source is the final vector: scrambling the other states changes nothing."""
    model = small_model(seed=2)
    b = batch(seed=2, n=3)
    enc_out, mask, state = model.encode(b.src, b.src_lengths)
    a, _ = model.decoder(b.tgt_in, state, enc_out, mask)
    c, _ = model.decoder(b.tgt_in, state, torch.randn_like(enc_out), mask)
    torch.testing.assert_close(a, c)


def test_lengths_to_mask():
    m = lengths_to_mask(torch.tensor([1, 3]), 4)
    assert m.tolist() == [[True, False, False, False], [True, True, True, False]]


# --- greedy decoding ------------------------------------------------------------------------------


def test_generate_shape_pad_after_eos_and_determinism():
    model = small_model()
    b = batch(n=8)
    S = b.src.shape[1]
    out = model.generate(b.src, b.src_lengths)
    assert out.dtype == torch.long and out.shape[0] == 8 and 1 <= out.shape[1] <= S + 1
    for row in out.tolist():
        if EOS in row:
            k = row.index(EOS)
            assert all(tok == PAD for tok in row[k + 1 :])
    assert torch.equal(out, model.generate(b.src, b.src_lengths))
    assert model.generate(b.src, b.src_lengths, max_len=2).shape[1] <= 2


def test_generate_stops_when_all_rows_have_eos():
    model = oracle_model()
    b = batch(n=4, length=3)
    out, attn = model.generate(b.src, b.src_lengths, max_len=50, return_attention=True)
    assert out.shape == (4, 4)  # 3 tokens + EOS, not 50
    assert torch.equal(out, b.tgt_out)
    assert attn.shape == (4, 4, 3)


def test_pluggable_decoder_with_attention_weights():
    """A decoder that reads encoder_outputs (like attention) works in forward, generate and evaluate."""
    model = oracle_model()
    b = batch(n=5)
    logits, attn = model(b.src, b.src_lengths, b.tgt_in, return_attention=True)
    assert logits.shape == (*b.tgt_in.shape, TASK.vocab_size)
    assert attn.shape == (5, b.tgt_in.shape[1], b.src.shape[1])
    assert torch.equal(logits.argmax(-1)[b.tgt_out != PAD], b.tgt_out[b.tgt_out != PAD])
    res = evaluate_by_length(model, TASK, [2, 5, 9], 10, torch.Generator().manual_seed(0))
    assert res.token == {2: 1.0, 5: 1.0, 9: 1.0}
    assert res.sequence == {2: 1.0, 5: 1.0, 9: 1.0}


# --- evaluation -----------------------------------------------------------------------------------


def test_evaluate_by_length_keys_ranges_and_determinism():
    model = small_model()
    model.train()
    lengths = [2, 4, 9]
    res = evaluate_by_length(model, TASK, lengths, 16, torch.Generator().manual_seed(3))
    assert isinstance(res, LengthAccuracy)
    assert list(res.token) == lengths and list(res.sequence) == lengths and list(res.by_position) == lengths
    for n in lengths:
        assert 0.0 <= res.sequence[n] <= res.token[n] <= 1.0
        assert len(res.by_position[n]) == n
        assert all(0.0 <= a <= 1.0 for a in res.by_position[n])
    assert model.training  # training mode restored
    again = evaluate_by_length(model, TASK, lengths, 16, torch.Generator().manual_seed(3))
    assert again == res
    tf = evaluate_by_length(model, TASK, lengths, 16, torch.Generator().manual_seed(3), teacher_forcing=True)
    assert list(tf.token) == lengths


def test_evaluate_by_length_validation():
    model = small_model()
    with pytest.raises(ValueError, match="lengths"):
        evaluate_by_length(model, TASK, [], 4)
    with pytest.raises(ValueError, match="lengths"):
        evaluate_by_length(model, TASK, [3, 0], 4)
    with pytest.raises(ValueError, match="n_per_length"):
        evaluate_by_length(model, TASK, [3], 0)
    with pytest.raises(TypeError, match="model"):
        evaluate_by_length(object(), TASK, [3], 4)


# --- loss and training ----------------------------------------------------------------------------


def test_sequence_loss_ignores_pad():
    logits = torch.randn(2, 3, 5)
    tgt = torch.tensor([[3, 4, EOS], [3, EOS, PAD]])
    expected = F.cross_entropy(logits.reshape(-1, 5)[:5], tgt.reshape(-1)[:5])
    torch.testing.assert_close(sequence_loss(logits, tgt), expected)
    with pytest.raises(ValueError, match=r"tgt_out has shape \(2, 2\); expected \(B, T\) = \(2, 3\)"):
        sequence_loss(logits, tgt[:, :2])


def test_train_smoke_is_deterministic():
    def run():
        model = small_model(seed=4)
        hist = train_seq2seq(
            model, TASK, 5, batch_size=8, generator=torch.Generator().manual_seed(0), progress=False
        )
        return model, hist

    (m1, h1), (m2, h2) = run(), run()
    assert isinstance(h1, TrainHistory) and len(h1.losses) == 5 and h1.seconds > 0
    assert h1.losses == h2.losses
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)
    assert not m1.training  # left in eval mode


def test_train_with_progress_bar_runs():
    model = small_model()
    hist = train_seq2seq(
        model, TASK, 3, batch_size=4, generator=torch.Generator().manual_seed(0), progress=True
    )
    assert len(hist.losses) == 3


def test_tiny_model_overfits_a_tiny_fixed_batch():
    model = small_model(seed=5, hidden_dim=32)
    b = batch(seed=5, n=8, length=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = sequence_loss(model(b.src, b.src_lengths, b.tgt_in), b.tgt_out)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    assert torch.equal(model.generate(b.src, b.src_lengths), b.tgt_out)


def test_train_validation():
    model = small_model()
    with pytest.raises(ValueError, match="steps"):
        train_seq2seq(model, TASK, 0)
    with pytest.raises(ValueError, match="vocab_size"):
        train_seq2seq(model, ReverseTask(n_symbols=50), 1)
    with pytest.raises(TypeError, match="task"):
        train_seq2seq(model, "reverse", 1)


# --- input validation -----------------------------------------------------------------------------


def test_config_validation():
    with pytest.raises(ValueError, match="hidden_dim"):
        Seq2SeqConfig(hidden_dim=0)
    with pytest.raises(ValueError, match="vocab_size"):
        Seq2SeqConfig(vocab_size=2)
    with pytest.raises(TypeError, match="config"):
        Seq2Seq({"vocab_size": 9})
    with pytest.raises(TypeError, match="decoder"):
        Seq2Seq(Seq2SeqConfig(), decoder=nn.Linear(2, 2))


def test_forward_validation_messages():
    model = small_model()
    b = batch(n=3)
    with pytest.raises(ValueError, match=r"src has shape \(\d+,\); expected \(B, S\)"):
        model(b.src[0], b.src_lengths, b.tgt_in)
    with pytest.raises(ValueError, match=r"tgt_in has shape \(2, \d+\); expected \(B, T\) with B = 3"):
        model(b.src, b.src_lengths, b.tgt_in[:2])
    with pytest.raises(ValueError, match=r"src_lengths has shape \(2,\); expected \(B,\)"):
        model(b.src, b.src_lengths[:2], b.tgt_in)
    with pytest.raises(TypeError, match="tgt_in must hold token ids"):
        model(b.src, b.src_lengths, b.tgt_in.float())
    with pytest.raises(ValueError, match="src holds token ids outside"):
        model(b.src + 100, b.src_lengths, b.tgt_in)
    with pytest.raises(ValueError, match="max_len"):
        model.generate(b.src, b.src_lengths, max_len=0)
    with pytest.raises(TypeError, match="src must be a torch.Tensor"):
        model.generate([[3, 4]], torch.tensor([2]))


def test_encoder_is_a_module():
    assert isinstance(Encoder(Seq2SeqConfig()), nn.Module)
    assert isinstance(FixedContextDecoder(Seq2SeqConfig()), Decoder)


# --- plots ----------------------------------------------------------------------------------------


def test_plots_draw_labelled_curves():
    fig, axes = plt.subplots(1, 3)
    ax = plot_accuracy_by_length(
        {"fixed context": {4: 1.0, 8: 0.5}, "attention": {4: 1.0, 8: 0.9}},
        ax=axes[0],
        chance=0.1,
        train_range=(4, 8),
    )
    assert ax is axes[0] and len(ax.get_lines()) == 3  # two curves + chance
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "fixed context" in labels and "attention" in labels
    plot_accuracy_by_position({"greedy": [1.0, 0.5, 0.2]}, ax=axes[1])
    plot_losses({"fixed context": [2.0, 1.0]}, ax=axes[2])
    plt.close(fig)
    with pytest.raises(TypeError, match="results"):
        plot_accuracy_by_length({})
