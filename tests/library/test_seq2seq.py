"""Unit tests for attn_course.seq2seq (and the plots that draw its results): the fixed-context model,
then the attention decoders of chapter 05 and their alignment measure. Each runs in about a second."""

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attn_course.combine import GRUInputCombine, LuongCombine
from attn_course.labs.reversal import (
    CopyTask,
    LengthAccuracy,
    ReverseTask,
    alignment_accuracy,
    alignment_offsets,
    evaluate_by_length,
    train_seq2seq,
    true_alignment,
)
from attn_course.labs.training import TrainHistory
from attn_course.plotting import (
    plot_accuracy_by_length,
    plot_accuracy_by_position,
    plot_attention_heatmap,
    plot_losses,
)
from attn_course.scoring import AdditiveScore, GeneralScore
from attn_course.seq2seq import (
    EOS,
    PAD,
    BahdanauDecoder,
    Decoder,
    Encoder,
    FixedContextDecoder,
    LuongDecoder,
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


# === the attention decoders (chapter 05) ==========================================================

DECODERS = {
    "bahdanau": lambda cfg: BahdanauDecoder(cfg, attn_hidden=12),
    "luong": LuongDecoder,
}


def attention_model(kind: str, seed: int = 0, hidden_dim: int = 16) -> Seq2Seq:
    torch.manual_seed(seed)
    cfg = Seq2SeqConfig(vocab_size=TASK.vocab_size, embed_dim=8, hidden_dim=hidden_dim)
    return Seq2Seq(cfg, decoder=DECODERS[kind](cfg)).eval()


def step_loop(model: Seq2Seq, b):
    """The reference: call decoder.step once per target position (what Decoder.forward does)."""
    enc_out, mask, state = model.encode(b.src, b.src_lengths)
    logits, weights = [], []
    for t in range(b.tgt_in.shape[1]):
        step_logits, state, w = model.decoder.step(b.tgt_in[:, t], state, enc_out, mask)
        logits.append(step_logits)
        weights.append(w)
    return torch.stack(logits, dim=1), torch.stack(weights, dim=1)  # (B, T, V), (B, T, S)


# --- the decoders -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(DECODERS))
def test_attention_shapes_and_rows_sum_to_one_on_real_tokens(kind):
    model = attention_model(kind)
    b = batch(n=6)
    assert b.src_lengths.min() < b.src.shape[1]  # some rows are padded
    logits, attn = model(b.src, b.src_lengths, b.tgt_in, return_attention=True)
    B, S = b.src.shape
    T = b.tgt_in.shape[1]
    assert logits.shape == (B, T, TASK.vocab_size)
    assert attn.shape == (B, T, S)
    mask = b.src_mask  # (B, S)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(B, T))
    assert (attn.masked_select(~mask.unsqueeze(1).expand(B, T, S)) == 0).all()  # exactly 0 on padding
    out, gen_attn = model.generate(b.src, b.src_lengths, return_attention=True)
    assert gen_attn.shape == (B, out.shape[1], S)
    assert (gen_attn.masked_select(~mask.unsqueeze(1).expand_as(gen_attn)) == 0).all()


@pytest.mark.parametrize("kind", list(DECODERS))
def test_forward_equals_step_loop(kind):
    model = attention_model(kind, seed=1)
    b = batch(seed=1, n=6)
    fast, fast_attn = model(b.src, b.src_lengths, b.tgt_in, return_attention=True)
    slow, slow_attn = step_loop(model, b)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_attn, slow_attn, atol=1e-5, rtol=1e-5)
    # and against the interface's generic loop
    enc_out, mask, state = model.encode(b.src, b.src_lengths)
    generic, generic_attn = Decoder.forward(model.decoder, b.tgt_in, state, enc_out, mask)
    torch.testing.assert_close(fast, generic, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_attn, generic_attn, atol=1e-5, rtol=1e-5)


def test_bahdanau_forward_projects_the_keys_once_per_sequence():
    """W_k h_j does not depend on the step: teacher forcing projects the keys once, not T times."""
    model = attention_model("bahdanau")
    b = batch(seed=2, n=4)
    calls = []
    hook = model.decoder.score.W_k.register_forward_hook(lambda *a: calls.append(1))
    try:
        model(b.src, b.src_lengths, b.tgt_in)
    finally:
        hook.remove()
    assert b.tgt_in.shape[1] > 1 and len(calls) == 1


def test_luong_forward_is_one_gru_call_not_a_loop(monkeypatch):
    """The fast path must not fall back on step()."""
    model = attention_model("luong")
    b = batch()

    def boom(*args, **kwargs):
        raise AssertionError("LuongDecoder.forward called step()")

    monkeypatch.setattr(model.decoder, "step", boom)
    model(b.src, b.src_lengths, b.tgt_in)


@pytest.mark.parametrize("kind", list(DECODERS))
def test_padding_of_the_source_changes_nothing(kind):
    model = attention_model(kind, seed=2)
    b = batch(seed=2, n=4)
    logits, attn = model(b.src, b.src_lengths, b.tgt_in, return_attention=True)
    pad = torch.full((4, 3), PAD, dtype=torch.long)
    logits2, attn2 = model(torch.cat([b.src, pad], dim=1), b.src_lengths, b.tgt_in, return_attention=True)
    torch.testing.assert_close(logits, logits2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attn, attn2[:, :, : b.src.shape[1]], atol=1e-6, rtol=1e-5)
    assert (attn2[:, :, b.src.shape[1] :] == 0).all()


@pytest.mark.parametrize("kind", list(DECODERS))
def test_attention_decoders_read_the_encoder_states(kind):
    """Unlike the fixed-context decoder, scrambling the non-final encoder states changes the output."""
    model = attention_model(kind, seed=3)
    b = batch(seed=3, n=3)
    enc_out, mask, state = model.encode(b.src, b.src_lengths)
    a, _ = model.decoder(b.tgt_in, state, enc_out, mask)
    c, _ = model.decoder(b.tgt_in, state, torch.randn_like(enc_out), mask)
    assert not torch.allclose(a, c)


def test_decoders_use_the_package_building_blocks():
    cfg = Seq2SeqConfig(vocab_size=TASK.vocab_size, embed_dim=8, hidden_dim=16)
    bahdanau = BahdanauDecoder(cfg, attn_hidden=12)
    assert isinstance(bahdanau.score, AdditiveScore) and bahdanau.score.hidden_dim == 12
    assert isinstance(bahdanau.combine, GRUInputCombine)
    assert BahdanauDecoder(cfg).score.hidden_dim == 16  # default: D
    luong = LuongDecoder(cfg)
    assert isinstance(luong.score, GeneralScore) and isinstance(luong.combine, LuongCombine)
    assert isinstance(bahdanau, Decoder) and isinstance(luong, Decoder)


@pytest.mark.parametrize("kind", list(DECODERS))
def test_tiny_attention_model_overfits_a_tiny_fixed_batch(kind):
    model = attention_model(kind, seed=5, hidden_dim=32).train()
    b = batch(seed=5, n=8, length=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(120):
        loss = sequence_loss(model(b.src, b.src_lengths, b.tgt_in), b.tgt_out)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert loss.item() < 0.05
    assert torch.equal(model.generate(b.src, b.src_lengths), b.tgt_out)
    res = evaluate_by_length(model, TASK, [5], 8, torch.Generator().manual_seed(0))
    assert 0.0 <= res.token[5] <= 1.0


def test_decoder_validation():
    cfg = Seq2SeqConfig(vocab_size=TASK.vocab_size, embed_dim=8, hidden_dim=16)
    with pytest.raises(ValueError, match="attn_hidden"):
        BahdanauDecoder(cfg, attn_hidden=0)
    with pytest.raises(ValueError, match="attn_hidden"):
        BahdanauDecoder(cfg, attn_hidden=2.5)
    with pytest.raises(TypeError, match="config"):
        BahdanauDecoder({"hidden_dim": 16})
    with pytest.raises(TypeError, match="config"):
        LuongDecoder(None)


# --- alignment -------------------------------------------------------------------------------------


def one_hot_attention(positions, S):
    """(B, T) source positions -> (B, T, S) one-hot weights (a -1 position puts its weight on column 0)."""
    positions = torch.as_tensor(positions)
    return torch.nn.functional.one_hot(positions.clamp(min=0), S).float()  # (B, T, S)


def test_true_alignment_reverse_and_copy():
    lengths = torch.tensor([3, 1])
    assert true_alignment(lengths, 4).tolist() == [[2, 1, 0, -1], [0, -1, -1, -1]]
    assert true_alignment(lengths, 4, kind="copy").tolist() == [[0, 1, 2, -1], [0, -1, -1, -1]]
    assert true_alignment(lengths, 0).shape == (2, 0)


def test_alignment_accuracy_of_a_perfect_anti_diagonal_is_one():
    b = batch(seed=4, n=7)
    T, S = b.tgt_in.shape[1], b.src.shape[1]
    truth = true_alignment(b.src_lengths, T)  # (B, T)
    attn = one_hot_attention(truth, S) * b.src_mask.unsqueeze(1)  # (B, T, S), EOS rows arbitrary
    assert alignment_accuracy(attn, b.src_lengths, b.tgt_lengths) == 1.0
    assert alignment_accuracy(attn, b.src_lengths) == 1.0  # tgt_lengths default: all T
    offsets = alignment_offsets(attn, b.src_lengths, b.tgt_lengths)
    assert offsets.shape == (int(b.src_lengths.sum()),) and (offsets == 0).all()
    # The diagonal is the copy task's alignment, not reversal's.
    assert alignment_accuracy(attn, b.src_lengths, kind="copy") < 1.0


def test_alignment_accuracy_counts_hits_and_ignores_eos_and_padding():
    src_lengths = torch.tensor([3, 2])
    # row 0 (length 3): truth 2, 1, 0, (EOS); row 1 (length 2): truth 1, 0, (EOS), (pad)
    peaks = torch.tensor([[2, 2, 0, 1], [1, 1, 0, 0]])  # hits: 2 of 3, 1 of 2
    attn = one_hot_attention(peaks, 3)
    assert alignment_accuracy(attn, src_lengths) == pytest.approx(3 / 5)
    assert alignment_offsets(attn, src_lengths).tolist() == [0, 1, 0, 0, 1]
    assert alignment_accuracy(attn, src_lengths, tolerance=1) == 1.0
    # only the first output position of each row scored
    assert alignment_accuracy(attn, src_lengths, torch.tensor([1, 1])) == 1.0
    # a perfect one-position shift to the right (t >= 1) scores 0 exactly and 1 with tolerance
    shifted = one_hot_attention(torch.tensor([[2, 2, 1, 0]]), 3)
    assert alignment_offsets(shifted, torch.tensor([3])).tolist() == [0, 1, 1]
    assert alignment_accuracy(shifted, torch.tensor([3]), torch.tensor([3])) == pytest.approx(1 / 3)


def test_alignment_accuracy_copy_task():
    b = CopyTask(n_symbols=6, min_len=2, max_len=7).make_batch(5, generator=torch.Generator().manual_seed(0))
    T, S = b.tgt_in.shape[1], b.src.shape[1]
    attn = one_hot_attention(true_alignment(b.src_lengths, T, kind="copy"), S)
    assert alignment_accuracy(attn, b.src_lengths, b.tgt_lengths, kind="copy") == 1.0


def test_alignment_validation():
    attn = torch.rand(2, 4, 3)
    lengths = torch.tensor([3, 2])
    with pytest.raises(ValueError, match=r"attn has shape \(4, 3\); expected \(B, T, S\)"):
        alignment_accuracy(attn[0], lengths)
    with pytest.raises(TypeError, match="attn must be a floating-point tensor"):
        alignment_accuracy(attn.long(), lengths)
    with pytest.raises(ValueError, match=r"src_lengths has shape \(3,\); expected \(B,\) = \(2,\)"):
        alignment_accuracy(attn, torch.tensor([3, 2, 1]))
    with pytest.raises(ValueError, match=r"src_lengths must lie in \[1, S=3\]"):
        alignment_accuracy(attn, torch.tensor([4, 2]))
    with pytest.raises(ValueError, match=r"tgt_lengths must lie in \[0, T=4\]"):
        alignment_accuracy(attn, lengths, torch.tensor([5, 1]))
    with pytest.raises(ValueError, match=r"tgt_lengths has shape"):
        alignment_accuracy(attn, lengths, torch.tensor([1]))
    with pytest.raises(ValueError, match="nothing to score"):
        alignment_accuracy(attn, lengths, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="kind"):
        alignment_accuracy(attn, lengths, kind="sort")
    with pytest.raises(ValueError, match="tolerance"):
        alignment_accuracy(attn, lengths, tolerance=-1)
    with pytest.raises(TypeError, match="src_lengths must be an integer tensor"):
        true_alignment(torch.tensor([1.0]), 3)
    with pytest.raises(ValueError, match="tgt_len"):
        true_alignment(lengths, -1)


# --- the heatmap -----------------------------------------------------------------------------------


def test_plot_attention_heatmap_draws_labelled_image():
    weights = torch.softmax(torch.randn(4, 3), dim=-1)
    fig, ax = plt.subplots()
    out = plot_attention_heatmap(
        weights,
        ax=ax,
        src_labels=["a", "b", "c"],
        tgt_labels=["c", "b", "a", "EOS"],
        true_positions=[2, 1, 0, -1],
    )
    assert out is ax and ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    assert len(ax.get_images()) == 1 and ax.get_images()[0].get_array().shape == (4, 3)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == 3  # EOS row has none
    plt.close(fig)
    with pytest.raises(ValueError, match="weights has shape"):
        plot_attention_heatmap(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="src_labels has 2 entries; expected 3"):
        plot_attention_heatmap(weights, src_labels=["a", "b"])
    with pytest.raises(ValueError, match="true_positions"):
        plot_attention_heatmap(weights, true_positions=[0])
    plt.close("all")
