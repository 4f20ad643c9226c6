"""Chapter 11's translation case: human-written dates into ISO dates, with the alignment known.

"the 3rd of March 2024", "March 3, 2024", "03/03/2024" and "3 Mar 24" all translate to
"2024-03-03". The output is written year first, while most sources give the day or the month
first, so the alignment is not monotonic: the decoder must look near the end of the source for
the year, then go back for the month and the day. Since the generator writes every source, it
knows which source word each output character comes from (its *span*), and the attention of a
trained model can be checked against it.

The models are the Seq2Seq of :mod:`attn_course.seq2seq` (chapters 1 and 5) reading characters:
a GRU encoder, and either the fixed-context decoder or a Luong attention decoder. This lab holds
the data, the training run, the measurements and the heatmap.

Dimension glossary (used in shape comments)::

    N   number of examples
    B   batch size
    S   source length in characters (longest source in the set)
    T   decoder steps: 10 output characters ("yyyy-mm-dd") and EOS, T = 11

Token ids: ``PAD``, ``BOS``, ``EOS`` as in :mod:`attn_course.seq2seq`, then one id per character of
:data:`ALPHABET`; sources and targets share the ids (the encoder and decoder embed them apart).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch

from attn_course._validation import require_floating, require_int, require_tensor, shape_error
from attn_course.labs.training import TrainHistory, run_steps
from attn_course.plotting import plot_attention_heatmap
from attn_course.seq2seq import (
    BOS,
    EOS,
    FIRST_SYMBOL,
    PAD,
    LuongDecoder,
    Seq2Seq,
    Seq2SeqConfig,
    sequence_loss,
)
from attn_course.utils import num_threads, seed_everything

__all__ = [
    "ALPHABET",
    "VOCAB_SIZE",
    "FORMATS",
    "FIELDS",
    "OUTPUT_FIELDS",
    "render_date",
    "encode_texts",
    "decode_tokens",
    "DateData",
    "make_date_data",
    "train_date_model",
    "translate",
    "date_accuracy",
    "span_hits",
    "alignment_by_field",
    "weight_off_words",
    "DateResult",
    "run_date_translation",
    "plot_date_attention",
]

ALPHABET = " ,/-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ID = {c: FIRST_SYMBOL + i for i, c in enumerate(ALPHABET)}
VOCAB_SIZE = FIRST_SYMBOL + len(ALPHABET)  # PAD, BOS, EOS + one id per character

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

# name -> an example (3 March 2024); "dd/mm/yyyy" is day first, as in most of Europe
FORMATS = {
    "d Month yyyy": "3 March 2024",
    "Month d, yyyy": "March 3, 2024",
    "the dth of Month yyyy": "the 3rd of March 2024",
    "dd/mm/yyyy": "03/03/2024",
    "d Mon yy": "3 Mar 24",
    "Weekday, d Month yyyy": "Sunday, 3 March 2024",
    "Mon dth, yyyy": "Mar 3rd, 2024",
}
FIELDS = ("year", "month", "day")
# the source word each character of "yyyy-mm-dd" comes from; None: the dashes, which come from no word
OUTPUT_FIELDS = ("year",) * 4 + (None,) + ("month",) * 2 + (None,) + ("day",) * 2
TARGET_LEN = len(OUTPUT_FIELDS)  # 10 characters, then EOS


def _ordinal(d: int) -> str:
    """3 -> "3rd", 11 -> "11th", 22 -> "22nd"."""
    suffix = "th" if 11 <= d % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
    return f"{d}{suffix}"


def render_date(date: datetime.date, fmt: str) -> tuple[str, dict[str, tuple[int, int]]]:
    """Write ``date`` in the format ``fmt`` (a key of :data:`FORMATS`).

    Returns the text and, for ``"year"``, ``"month"`` and ``"day"``, the character span
    ``(start, end)`` (end excluded) of the source word that gives it: ``text[start:end]`` is
    e.g. ``"2024"`` or ``"24"``, ``"March"``, ``"Mar"`` or ``"03"``, ``"3"``, ``"03"`` or ``"3rd"``.
    Two-digit years are 19yy for yy >= 50 and 20yy below, so ``date.year`` must be in 1950-2049 for
    ``"d Mon yy"``.
    """
    if not isinstance(date, datetime.date):
        raise TypeError(f"date must be a datetime.date, got {type(date).__name__}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {list(FORMATS)}, got {fmt!r}")
    d, m, y = date.day, date.month, date.year
    if fmt == "d Mon yy" and not 1950 <= y <= 2049:
        raise ValueError(f"a two-digit year stands for 1950-2049; date.year = {y} cannot be written as 'yy'")
    month = MONTHS[m - 1]
    # each part: (text, the field it gives or None)
    parts = {
        "d Month yyyy": [(str(d), "day"), (" ", None), (month, "month"), (" ", None), (str(y), "year")],
        "Month d, yyyy": [(month, "month"), (" ", None), (str(d), "day"), (", ", None), (str(y), "year")],
        "the dth of Month yyyy": [("the ", None), (_ordinal(d), "day"), (" of ", None), (month, "month"),
                                  (" ", None), (str(y), "year")],
        "dd/mm/yyyy": [(f"{d:02d}", "day"), ("/", None), (f"{m:02d}", "month"), ("/", None), (str(y), "year")],
        "d Mon yy": [(str(d), "day"), (" ", None), (month[:3], "month"), (" ", None), (f"{y % 100:02d}", "year")],
        "Weekday, d Month yyyy": [(WEEKDAYS[date.weekday()] + ", ", None), (str(d), "day"), (" ", None),
                                  (month, "month"), (" ", None), (str(y), "year")],
        "Mon dth, yyyy": [(month[:3], "month"), (" ", None), (_ordinal(d), "day"), (", ", None), (str(y), "year")],
    }[fmt]
    text, spans = "", {}
    for part, field in parts:
        if field is not None:
            spans[field] = (len(text), len(text) + len(part))
        text += part
    return text, spans


def encode_texts(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Character ids of ``texts``, right-padded: ``src`` ``(N, S)`` and ``lengths`` ``(N,)``."""
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise TypeError("texts must be a non-empty list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise ValueError(f"texts[{i}] must be a non-empty string, got {text!r}")
        bad = sorted(set(text) - set(ALPHABET))
        if bad:
            raise ValueError(f"texts[{i}] = {text!r} holds characters outside ALPHABET: {bad}")
    lengths = torch.tensor([len(t) for t in texts])  # (N,)
    src = torch.full((len(texts), int(lengths.max())), PAD, dtype=torch.long)  # (N, S)
    for i, text in enumerate(texts):
        src[i, : len(text)] = torch.tensor([_ID[c] for c in text])
    return src, lengths


def decode_tokens(tokens: torch.Tensor) -> list[str]:
    """Token ids ``(N, T)`` -> one string per row, up to (not including) its first EOS; PAD and BOS dropped."""
    require_tensor(tokens, "tokens")
    if tokens.dim() != 2:
        raise shape_error("tokens", tokens, "(N, T) token ids")
    out = []
    for row in tokens.tolist():
        chars = []
        for tok in row:
            if tok == EOS:
                break
            if tok >= FIRST_SYMBOL and tok < VOCAB_SIZE:
                chars.append(ALPHABET[tok - FIRST_SYMBOL])
        out.append("".join(chars))
    return out


@dataclass
class DateData:
    """Human-written dates, their ISO translations and the source span of every output character."""

    texts: list[str]  # the sources, e.g. "the 3rd of March 2024"
    targets: list[str]  # the ISO dates, e.g. "2024-03-03"
    formats: list[str]  # the FORMATS key each source was written in
    src: torch.Tensor  # (N, S) character ids, PAD-padded
    src_lengths: torch.Tensor  # (N,)
    tgt_in: torch.Tensor  # (N, T) BOS + the 10 target characters
    tgt_out: torch.Tensor  # (N, T) the 10 target characters + EOS
    span_start: torch.Tensor  # (N, T) first source character of the word output character t comes from; -1: none
    span_end: torch.Tensor  # (N, T) one past its last character; -1 for the dashes and EOS

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: torch.Tensor) -> DateData:
        """The examples ``index`` (a ``(B,)`` long tensor), their sources cut to the longest of them."""
        rows = index.tolist()
        S = int(self.src_lengths[index].max())
        return DateData([self.texts[i] for i in rows], [self.targets[i] for i in rows],
                        [self.formats[i] for i in rows], self.src[index, :S], self.src_lengths[index],
                        self.tgt_in[index], self.tgt_out[index], self.span_start[index], self.span_end[index])


def make_date_data(n: int, generator: torch.Generator, formats: Sequence[str] | None = None,
                   years: tuple[int, int] = (1950, 2049), exclude: Sequence[str] = ()) -> DateData:
    """``n`` random dates (uniform over the days of ``years``, ends included), each in a random format.

    ``formats`` (default: all of :data:`FORMATS`) are drawn uniformly; sources whose text is in
    ``exclude`` are drawn again, so a held-out set can leave out every training text.
    """
    n = require_int(n, "n")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    formats = list(FORMATS) if formats is None else list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if not formats or unknown:
        raise ValueError(f"formats must be a non-empty list of FORMATS keys {list(FORMATS)}; unknown: {unknown}")
    lo, hi = years
    require_int(lo, "years[0]")
    require_int(hi, "years[1]")
    if not lo <= hi or ("d Mon yy" in formats and not (1950 <= lo and hi <= 2049)):
        raise ValueError(f"years must be (first, last) with first <= last, within 1950-2049 when 'd Mon yy' is "
                         f"a format (two-digit years); got {years}")
    first = datetime.date(lo, 1, 1).toordinal()
    days = datetime.date(hi, 12, 31).toordinal() - first + 1
    excluded = set(exclude)
    texts, targets, used, spans = [], [], [], []
    draws = 0
    while len(texts) < n:
        draws += 1
        if draws > 100 * n:  # exclude leaves (almost) nothing to draw
            raise ValueError(f"could not draw {n} dates outside exclude ({len(excluded)} texts) in {100 * n} tries; "
                             f"widen years or formats")
        date = datetime.date.fromordinal(first + int(torch.randint(0, days, (1,), generator=generator)))
        fmt = formats[int(torch.randint(0, len(formats), (1,), generator=generator))]
        text, span = render_date(date, fmt)
        if text in excluded:
            continue
        texts.append(text)
        targets.append(date.isoformat())
        used.append(fmt)
        spans.append(span)
    src, lengths = encode_texts(texts)  # (N, S), (N,)
    target = torch.tensor([[_ID[c] for c in t] for t in targets])  # (N, 10)
    tgt_in = torch.cat([torch.full((n, 1), BOS), target], dim=1)  # (N, T)
    tgt_out = torch.cat([target, torch.full((n, 1), EOS)], dim=1)  # (N, T)
    span_start = torch.full((n, TARGET_LEN + 1), -1)  # (N, T)
    span_end = torch.full((n, TARGET_LEN + 1), -1)  # (N, T)
    for i, span in enumerate(spans):
        for t, field in enumerate(OUTPUT_FIELDS):
            if field is not None:
                span_start[i, t], span_end[i, t] = span[field]
    return DateData(texts, targets, used, src, lengths, tgt_in, tgt_out, span_start, span_end)


def _check_model(model: object) -> Seq2Seq:
    if not isinstance(model, Seq2Seq):
        raise TypeError(f"model must be a Seq2Seq, got {type(model).__name__}")
    if model.config.vocab_size < VOCAB_SIZE:
        raise ValueError(f"the dates need vocab_size >= {VOCAB_SIZE}; the model has {model.config.vocab_size}")
    return model


def _check_data(data: object) -> DateData:
    if not isinstance(data, DateData):
        raise TypeError(f"data must be a DateData (from make_date_data), got {type(data).__name__}")
    return data


def train_date_model(model: Seq2Seq, data: DateData, steps: int, *, batch_size: int = 64, lr: float = 5e-3,
                     seed: int = 0, grad_clip: float | None = 1.0, progress: bool = True,
                     desc: str = "dates") -> TrainHistory:
    """Adam on random minibatches of ``data`` (teacher forcing), the rate decaying linearly to 10 %.

    The same ``seed`` draws the same batches, so two models trained with it see the same examples.
    """
    model, data = _check_model(model), _check_data(data)
    require_int(steps, "steps")
    require_int(batch_size, "batch_size")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0 - 0.9 * i / steps)

    def loss_for_step(i: int) -> torch.Tensor:
        batch = data.subset(torch.randint(0, len(data), (batch_size,), generator=g))
        logits = model(batch.src, batch.src_lengths, batch.tgt_in)  # (B, T, V)
        return sequence_loss(logits, batch.tgt_out)

    start = time.perf_counter()
    losses = run_steps(model, loss_for_step, optimizer, schedule, steps, grad_clip=grad_clip, progress=progress,
                       desc=desc, postfix_every=25)
    return TrainHistory(losses=losses, seconds=time.perf_counter() - start)


@torch.no_grad()
def translate(model: Seq2Seq, texts: Sequence[str]) -> list[str]:
    """Greedy decoding of ``texts`` (a list of human-written dates) into strings."""
    model = _check_model(model)
    src, lengths = encode_texts(texts)
    return decode_tokens(model.generate(src, lengths, max_len=TARGET_LEN + 1))


@torch.no_grad()
def date_accuracy(model: Seq2Seq, data: DateData) -> dict[str, float]:
    """Greedy decoding of ``data``: the fraction translated exactly (10 characters, then EOS), ``"exact"``,
    and for ``"year"``, ``"month"`` and ``"day"`` the fraction whose characters of that field are all right."""
    model, data = _check_model(model), _check_data(data)
    out = model.generate(data.src, data.src_lengths, max_len=TARGET_LEN + 1)  # (N, <= T)
    if out.shape[1] < TARGET_LEN + 1:  # every row stopped early
        out = torch.cat([out, torch.full((len(data), TARGET_LEN + 1 - out.shape[1]), PAD)], dim=1)  # (N, T)
    right = out == data.tgt_out  # (N, T)
    acc = {"exact": float(right.all(dim=1).float().mean())}
    for field in FIELDS:
        cols = [t for t, f in enumerate(OUTPUT_FIELDS) if f == field]
        acc[field] = float(right[:, cols].all(dim=1).float().mean())
    return acc


def span_hits(attn: torch.Tensor, data: DateData, slack: int = 0) -> torch.Tensor:
    """Whether each output character's largest attention weight falls in its source word: ``(N, T)`` bool.

    ``attn`` ``(N, T, S)`` holds the weights of ``data``'s examples (e.g. teacher-forced). The
    peak of step ``t`` hits when ``span_start <= argmax < span_end + slack``: ``slack = 1`` also
    counts the character right after the word, whose encoder state is the first one to have read
    the whole word (the lag of chapter 5). Steps with no word (dashes, EOS) are ``False``.
    """
    require_floating(attn, "attn")
    data = _check_data(data)
    require_int(slack, "slack", 0)
    N, T = data.span_start.shape
    if attn.dim() != 3 or attn.shape[0] != N or attn.shape[1] != T or attn.shape[2] < int(data.src_lengths.max()):
        raise shape_error("attn", attn, f"(N, T, S) = ({N}, {T}, S >= {int(data.src_lengths.max())}) to match data")
    peak = attn.argmax(dim=-1)  # (N, T): the source character each step looks at most
    return (data.span_start >= 0) & (peak >= data.span_start) & (peak < data.span_end + slack)  # (N, T)


def alignment_by_field(attn: torch.Tensor, data: DateData, slack: int = 0) -> dict[str, float]:
    """Fraction of output characters whose attention peaks in their source word, per field and ``"all"``.

    Also ``"chance"``: the same fraction for a peak drawn uniformly over each source (the mean of
    ``(word length + slack) / source length``), the level a model that does not align would get.
    """
    hits = span_hits(attn, data, slack)  # (N, T)
    scored = data.span_start >= 0  # (N, T)
    out = {}
    for field in FIELDS:
        cols = [t for t, f in enumerate(OUTPUT_FIELDS) if f == field]
        out[field] = float(hits[:, cols].float().mean())
    out["all"] = float(hits[scored].float().mean())
    width = (data.span_end + slack).minimum(data.src_lengths[:, None]) - data.span_start  # (N, T)
    out["chance"] = float((width / data.src_lengths[:, None])[scored].mean())
    return out


def weight_off_words(attn: torch.Tensor, data: DateData) -> dict[str, float]:
    """The source characters outside the year, month and day words (a weekday, "the", "of", spaces, commas).

    ``"characters"``: their mean share of a source's characters; ``"weight"``: the mean total attention
    weight that an output character of the date (not a dash, not EOS) puts on them.
    """
    span_hits(attn, data)  # validates attn against data
    S = attn.shape[2]
    pos = torch.arange(S)  # (S,)
    in_word = torch.zeros(len(data), S, dtype=torch.bool)  # (N, S)
    for field in FIELDS:
        t = OUTPUT_FIELDS.index(field)  # the first output character of the field: its word's span
        start, end = data.span_start[:, t, None], data.span_end[:, t, None]  # (N, 1) each
        in_word |= (pos >= start) & (pos < end)
    off = (pos < data.src_lengths[:, None]) & ~in_word  # (N, S): real characters outside the words
    scored = data.span_start >= 0  # (N, T)
    weight = (attn * off[:, None, :]).sum(-1)  # (N, T)
    return {"characters": float((off.sum(-1) / data.src_lengths).mean()), "weight": float(weight[scored].mean())}


@dataclass
class DateResult:
    accuracy: dict[str, dict[str, float]]  # "attention" / "fixed context" -> date_accuracy on the held-out set
    alignment: dict[str, float]  # alignment_by_field: the peak inside the source word, per field, and chance
    attn: torch.Tensor  # (N, T, S) teacher-forced attention weights on the held-out set
    models: dict[str, Seq2Seq]
    histories: dict[str, TrainHistory]
    train: DateData
    test: DateData
    seconds: float


def run_date_translation(steps: int = 400, n_train: int = 4000, n_test: int = 500, hidden_dim: int = 64,
                         embed_dim: int = 16, lr: float = 5e-3, seed: int = 0, progress: bool = True) -> DateResult:
    """Train a Luong-attention and a fixed-context Seq2Seq on the same dates, batches and budget.

    The held-out set leaves out every training text. Returns both models' accuracies on it
    (:func:`date_accuracy`) and the attention model's teacher-forced weights there, measured
    against the spans (:func:`alignment_by_field`).
    """
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    train = make_date_data(n_train, g)
    test = make_date_data(n_test, g, exclude=train.texts)
    config = Seq2SeqConfig(vocab_size=VOCAB_SIZE, embed_dim=embed_dim, hidden_dim=hidden_dim)
    models, histories, accuracy = {}, {}, {}
    with num_threads(1):  # tiny tensors: one thread beats several on a shared CPU
        for name in ("attention", "fixed context"):
            seed_everything(seed)  # the same initial weights for the shared parts
            models[name] = Seq2Seq(config, decoder=LuongDecoder(config) if name == "attention" else None)
            histories[name] = train_date_model(models[name], train, steps, lr=lr, seed=seed, progress=progress,
                                               desc=f"dates ({name})")
            accuracy[name] = date_accuracy(models[name], test)
        with torch.no_grad():
            _, attn = models["attention"](test.src, test.src_lengths, test.tgt_in, return_attention=True)
    return DateResult(accuracy, alignment_by_field(attn, test), attn, models, histories, train, test,
                      time.perf_counter() - start)


_FIELD_COLORS = {"year": "tab:red", "month": "tab:orange", "day": "tab:cyan"}


def plot_date_attention(result: DateResult, index: int = 0, ax=None):
    """Heatmap of the attention model's weights on one held-out date, each output character's source word boxed."""
    require_int(index, "index", 0, len(result.test) - 1)
    test = result.test
    n = int(test.src_lengths[index])
    w = result.attn[index, :, :n]  # (T, n)
    if ax is None:
        _, ax = plt.subplots(figsize=(min(0.3 * n + 2.5, 10.0), 5.0), layout="constrained")
    tgt = [*test.targets[index], "EOS"]
    src = ["\u2423" if c == " " else c for c in test.texts[index]]  # a visible space
    plot_attention_heatmap(w, ax=ax, src_labels=src, tgt_labels=tgt,
                           title=f"{test.texts[index]!r} -> {test.targets[index]}",
                           xlabel="source character", ylabel="output character")
    for t, field in enumerate(OUTPUT_FIELDS):
        if field is not None:
            a, b = int(test.span_start[index, t]), int(test.span_end[index, t])
            ax.add_patch(plt.Rectangle((a - 0.5, t - 0.5), b - a, 1, fill=False, edgecolor=_FIELD_COLORS[field],
                                       linewidth=1.5, label=f"{field} word" if t == OUTPUT_FIELDS.index(field) else None))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, fontsize="small")
    return ax
