"""attn_course.labs.date_translation: the date generator, its spans, a tiny training run, bad input."""

import datetime

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from attn_course.labs.date_translation import (  # noqa: E402
    FORMATS,
    MONTHS,
    OUTPUT_FIELDS,
    VOCAB_SIZE,
    DateResult,
    alignment_by_field,
    date_accuracy,
    decode_tokens,
    encode_texts,
    make_date_data,
    plot_date_attention,
    render_date,
    span_hits,
    train_date_model,
    translate,
    weight_off_words,
)
from attn_course.seq2seq import BOS, EOS, LuongDecoder, Seq2Seq, Seq2SeqConfig  # noqa: E402


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_format_renders_its_example_and_spans_name_the_words():
    date = datetime.date(2024, 3, 3)
    for fmt, example in FORMATS.items():
        text, spans = render_date(date, fmt)
        assert text == example
        words = {field: text[a:b] for field, (a, b) in spans.items()}
        assert words["year"] in ("2024", "24")
        assert words["month"] in ("March", "Mar", "03")
        assert words["day"] in ("3", "03", "3rd")
    assert render_date(datetime.date(1999, 12, 22), "the dth of Month yyyy")[0] == "the 22nd of December 1999"
    assert render_date(datetime.date(2011, 1, 11), "Mon dth, yyyy")[0] == "Jan 11th, 2011"
    assert render_date(datetime.date(1968, 7, 1), "d Mon yy")[0] == "1 Jul 68"  # 68 -> 1968 (yy >= 50)


def test_the_generator_is_deterministic_and_its_targets_and_spans_are_right():
    a, b = make_date_data(200, gen(3)), make_date_data(200, gen(3))
    assert a.texts == b.texts and a.formats == b.formats and torch.equal(a.src, b.src)
    assert a.texts != make_date_data(200, gen(4)).texts
    assert set(a.formats) == set(FORMATS)  # 200 draws use every format
    assert a.src.shape == (200, int(a.src_lengths.max())) and a.tgt_in.shape == a.tgt_out.shape == (200, 11)
    assert (a.tgt_in[:, 0] == BOS).all() and (a.tgt_out[:, -1] == EOS).all()
    assert decode_tokens(a.tgt_out) == a.targets == decode_tokens(a.tgt_in[:, 1:])
    assert decode_tokens(a.src) == a.texts
    for i in range(200):
        year, month, day = (int(x) for x in a.targets[i].split("-"))
        text = a.texts[i]
        for t, field in enumerate(OUTPUT_FIELDS):
            start, end = int(a.span_start[i, t]), int(a.span_end[i, t])
            if field is None:
                assert start == end == -1
                continue
            word = text[start:end]
            assert 0 <= start < end <= len(text) and word == word.strip(" ,/")
            if field == "year":
                assert int(word) in (year, year % 100)
            elif field == "month":
                assert word in (MONTHS[month - 1], MONTHS[month - 1][:3], f"{month:02d}")
            else:
                assert int(word.rstrip("stndrh")) == day
        assert int(a.span_start[i, -1]) == -1  # EOS comes from no word


def test_a_held_out_set_leaves_out_the_training_texts():
    train = make_date_data(300, gen(0), formats=["dd/mm/yyyy"], years=(2000, 2000))
    test = make_date_data(50, gen(1), formats=["dd/mm/yyyy"], years=(2000, 2000), exclude=train.texts)
    assert not set(test.texts) & set(train.texts)
    first = datetime.date(2000, 1, 1).toordinal()
    every = [render_date(datetime.date.fromordinal(first + i), "dd/mm/yyyy")[0] for i in range(366)]  # leap year
    with pytest.raises(ValueError, match="exclude"):
        make_date_data(1, gen(3), formats=["dd/mm/yyyy"], years=(2000, 2000), exclude=every)


def test_span_hits_and_alignment_follow_the_argmax():
    d = make_date_data(4, gen(0))
    N, T, S = len(d), 11, d.src.shape[1]
    on_word = torch.zeros(N, T, S)
    on_word[torch.arange(N)[:, None], torch.arange(T), d.span_start.clamp(min=0)] = 1.0  # peak on each word's start
    assert span_hits(on_word, d).sum() == (d.span_start >= 0).sum()
    scores = alignment_by_field(on_word, d)
    assert scores["all"] == scores["year"] == scores["month"] == scores["day"] == 1.0
    assert 0 < scores["chance"] < 0.5
    off = weight_off_words(on_word, d)
    assert off["weight"] == 0.0 and 0 < off["characters"] < 1
    assert weight_off_words(torch.full((N, T, S), 1.0 / S), d)["weight"] > 0
    after = torch.zeros(N, T, S)
    after[torch.arange(N)[:, None], torch.arange(T), d.span_end.clamp(min=0, max=S - 1)] = 1.0  # one past the word
    inside = d.span_end < d.src_lengths[:, None]  # words not at the end of their source
    assert not span_hits(after, d)[inside].any()
    assert span_hits(after, d, slack=1)[inside & (d.span_start >= 0)].all()


def test_a_tiny_training_run_improves_and_the_model_translates():
    train = make_date_data(256, gen(0), formats=["dd/mm/yyyy"])
    config = Seq2SeqConfig(vocab_size=VOCAB_SIZE, embed_dim=8, hidden_dim=24)
    torch.manual_seed(0)
    model = Seq2Seq(config, decoder=LuongDecoder(config))
    history = train_date_model(model, train, 60, batch_size=32, lr=1e-2, progress=False)
    assert len(history.losses) == 60 and history.seconds > 0
    assert sum(history.losses[-10:]) / 10 < 0.75 * sum(history.losses[:10]) / 10  # 3.2 -> 2.0 here
    acc = date_accuracy(model, train)
    assert set(acc) == {"exact", "year", "month", "day"} and all(0 <= v <= 1 for v in acc.values())
    out = translate(model, ["03/03/2024", "31/12/1999"])
    assert len(out) == 2 and all(isinstance(s, str) and len(s) <= 11 for s in out)  # at most 11 steps
    with torch.no_grad():
        _, attn = model(train.src, train.src_lengths, train.tgt_in, return_attention=True)
    result = DateResult({"attention": acc}, alignment_by_field(attn, train), attn, {"attention": model},
                        {"attention": history}, train, train, 0.0)
    ax = plot_date_attention(result, index=1)
    try:
        assert len(ax.patches) == 8  # one box per year, month and day character
    finally:
        plt.close(ax.figure)


def test_bad_input_is_named():
    date = datetime.date(2024, 3, 3)
    with pytest.raises(ValueError, match="fmt"):
        render_date(date, "yyyy.mm.dd")
    with pytest.raises(TypeError, match="date"):
        render_date("2024-03-03", "d Month yyyy")
    with pytest.raises(ValueError, match="two-digit"):
        render_date(datetime.date(2077, 1, 1), "d Mon yy")
    with pytest.raises(ValueError, match="n must be a positive int"):
        make_date_data(0, gen())
    with pytest.raises(TypeError, match="generator"):
        make_date_data(5, 0)
    with pytest.raises(ValueError, match="formats"):
        make_date_data(5, gen(), formats=["yyyy.mm.dd"])
    with pytest.raises(ValueError, match="years"):
        make_date_data(5, gen(), years=(1900, 2000))  # two-digit years cannot say 1900
    with pytest.raises(ValueError, match="ALPHABET"):
        encode_texts(["3 März 2024"])
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        encode_texts(["3 May 2024", ""])
    d = make_date_data(3, gen())
    with pytest.raises(ValueError, match="attn has shape"):
        span_hits(torch.rand(3, 10, d.src.shape[1]), d)
    with pytest.raises(TypeError, match="attn must be a floating-point"):
        span_hits(torch.zeros(3, 11, d.src.shape[1], dtype=torch.long), d)
    with pytest.raises(TypeError, match="model must be a Seq2Seq"):
        date_accuracy(torch.nn.Linear(2, 2), d)
    with pytest.raises(ValueError, match="vocab_size"):
        date_accuracy(Seq2Seq(Seq2SeqConfig(vocab_size=13)), d)
    with pytest.raises(TypeError, match="data must be a DateData"):
        train_date_model(Seq2Seq(Seq2SeqConfig(vocab_size=VOCAB_SIZE)), [d], 1)
