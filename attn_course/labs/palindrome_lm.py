"""A tiny corpus of palindromes, and the training and evaluation of a BERT-style and a GPT-style model on it.

The corpus (``PalindromeCorpus``): a random string of ``n`` symbols, a separator, and the same
string reversed, e.g. ``<bos> c a f d | d f a c <eos>`` (``n`` from ``min_half`` to
``max_half``, symbols drawn uniformly and independently). Its structure decides which context
helps where:

* a symbol of the **first half** is random given everything to its left: only its mirror image
  in the second half, to its **right**, gives it away. A left-to-right model can do no better
  than chance (``1 / num_symbols``); a bidirectional one can be exact.
* a symbol of the **second half** is determined by the first half, to its **left**: both kinds
  of model can get it, and a left-to-right model can *generate* the whole second half.

Token ids: five special tokens first (``PAD, MASK, BOS, SEP, EOS`` = 0 .. 4), then the symbols
``a, b, c, ...`` (``5 .. 5 + num_symbols - 1``). Sequences are padded with ``PAD`` at the end
to ``max_len = 2 * max_half + 3``.

Training (fresh random batches every step, AdamW, a one-cycle learning-rate schedule, a tqdm bar):

* ``train_masked_lm``   the encoder: replace 15% of the symbols by ``[MASK]``, predict them.
* ``train_next_token``  the decoder: predict token ``t + 1`` from tokens ``0 .. t``, everywhere.

Evaluation:

* ``masked_token_accuracy``  one blank at a time, split by where the answer is (right/left).
* ``next_token_accuracy``    the decoder's guess of each symbol from its left context alone.
* ``completion_exact_match`` given the first half, produce the second: whole sequences right.
* ``fill_blanks``            the encoder fills every ``[MASK]``: all at once, or one at a time.
* ``sample_decoder`` / ``sample_encoder``  new sequences; ``valid_fraction`` of palindromes.
* ``answer_positions`` / ``attention_on_answers``  how much attention goes to the mirror image.

Dimension glossary (see ``attn_course`` for the full one)::

    N  number of sequences    T  sequence length (max_len)    V  vocabulary size    K  num_symbols
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from attn_course import utils
from attn_course._validation import require_int, require_tensor, shape_error
from attn_course.labs.training import run_steps
from attn_course.plotting import check_curves
from attn_course.transformer import (
    IGNORE_INDEX,
    TransformerDecoder,
    TransformerEncoder,
    TransformerLM,
    mask_for_mlm,
    next_token_batch,
)

__all__ = [
    "SPECIALS",
    "IGNORE",
    "PalindromeCorpus",
    "mask_tokens",
    "train_masked_lm",
    "train_next_token",
    "masked_token_accuracy",
    "next_token_accuracy",
    "fill_blanks",
    "completion_exact_match",
    "blank_canvas",
    "sample_decoder",
    "sample_encoder",
    "valid_fraction",
    "answer_positions",
    "attention_on_answers",
    "plot_attention_by_model",
]

SPECIALS = ("<pad>", "<mask>", "<bos>", "|", "<eos>")
PAD, MASK, BOS, SEP, EOS = range(len(SPECIALS))
IGNORE = IGNORE_INDEX  # cross_entropy's ignore_index: positions that are not predicted
RIGHT, LEFT = "needs right context", "left context suffices"


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class PalindromeCorpus:
    """Palindromes ``<bos> x_1 .. x_n | x_n .. x_1 <eos>`` over ``num_symbols`` symbols.

    Args:
        num_symbols: ``K``, the symbols ``a, b, c, ...`` (at most 26).
        min_half, max_half: the range of ``n``, the length of each half (drawn uniformly).
    """

    num_symbols: int = 10
    min_half: int = 3
    max_half: int = 6

    def __post_init__(self) -> None:
        require_int(self.num_symbols, "num_symbols", 2)
        if self.num_symbols > 26:
            raise ValueError(f"num_symbols must be at most 26 (the letters a .. z), got {self.num_symbols}")
        require_int(self.min_half, "min_half")
        require_int(self.max_half, "max_half", self.min_half)

    @property
    def vocab_size(self) -> int:
        """``V``: the special tokens and the symbols."""
        return len(SPECIALS) + self.num_symbols

    @property
    def max_len(self) -> int:
        """The longest sequence: ``<bos>``, two halves of ``max_half``, ``|`` and ``<eos>``."""
        return 2 * self.max_half + 3

    @property
    def chance(self) -> float:
        """The accuracy of a blind guess of a symbol: ``1 / K``."""
        return 1.0 / self.num_symbols

    @property
    def itos(self) -> list[str]:
        """Token id -> its text."""
        return list(SPECIALS) + list(string.ascii_lowercase[: self.num_symbols])

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` random palindromes as token ids ``(n, max_len)``, ``PAD`` after ``<eos>``.

        Deterministic given ``generator``'s state (CPU).
        """
        require_int(n, "n")
        T, m = self.max_len, self.max_half
        halves = torch.randint(self.min_half, m + 1, (n,), generator=generator)  # (N,): n of each row
        symbols = torch.randint(len(SPECIALS), self.vocab_size, (n, m), generator=generator)  # (N, m)
        tokens = torch.full((n, T), PAD, dtype=torch.long)  # (N, T)
        for row, (h, x) in enumerate(zip(halves.tolist(), symbols)):
            x = x[:h]  # (h,): the first half
            tokens[row, : 2 * h + 3] = torch.cat(
                [torch.tensor([BOS]), x, torch.tensor([SEP]), x.flip(0), torch.tensor([EOS])]
            )  # (2h + 3,)
        return tokens

    def encode(self, text: str) -> torch.Tensor:
        """``"c a f | f a c"`` -> ``(1, max_len)`` ids, with ``<bos>``, ``<eos>`` and padding added.

        Use ``"_"`` for a blank (``[MASK]``). Text that stops early (e.g. ``"c a f |"``, a prompt)
        gets neither ``<eos>`` nor padding.
        """
        stoi = {s: i for i, s in enumerate(self.itos)} | {"_": MASK}
        words = text.split()
        unknown = [w for w in words if w not in stoi]
        if unknown:
            raise ValueError(f"text has unknown tokens {unknown}; expected symbols {self.itos[len(SPECIALS):]}, '|' or '_'")
        ids = [BOS] + [stoi[w] for w in words]
        complete = words.count("|") == 1 and len(words) == 2 * words.index("|") + 1
        if complete:
            ids = ids + [EOS] + [PAD] * (self.max_len - len(ids) - 1)
        if len(ids) > self.max_len:
            raise ValueError(f"text has {len(words)} tokens; expected at most {2 * self.max_half + 1}")
        return torch.tensor([ids])

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Token ids -> text, without ``<bos>``, and cut at the first ``<eos>``; ``[MASK]`` shows as ``_``."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        words = []
        for i in ids:
            if i == EOS:
                break
            if i not in (BOS, PAD):
                words.append("_" if i == MASK else self.itos[i])
        return " ".join(words)

    def is_valid(self, ids: torch.Tensor | list[int]) -> bool:
        """Is ``ids`` (one sequence) a palindrome of this corpus, ``<eos>`` included (padding after it ignored)?"""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if EOS not in ids:
            return False
        ids = ids[: ids.index(EOS)]
        if len(ids) < 2 or ids[0] != BOS or ids.count(SEP) != 1:
            return False
        first, second = ids[1 : ids.index(SEP)], ids[ids.index(SEP) + 1 :]
        return (
            self.min_half <= len(first) <= self.max_half
            and all(len(SPECIALS) <= i < self.vocab_size for i in first)
            and second == first[::-1]
        )

    def is_symbol(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bool, the shape of ``tokens``: ``True`` at the symbols (not at special tokens)."""
        return tokens >= len(SPECIALS)

    def needs_right_context(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bool ``(N, T)``: ``True`` at the symbols of the first half (before ``|``).

        These can only be inferred from their mirror image, to their right; the symbols of the
        second half (``is_symbol & ~needs_right_context``) follow from the first half, to their left.
        """
        before_sep = torch.cumsum(tokens == SEP, dim=-1) == 0  # (N, T): positions before the "|"
        return self.is_symbol(tokens) & before_sep


def _check_tokens(tokens: object, corpus: PalindromeCorpus) -> torch.Tensor:
    require_tensor(tokens, "tokens")
    if tokens.dim() != 2 or tokens.dtype != torch.long:
        raise shape_error("tokens", tokens, f"(N, T) of dtype torch.long (got {tokens.dtype}), e.g. corpus.sample(N)")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= corpus.vocab_size):
        raise ValueError(f"tokens must be ids in [0, {corpus.vocab_size}), got {int(tokens.min())} .. {int(tokens.max())}")
    return tokens


# --------------------------------------------------------------------------- training


def mask_tokens(
    tokens: torch.Tensor,
    corpus: PalindromeCorpus,
    rate: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's training input: each symbol becomes ``[MASK]`` with probability ``rate``.

    Special tokens (``<bos>``, ``|``, ``<eos>``, padding) are never masked. (BERT also leaves 10%
    of the chosen tokens unchanged and swaps 10% for random ones; we keep the plain version.)

    Returns:
        ``(inputs, targets)``, both ``(N, T)``: ``inputs`` with the ``[MASK]`` tokens, ``targets``
        the original id at the masked positions and ``-100`` (ignored by the loss) elsewhere.
    """
    _check_tokens(tokens, corpus)
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"rate must be in (0, 1], got {rate!r}")
    return mask_for_mlm(tokens, corpus.is_symbol(tokens), MASK, rate, generator)


def _train(
    model: TransformerLM,
    make_batch: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    steps: int,
    lr: float,
    desc: str,
    progress: bool,
    num_threads: int | None,
) -> list[float]:
    """AdamW with a one-cycle schedule on fresh batches ``(inputs, targets, key_padding_mask)``."""
    require_int(steps, "steps")

    def loss_for_step(i: int) -> torch.Tensor:
        inputs, targets, key_padding_mask = make_batch()
        logits = model(inputs, key_padding_mask)  # (N, T, V)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)  # (N*T, V), (N*T,)

    with utils.num_threads(num_threads, name="num_threads"):
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
        return run_steps(model, loss_for_step, optimizer, schedule, steps, progress=progress, desc=desc)


def train_masked_lm(
    model: TransformerEncoder,
    corpus: PalindromeCorpus,
    *,
    steps: int = 600,
    batch_size: int = 128,
    lr: float = 3e-3,
    rate: float = 0.15,
    generator: torch.Generator | None = None,
    progress: bool = True,
    num_threads: int | None = 1,
) -> list[float]:
    """Train the encoder to predict masked symbols (``mask_tokens``); returns each step's loss.

    Each step draws ``batch_size`` fresh palindromes; the loss is the cross-entropy at the masked
    positions only. Padding is hidden from attention with a key padding mask. ``num_threads``:
    torch's intra-op threads while training (restored afterwards); the tensors are tiny, so one
    thread is fastest, on a busy machine by far; ``None`` leaves the setting alone.
    """
    if not isinstance(model, TransformerEncoder):
        raise TypeError(f"model must be a TransformerEncoder, got {type(model).__name__}")

    def make_batch():
        tokens = corpus.sample(batch_size, generator)  # (N, T)
        inputs, targets = mask_tokens(tokens, corpus, rate, generator)  # (N, T), (N, T)
        return inputs, targets, tokens != PAD

    return _train(model, make_batch, steps, lr, "encoder (masked tokens)", progress, num_threads)


def train_next_token(
    model: TransformerDecoder,
    corpus: PalindromeCorpus,
    *,
    steps: int = 600,
    batch_size: int = 128,
    lr: float = 3e-3,
    generator: torch.Generator | None = None,
    progress: bool = True,
    num_threads: int | None = 1,
) -> list[float]:
    """Train the decoder to predict every next token; returns each step's loss.

    Input ``tokens[:, :-1]``, target ``tokens[:, 1:]`` (the same sequence shifted by one); the
    loss counts every real target token (symbols, ``|`` and ``<eos>``), not the padding. No
    padding mask is needed: padding only follows the real tokens, which the causal mask already
    keeps from seeing it. ``num_threads`` as in ``train_masked_lm``.
    """
    if not isinstance(model, TransformerDecoder):
        raise TypeError(f"model must be a TransformerDecoder, got {type(model).__name__}")

    def make_batch():
        tokens = corpus.sample(batch_size, generator)  # (N, T)
        inputs, targets = next_token_batch(tokens, pad_id=PAD)  # (N, T - 1) each: predict t + 1 from 0 .. t
        return inputs, targets, None

    return _train(model, make_batch, steps, lr, "decoder (next token)", progress, num_threads)


# --------------------------------------------------------------------------- blanks


def _split(correct: torch.Tensor, right: torch.Tensor, symbol: torch.Tensor) -> dict[str, float]:
    """Accuracies over the symbols that need right context, those that do not, and all symbols."""
    left = symbol & ~right
    return {
        RIGHT: correct[right].float().mean().item(),
        LEFT: correct[left].float().mean().item(),
        "all symbols": correct[symbol].float().mean().item(),
    }


def _best_symbol(logits: torch.Tensor) -> torch.Tensor:
    """The most likely *symbol* (special tokens excluded): the blank is known to hold one."""
    return len(SPECIALS) + logits[..., len(SPECIALS) :].argmax(-1)  # (..., V) -> (...)


@torch.no_grad()
def masked_token_accuracy(
    model: TransformerEncoder, tokens: torch.Tensor, corpus: PalindromeCorpus, batch_size: int = 2048
) -> dict[str, float]:
    """The encoder fills one blank at a time: every symbol of every sequence, masked on its own.

    Returns the accuracy on the first-half symbols (``"needs right context"``), the second-half
    ones (``"left context suffices"``) and all symbols.
    """
    if not isinstance(model, TransformerEncoder):
        raise TypeError(f"model must be a TransformerEncoder, got {type(model).__name__}")
    _check_tokens(tokens, corpus)
    rows, cols = corpus.is_symbol(tokens).nonzero(as_tuple=True)  # (M,) each: one blank per symbol
    inputs = tokens[rows].clone()  # (M, T): a copy of its sequence per blank
    inputs[torch.arange(len(rows)), cols] = MASK
    model.eval()
    guesses = []
    for start in range(0, len(rows), batch_size):
        x = inputs[start : start + batch_size]  # (b, T)
        logits = model(x, x != PAD)  # (b, T, V)
        c = cols[start : start + batch_size]
        guesses.append(_best_symbol(logits[torch.arange(len(x)), c]))  # (b, V) -> (b,): the guess at the blank
    correct = torch.zeros_like(tokens, dtype=torch.bool)  # (N, T)
    correct[rows, cols] = torch.cat(guesses) == tokens[rows, cols]
    return _split(correct, corpus.needs_right_context(tokens), corpus.is_symbol(tokens))


@torch.no_grad()
def next_token_accuracy(model: TransformerDecoder, tokens: torch.Tensor, corpus: PalindromeCorpus) -> dict[str, float]:
    """The decoder guesses each symbol from the tokens to its left (the logits one position earlier).

    The same symbols, split the same way, as ``masked_token_accuracy``: a direct comparison of
    what each model can infer about a blank.
    """
    if not isinstance(model, TransformerDecoder):
        raise TypeError(f"model must be a TransformerDecoder, got {type(model).__name__}")
    _check_tokens(tokens, corpus)
    model.eval()
    guesses = _best_symbol(model(tokens[:, :-1]))  # (N, T - 1, V) -> (N, T - 1): guess for the token at t + 1
    correct = torch.zeros_like(tokens, dtype=torch.bool)  # (N, T)
    correct[:, 1:] = guesses == tokens[:, 1:]
    return _split(correct, corpus.needs_right_context(tokens), corpus.is_symbol(tokens))


# --------------------------------------------------------------------------- generation


def _pad_after_eos(tokens: torch.Tensor) -> torch.Tensor:
    """Replace everything after each row's first ``<eos>`` by ``PAD``."""
    is_eos = (tokens == EOS).int()  # (N, T)
    after = torch.cumsum(is_eos, dim=-1) - is_eos > 0  # (N, T): strictly after the first <eos>
    return tokens.masked_fill(after, PAD)


@torch.no_grad()
def fill_blanks(
    model: TransformerEncoder,
    tokens: torch.Tensor,
    corpus: PalindromeCorpus,
    *,
    one_at_a_time: bool = False,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The encoder replaces every ``[MASK]`` in ``tokens (N, T)`` by a symbol; returns a new ``(N, T)``.

    All at once (default): one forward pass, every blank gets its own guess, made without
    knowing what the other blanks become. ``one_at_a_time=True``: left to right, one forward
    pass per blank, each new symbol written in before the next pass. Each guess is the most
    likely symbol, or with ``sample=True`` a symbol drawn from the model's distribution over
    the symbols (``generator``).
    """
    if not isinstance(model, TransformerEncoder):
        raise TypeError(f"model must be a TransformerEncoder, got {type(model).__name__}")
    _check_tokens(tokens, corpus)
    model.eval()
    S = len(SPECIALS)

    def choose(logits: torch.Tensor) -> torch.Tensor:  # (b, V) -> (b,): a symbol, never a special token
        if not sample:
            return _best_symbol(logits)
        probs = torch.softmax(logits[:, S:], dim=-1)  # (b, K)
        return S + torch.multinomial(probs, 1, generator=generator)[:, 0]

    out = tokens.clone()  # (N, T)
    if not one_at_a_time:
        blanks = out == MASK  # (N, T)
        if blanks.any():
            logits = model(out, out != PAD)  # (N, T, V)
            out[blanks] = choose(logits[blanks])  # (M, V) -> (M,)
        return out
    while (out == MASK).any():
        rows = (out == MASK).any(-1).nonzero(as_tuple=True)[0]  # (b,): rows with blanks left
        cols = (out[rows] == MASK).int().argmax(-1)  # (b,): each one's leftmost blank
        logits = model(out[rows], out[rows] != PAD)  # (b, T, V)
        out[rows, cols] = choose(logits[torch.arange(len(rows)), cols])  # (b, V) -> (b,)
    return out


@torch.no_grad()
def completion_exact_match(
    model: TransformerDecoder | TransformerEncoder, tokens: torch.Tensor, corpus: PalindromeCorpus
) -> tuple[float, torch.Tensor]:
    """Give a model the first half ``<bos> x_1 .. x_n |`` and let it produce the rest; score whole sequences.

    * A ``TransformerDecoder`` generates greedily, up to ``max_len`` tokens: it must also decide
      where to stop, and a completion counts only if it is exactly ``x_n .. x_1 <eos>``.
    * A ``TransformerEncoder`` cannot extend a sequence: it gets the second half as ``n``
      blanks (so it is *told* the length), ``<bos> x_1 .. x_n | _ .. _ <eos>``, and fills
      them all at once (``fill_blanks``).

    Returns:
        ``(exact-match rate, completed sequences (N, T))``, padded after ``<eos>``.
    """
    _check_tokens(tokens, corpus)
    if isinstance(model, TransformerEncoder):
        second_half = corpus.is_symbol(tokens) & ~corpus.needs_right_context(tokens)  # (N, T)
        out = fill_blanks(model, tokens.masked_fill(second_half, MASK), corpus)
    elif isinstance(model, TransformerDecoder):
        sep = (tokens == SEP).int().argmax(-1)  # (N,): the position of "|", i.e. n + 1
        out = torch.full_like(tokens, PAD)  # (N, T)
        for p in sep.unique().tolist():  # one batch per prompt length
            rows = (sep == p).nonzero(as_tuple=True)[0]
            generated = model.generate(tokens[rows, : p + 1], tokens.shape[1] - p - 1)  # (b, T)
            out[rows] = _pad_after_eos(generated)
    else:
        raise TypeError(f"model must be a TransformerDecoder or TransformerEncoder, got {type(model).__name__}")
    match = (out == tokens).all(-1)  # (N,)
    return match.float().mean().item(), out


def blank_canvas(corpus: PalindromeCorpus, halves: torch.Tensor) -> torch.Tensor:
    """``<bos> _ .. _ | _ .. _ <eos>`` with ``halves[i]`` blanks on each side, ``(N, max_len)``."""
    require_tensor(halves, "halves")
    if halves.dim() != 1 or halves.numel() == 0 or int(halves.min()) < corpus.min_half or int(halves.max()) > corpus.max_half:
        raise ValueError(
            f"halves must be (N,) lengths in [{corpus.min_half}, {corpus.max_half}], got shape "
            f"{tuple(halves.shape)} with values {halves.tolist()}"
        )
    canvas = torch.full((len(halves), corpus.max_len), PAD, dtype=torch.long)  # (N, T)
    for row, h in enumerate(halves.tolist()):
        canvas[row, : 2 * h + 3] = torch.tensor([BOS] + [MASK] * h + [SEP] + [MASK] * h + [EOS])
    return canvas


@torch.no_grad()
def sample_decoder(
    model: TransformerDecoder, corpus: PalindromeCorpus, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` new sequences from the decoder: start at ``<bos>``, sample every token (temperature 1).

    Returns ``(n, max_len)`` ids, padded after the first ``<eos>``.
    """
    if not isinstance(model, TransformerDecoder):
        raise TypeError(f"model must be a TransformerDecoder, got {type(model).__name__}")
    require_int(n, "n")
    prompt = torch.full((n, 1), BOS, dtype=torch.long)  # (n, 1)
    return _pad_after_eos(model.generate(prompt, corpus.max_len - 1, sample=True, generator=generator))


@torch.no_grad()
def sample_encoder(
    model: TransformerEncoder,
    corpus: PalindromeCorpus,
    halves: torch.Tensor,
    *,
    one_at_a_time: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """New sequences from the encoder: sample the blanks of ``blank_canvas(corpus, halves)``.

    The encoder cannot choose a length, so ``halves (N,)`` gives ``n`` for each row; the blanks
    are sampled all at once or left to right, one per forward pass (``fill_blanks``).
    Returns ``(N, max_len)`` ids.
    """
    canvas = blank_canvas(corpus, halves)  # (N, T)
    return fill_blanks(model, canvas, corpus, one_at_a_time=one_at_a_time, sample=True, generator=generator)


def valid_fraction(tokens: torch.Tensor, corpus: PalindromeCorpus) -> float:
    """The fraction of the rows of ``tokens (N, T)`` that are palindromes of ``corpus`` (``is_valid``)."""
    _check_tokens(tokens, corpus)
    return sum(corpus.is_valid(row) for row in tokens) / len(tokens)


# --------------------------------------------------------------------------- attention


def answer_positions(tokens: torch.Tensor, corpus: PalindromeCorpus, next_token: bool = False) -> torch.Tensor:
    """Where the answer of each query position lies: ``(N, T)`` key positions, ``-1`` where there is none.

    ``next_token=False`` (an encoder, which predicts the token *at* ``t``): for every symbol ``t``,
    its mirror image ``j = 2 s - t`` (``s`` the position of ``|``), to the right for the first half.
    ``next_token=True`` (a decoder, which predicts the token at ``t + 1``): the mirror of ``t + 1``,
    ``j = 2 s - t - 1``, only where ``t + 1`` is in the second half (the first half has no answer
    to the left of it).
    """
    _check_tokens(tokens, corpus)
    sep = (tokens == SEP).int().argmax(-1, keepdim=True)  # (N, 1)
    t = torch.arange(tokens.shape[1])  # (T,)
    if next_token:
        second = corpus.is_symbol(tokens) & ~corpus.needs_right_context(tokens)  # (N, T)
        has_answer = torch.zeros_like(second)
        has_answer[:, :-1] = second[:, 1:]  # query t predicts the token at t + 1
        mirror = 2 * sep - t - 1  # (N, T)
    else:
        has_answer = corpus.is_symbol(tokens)  # (N, T)
        mirror = 2 * sep - t  # (N, T)
    return torch.where(has_answer, mirror, -1)


def attention_on_answers(weights: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """The mean attention weight each head puts on the answer: ``weights (N, H, T, T)``, ``answers (N, T)`` -> ``(H,)``.

    Averaged over every query with an answer (``answers >= 0``, from ``answer_positions``).
    """
    require_tensor(weights, "weights")
    require_tensor(answers, "answers")
    if weights.dim() != 4 or answers.shape != (weights.shape[0], weights.shape[2]):
        raise shape_error("weights", weights, f"(N, H, T, T) with N, T from answers {tuple(answers.shape)}")
    n, t = (answers >= 0).nonzero(as_tuple=True)  # (M,) each
    return weights[n, :, t, answers[n, t]].mean(0)  # (M, H) -> (H,)


def plot_attention_by_model(
    weights: Mapping[str, object],
    tokens: Sequence[str],
    *,
    marks: Mapping[str, Sequence[tuple[int, int]]] | None = None,
    mark_label: str = "marked cells",
    suptitle: str | None = None,
):
    """A grid of self-attention heatmaps: one row per model, one column per head.

    Args:
        weights: model name -> its weights ``(H, T, T)`` for one sequence and one layer (all
            with the same ``H`` and ``T``); row ``t`` is the query position, column ``j`` the key.
        tokens: ``T`` labels for both axes (the tokens of the sequence).
        marks: model name -> ``(t, j)`` cells drawn as hollow red squares in each of that model's
            panels (e.g. where each position's answer is), labelled ``mark_label`` in the legend.
        suptitle: a title over the whole figure.

    Returns:
        the ``(rows, H)`` NumPy array of axes. All panels share one colour scale, 0 to 1.
    """
    import numpy as np

    check_curves(weights, "weights")
    arrays = {}
    for name, w in weights.items():
        a = np.asarray(w.detach().cpu() if hasattr(w, "detach") else w, dtype=float)
        if a.ndim != 3 or a.shape[1] != a.shape[2]:
            raise ValueError(f"weights[{name!r}] has shape {a.shape}; expected (H, T, T) = (heads, queries, keys)")
        arrays[name] = a
    H, T = next(iter(arrays.values())).shape[:2]
    for name, a in arrays.items():
        if a.shape != (H, T, T):
            raise ValueError(f"weights[{name!r}] has shape {a.shape}; expected {(H, T, T)} like the first model")
    if len(tokens) != T:
        raise ValueError(f"tokens has {len(tokens)} entries; expected T = {T} to match the weights")
    size = min(3.0, max(2.2, 0.17 * T))
    fig, axes = plt.subplots(
        len(arrays), H, figsize=(size * H + 1.0, size * len(arrays) + 0.6), squeeze=False, layout="constrained"
    )
    image = None
    for r, (name, a) in enumerate(arrays.items()):
        for h in range(H):
            ax = axes[r, h]
            image = ax.imshow(a[h], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            if marks and marks.get(name):
                ts, js = zip(*marks[name])
                ax.scatter(js, ts, marker="s", s=22, facecolors="none", edgecolors="tab:red",
                           linewidths=0.8, label=mark_label)
            ax.set_title(f"{name}, head {h}", fontsize="small")
            ax.set_xticks(range(T), list(tokens), fontsize=6, rotation=90)
            ax.set_yticks(range(T), list(tokens), fontsize=6)
            if r == len(arrays) - 1:
                ax.set_xlabel("key j", fontsize="small")
            if h == 0:
                ax.set_ylabel("query t", fontsize="small")
    if marks and any(marks.values()):
        handles, labels = next((a.get_legend_handles_labels() for a in axes.flat if a.collections), ([], []))
        fig.legend(handles[:1], labels[:1], loc="outside lower center", fontsize="small")  # matplotlib >= 3.7
    fig.colorbar(image, ax=axes, label="attention weight", shrink=0.7)
    if suptitle:
        fig.suptitle(suptitle)
    return axes
