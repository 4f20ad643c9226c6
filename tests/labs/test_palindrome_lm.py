"""The palindrome corpus, masking, training and the evaluation helpers of attn_course.labs.palindrome_lm."""

import pytest
import torch

from attn_course.labs.palindrome_lm import (
    BOS,
    EOS,
    MASK,
    PAD,
    SEP,
    PalindromeCorpus,
    _pad_after_eos,
    answer_positions,
    attention_on_answers,
    blank_canvas,
    completion_exact_match,
    fill_blanks,
    mask_tokens,
    masked_token_accuracy,
    next_token_accuracy,
    sample_decoder,
    sample_encoder,
    train_masked_lm,
    train_next_token,
    valid_fraction,
)
from attn_course.transformer import TransformerConfig, TransformerDecoder, TransformerEncoder

CORPUS = PalindromeCorpus(num_symbols=10, min_half=3, max_half=6)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def config_for(corpus, **kw):
    return TransformerConfig(vocab_size=corpus.vocab_size, max_len=corpus.max_len, d_model=16, num_heads=2,
                             num_layers=1, d_ff=32, **kw)


# --------------------------------------------------------------------------- the corpus


def test_corpus_sizes():
    assert CORPUS.vocab_size == 15 and CORPUS.max_len == 15 and CORPUS.chance == 0.1
    assert CORPUS.itos[:5] == ["<pad>", "<mask>", "<bos>", "|", "<eos>"] and CORPUS.itos[5] == "a"
    with pytest.raises(ValueError, match="max_half must be an int >= 3"):
        PalindromeCorpus(min_half=3, max_half=2)
    with pytest.raises(ValueError, match="at most 26"):
        PalindromeCorpus(num_symbols=27)


def test_corpus_is_deterministic_and_valid():
    a, b, c = CORPUS.sample(200, gen(0)), CORPUS.sample(200, gen(0)), CORPUS.sample(200, gen(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (200, CORPUS.max_len) and a.dtype == torch.long
    assert valid_fraction(a, CORPUS) == 1.0
    halves = (a == SEP).int().argmax(-1) - 1  # (N,)
    assert set(halves.tolist()) == {3, 4, 5, 6}
    for row, n in zip(a, halves.tolist()):
        assert row[0] == BOS and row[2 * n + 2] == EOS and (row[2 * n + 3 :] == PAD).all()
        assert torch.equal(row[1 : n + 1], row[n + 2 : 2 * n + 2].flip(0))
    symbols = a[CORPUS.is_symbol(a)]
    assert set(symbols.tolist()) == set(range(5, 15))  # every symbol occurs


def test_encode_decode_round_trip():
    x = CORPUS.encode("c a f | f a c")
    assert x.shape == (1, CORPUS.max_len) and CORPUS.is_valid(x[0])
    assert CORPUS.decode(x[0]) == "c a f | f a c"
    prompt = CORPUS.encode("c a f |")
    assert prompt.tolist() == [[BOS, 7, 5, 10, SEP]]
    assert CORPUS.decode(CORPUS.encode("c _ f | f a c")[0]) == "c _ f | f a c"
    with pytest.raises(ValueError, match=r"unknown tokens \['z'\]"):
        CORPUS.encode("z |")


@pytest.mark.parametrize(
    "text, valid",
    [("a b c | c b a", True), ("a b c | c b b", False), ("a b | b a", False), ("a b c c b a", False),
     ("_ b c | c b a", False), ("a b c d e f g | g f e d c b a", True)],
)
def test_is_valid(text, valid):
    corpus = PalindromeCorpus(max_half=7)
    assert corpus.is_valid(corpus.encode(text)[0]) == valid


def test_is_valid_needs_eos_and_a_half_length_in_range():
    long = PalindromeCorpus(max_half=7).encode("a b c d e f g | g f e d c b a")[0]
    assert not CORPUS.is_valid(long)  # n = 7 > max_half = 6
    assert not CORPUS.is_valid([BOS, 5, 6, 7, SEP, 7, 6, 5])
    assert CORPUS.is_valid([BOS, 5, 6, 7, SEP, 7, 6, 5, EOS, 9, 9])  # anything after <eos> is ignored


def test_needs_right_context_marks_the_first_half():
    x = CORPUS.encode("c a f | f a c")
    right = CORPUS.needs_right_context(x)[0]
    assert right.tolist()[:9] == [False, True, True, True, False, False, False, False, False]
    assert (CORPUS.is_symbol(x)[0] & ~right).sum() == 3


# --------------------------------------------------------------------------- masking


def test_mask_tokens_rate_and_targets():
    x = CORPUS.sample(2000, gen(0))
    inputs, targets = mask_tokens(x, CORPUS, 0.15, gen(1))
    masked = inputs == MASK
    symbols = CORPUS.is_symbol(x)
    assert not (masked & ~symbols).any()  # special tokens and padding are never masked
    rate = masked.sum().item() / symbols.sum().item()
    assert abs(rate - 0.15) < 0.01, rate
    assert torch.equal(targets[masked], x[masked]) and (targets[~masked] == -100).all()
    assert torch.equal(inputs[~masked], x[~masked])
    again, _ = mask_tokens(x, CORPUS, 0.15, gen(1))
    assert torch.equal(inputs, again)
    with pytest.raises(ValueError, match="rate must be in"):
        mask_tokens(x, CORPUS, 0.0)


def test_pad_after_eos():
    x = torch.tensor([[BOS, 5, EOS, 6, EOS], [BOS, 5, 6, 7, 8]])
    assert _pad_after_eos(x).tolist() == [[BOS, 5, EOS, PAD, PAD], [BOS, 5, 6, 7, 8]]


# --------------------------------------------------------------------------- training (smoke)


def test_decoder_overfits_a_tiny_corpus():
    tiny = PalindromeCorpus(num_symbols=3, min_half=2, max_half=3)
    torch.manual_seed(0)
    model = TransformerDecoder(config_for(tiny))
    threads = torch.get_num_threads()
    losses = train_next_token(model, tiny, steps=150, batch_size=32, lr=1e-2, generator=gen(0), progress=False)
    assert torch.get_num_threads() == threads  # restored
    assert len(losses) == 150 and not model.training
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
    test = tiny.sample(200, gen(5))
    acc = next_token_accuracy(model, test, tiny)
    assert acc["left context suffices"] > 0.8, acc
    rate, completed = completion_exact_match(model, test, tiny)
    assert completed.shape == test.shape and rate > 0.5


def test_encoder_training_reduces_the_loss():
    tiny = PalindromeCorpus(num_symbols=3, min_half=2, max_half=3)
    torch.manual_seed(0)
    model = TransformerEncoder(config_for(tiny))
    losses = train_masked_lm(model, tiny, steps=100, batch_size=32, lr=1e-2, rate=0.3, generator=gen(0), progress=False)
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    with pytest.raises(TypeError, match="TransformerEncoder"):
        train_masked_lm(TransformerDecoder(config_for(tiny)), tiny, steps=1, progress=False)
    with pytest.raises(TypeError, match="TransformerDecoder"):
        train_next_token(model, tiny, steps=1, progress=False)


# --------------------------------------------------------------------------- evaluation


def test_accuracies_are_split_and_in_range():
    torch.manual_seed(0)
    test = CORPUS.sample(50, gen(2))
    for acc in (
        masked_token_accuracy(TransformerEncoder(config_for(CORPUS)), test, CORPUS, batch_size=64),
        next_token_accuracy(TransformerDecoder(config_for(CORPUS)), test, CORPUS),
    ):
        assert set(acc) == {"needs right context", "left context suffices", "all symbols"}
        assert all(0.0 <= v <= 1.0 for v in acc.values())


class Oracle(TransformerEncoder):
    """An 'encoder' that reads the answer off the mirror position: checks the bookkeeping of the helpers."""

    def forward(self, tokens, key_padding_mask=None, return_attention=False):
        V = self.config.vocab_size
        logits = torch.zeros(*tokens.shape, V)
        sep = (tokens == SEP).int().argmax(-1)  # (N,)
        for i in range(tokens.shape[0]):
            for t in range(tokens.shape[1]):
                mirror = 2 * int(sep[i]) - t
                if 0 <= mirror < tokens.shape[1] and tokens[i, mirror] >= 5:
                    logits[i, t, tokens[i, mirror]] = 1.0
        return logits


def test_masked_token_accuracy_of_an_oracle_is_one():
    test = CORPUS.sample(20, gen(3))
    oracle = Oracle(config_for(CORPUS))
    assert masked_token_accuracy(oracle, test, CORPUS, batch_size=50) == {
        "needs right context": 1.0, "left context suffices": 1.0, "all symbols": 1.0
    }
    rate, completed = completion_exact_match(oracle, test, CORPUS)
    assert rate == 1.0 and torch.equal(completed, test)


def test_fill_blanks_fills_only_the_blanks():
    torch.manual_seed(0)
    model = TransformerEncoder(config_for(CORPUS))
    x = CORPUS.sample(30, gen(4))
    inputs, _ = mask_tokens(x, CORPUS, 0.5, gen(5))
    for one_at_a_time in (False, True):
        for sample in (False, True):
            out = fill_blanks(model, inputs, CORPUS, one_at_a_time=one_at_a_time, sample=sample, generator=gen(6))
            blanks = inputs == MASK
            assert not (out == MASK).any() and torch.equal(out[~blanks], inputs[~blanks])
            assert CORPUS.is_symbol(out[blanks]).all()
    assert torch.equal(fill_blanks(model, x, CORPUS), x)  # nothing to fill


def test_blank_canvas_and_samplers():
    halves = torch.tensor([3, 6])
    canvas = blank_canvas(CORPUS, halves)
    assert CORPUS.decode(canvas[0]) == "_ _ _ | _ _ _" and canvas.shape == (2, CORPUS.max_len)
    with pytest.raises(ValueError, match=r"halves must be \(N,\) lengths in \[3, 6\]"):
        blank_canvas(CORPUS, torch.tensor([7]))
    torch.manual_seed(0)
    enc, dec = TransformerEncoder(config_for(CORPUS)), TransformerDecoder(config_for(CORPUS))
    a = sample_encoder(enc, CORPUS, halves, generator=gen(1))
    assert torch.equal(a, sample_encoder(enc, CORPUS, halves, generator=gen(1)))
    assert not (a == MASK).any() and ((a == SEP).sum(-1) == 1).all()
    b = sample_decoder(dec, CORPUS, 5, gen(2))
    assert b.shape == (5, CORPUS.max_len) and (b[:, 0] == BOS).all()
    assert 0.0 <= valid_fraction(b, CORPUS) <= 1.0


def test_valid_fraction_counts_palindromes():
    x = CORPUS.sample(10, gen(7))
    broken = x.clone()
    broken[:5, 1] = torch.where(broken[:5, 1] == 5, 6, 5)  # change the first symbol, not its mirror
    assert valid_fraction(broken, CORPUS) == 0.5


def test_answer_positions_point_at_the_mirror_image():
    x = CORPUS.encode("c a f | f a c")  # positions: <bos> 0, c 1, a 2, f 3, | 4, f 5, a 6, c 7, <eos> 8
    enc = answer_positions(x, CORPUS)[0].tolist()
    assert enc[:9] == [-1, 7, 6, 5, -1, 3, 2, 1, -1]
    dec = answer_positions(x, CORPUS, next_token=True)[0].tolist()
    assert dec[:9] == [-1, -1, -1, -1, 3, 2, 1, -1, -1]  # query t predicts t + 1; only the second half
    assert all(x[0, j] == x[0, t + 1] for t, j in enumerate(dec) if j >= 0)
    assert all(x[0, j] == x[0, t] for t, j in enumerate(enc) if j >= 0)


def test_attention_on_answers_averages_the_answer_cells():
    answers = torch.tensor([[2, -1, 0], [-1, 1, -1]])  # (N, T) = (2, 3)
    weights = torch.zeros(2, 2, 3, 3)
    weights[0, 0, 0, 2] = 1.0  # head 0 finds the answer of (0, t=0)
    weights[1, :, 1, 1] = 0.5  # both heads half-find (1, t=1)
    torch.testing.assert_close(attention_on_answers(weights, answers), torch.tensor([0.5, 1 / 6]))
    with pytest.raises(ValueError, match=r"weights has shape \(2, 3, 3\)"):
        attention_on_answers(weights[0], answers)
