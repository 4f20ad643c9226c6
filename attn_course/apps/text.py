"""Attention in language: attention pooling, attention over a story, attention over sentences.

Three small models, each built from the library's ``scaled_dot_product_attention`` (no new copy
of attention), and the synthetic data each one learns from:

* ``AttentionPooling``: one learned query attends over a sequence and returns the weighted
  average (Yang et al., 2016; Lin et al., 2017). ``PoolingClassifier`` puts it (or a plain mean,
  the baseline) between word embeddings and a classifier; ``make_cue_word_data`` makes
  sentiment-style sequences where a few cue words decide the label.
* ``StoryReader``: a one-hop memory network (Sukhbaatar et al., 2015): the question attends over
  the story's sentences, ``make_story_data`` makes bAbI-like stories (Weston et al., 2015).
* ``SentenceScorer``: attention pooling over sentence vectors; the weights rank sentences for an
  extractive summary, ``make_document_data`` plants the key facts.

Dimension glossary: B batch, T words in a sequence (or sentences in a story/document), W words
in a sentence, D model width, V vocabulary size, C classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._validation import require_floating, require_int, require_tensor, shape_error
from ..attention import scaled_dot_product_attention

__all__ = [
    "AttentionPooling",
    "MeanPooling",
    "PoolingClassifier",
    "CueWordData",
    "make_cue_word_data",
    "StoryData",
    "make_story_data",
    "StoryReader",
    "DocumentData",
    "make_document_data",
    "SentenceScorer",
]


def _check_sequence(x: object, name: str, width: int, mask: object) -> torch.Tensor | None:
    """Validate ``x (B, T, width)`` and the optional bool ``mask (B, T)``; return the mask."""
    require_floating(x, name)
    if x.dim() != 3 or x.shape[-1] != width:
        raise shape_error(name, x, f"(B, T, {width})")
    if mask is None:
        return None
    require_tensor(mask, "mask")
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask must be a bool tensor of shape (B, T) = {tuple(x.shape[:2])}, True = real token; "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    return mask


class AttentionPooling(nn.Module):
    """A learned query ``q`` attends over the sequence: ``pooled = sum_t softmax_t(q . W_k x_t / sqrt(D)) x_t``.

    The weights say which positions the summary is made of; padding (``mask`` False) gets none.
    Returns ``(pooled (B, D), weights (B, T))``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = require_int(dim, "dim")
        self.query = nn.Parameter(torch.randn(dim) / dim**0.5)  # q: (D,), learned, the same for every input
        self.key = nn.Linear(dim, dim)  # W_k: what each position offers to be found by

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mask = _check_sequence(x, "x", self.dim, mask)
        q = self.query.expand(x.shape[0], 1, self.dim)  # (B, 1, D): one query per sequence
        m = None if mask is None else mask[:, None, :]  # (B, 1, T)
        pooled, weights = scaled_dot_product_attention(q, self.key(x), x, m)  # (B, 1, D), (B, 1, T)
        return pooled[:, 0], weights[:, 0]  # (B, D), (B, T)


class MeanPooling(nn.Module):
    """The baseline without attention: every (real) position gets the same weight ``1 / T``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = require_int(dim, "dim")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mask = _check_sequence(x, "x", self.dim, mask)
        w = torch.ones(x.shape[:2], dtype=x.dtype) if mask is None else mask.to(x.dtype)  # (B, T)
        w = w / w.sum(-1, keepdim=True)
        return (w[..., None] * x).sum(1), w  # (B, D), (B, T)


class PoolingClassifier(nn.Module):
    """Embed words, pool them (``"attention"`` or ``"mean"``), classify: ``logits (B, C)`` and weights ``(B, T)``."""

    def __init__(self, vocab_size: int, num_classes: int, dim: int = 32, pooling: str = "attention") -> None:
        super().__init__()
        if pooling not in ("attention", "mean"):
            raise ValueError(f"pooling must be 'attention' or 'mean', got {pooling!r}")
        self.embed = nn.Embedding(require_int(vocab_size, "vocab_size"), require_int(dim, "dim"))
        # a per-word non-linearity first, so both poolings average the same kind of features
        self.word = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.pool = AttentionPooling(dim) if pooling == "attention" else MeanPooling(dim)
        self.head = nn.Linear(dim, require_int(num_classes, "num_classes"))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, weights = self.pool(self.word(self.embed(tokens)), mask)  # (B, D), (B, T)
        return self.head(pooled), weights  # (B, C), (B, T)


# ----------------------------------------------------------------------------- sentiment-style data


@dataclass
class CueWordData:
    tokens: torch.Tensor  # (N, T) word ids, 0 = padding
    mask: torch.Tensor  # (N, T) bool, True = real word
    labels: torch.Tensor  # (N,) 1 = positive, 0 = negative
    cue: torch.Tensor  # (N, T) bool, True = a cue word (the words that decide the label)
    vocab: list[str]  # id -> word


POSITIVE = ["great", "superb", "loved"]
NEGATIVE = ["awful", "boring", "hated"]


def make_cue_word_data(n: int, generator: torch.Generator, min_len: int = 16, max_len: int = 40,
                       num_fillers: int = 60, max_cues: int = 2) -> CueWordData:
    """``n`` reviews of filler words with 1..``max_cues`` cue words of the label's polarity.

    Fillers are neutral words (``w0``, ``w1``, ...) drawn uniformly, so they say nothing about the
    label; their average drowns the one or two cue words in long reviews.
    """
    n, min_len, max_len = require_int(n, "n"), require_int(min_len, "min_len"), require_int(max_len, "max_len")
    vocab = ["<pad>", *POSITIVE, *NEGATIVE, *[f"w{i}" for i in range(num_fillers)]]
    first_filler = 1 + len(POSITIVE) + len(NEGATIVE)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=generator)
    tokens = torch.randint(first_filler, len(vocab), (n, max_len), generator=generator)
    mask = torch.arange(max_len)[None, :] < lengths[:, None]  # (N, T)
    labels = torch.randint(0, 2, (n,), generator=generator)
    cue = torch.zeros(n, max_len, dtype=torch.bool)
    for i in range(n):
        k = int(torch.randint(1, max_cues + 1, (1,), generator=generator))
        pos = torch.randperm(int(lengths[i]), generator=generator)[:k]
        base = 1 if labels[i] == 1 else 1 + len(POSITIVE)
        tokens[i, pos] = base + torch.randint(0, len(POSITIVE), (k,), generator=generator)
        cue[i, pos] = True
    tokens = tokens.masked_fill(~mask, 0)
    return CueWordData(tokens, mask, labels, cue, vocab)


# ----------------------------------------------------------------------------- question answering


@dataclass
class StoryData:
    people: torch.Tensor  # (N, T) who moved in sentence t (person id)
    places: torch.Tensor  # (N, T) where they went (place id)
    question: torch.Tensor  # (N,) the person asked about: "Where is <person>?"
    answer: torch.Tensor  # (N,) the place id
    support: torch.Tensor  # (N,) index of the supporting sentence (the last one about that person)
    names: list[str]
    rooms: list[str]


NAMES = ["Mary", "John", "Sandra", "Daniel", "Emma", "Liam", "Olivia", "Noah"]
ROOMS = ["kitchen", "garden", "office", "hallway", "bedroom", "bathroom"]


def make_story_data(n: int, generator: torch.Generator, num_sentences: int = 6) -> StoryData:
    """bAbI task-1-like stories: ``num_sentences`` sentences "<person> went to the <room>."

    The question asks where one person is; the answer is the room of the *last* sentence about
    them (people may move twice), the supporting fact.
    """
    n, T = require_int(n, "n"), require_int(num_sentences, "num_sentences")
    people = torch.randint(0, len(NAMES), (n, T), generator=generator)
    places = torch.randint(0, len(ROOMS), (n, T), generator=generator)
    pick = torch.randint(0, T, (n,), generator=generator)
    question = people[torch.arange(n), pick]
    later = (people == question[:, None]) * torch.arange(1, T + 1)  # (N, T): t + 1 where the person moved
    support = later.argmax(-1)  # the last sentence about the person
    answer = places[torch.arange(n), support]
    return StoryData(people, places, question, answer, support, NAMES, ROOMS)


class StoryReader(nn.Module):
    """Encode each sentence, let the question attend over them (``attention=True``) or average them.

    Sentence ``t`` becomes ``m_t = MLP([e(person_t); e(place_t)]) + p_t`` with a learned time
    embedding ``p_t`` (so later facts can win); the question ``e(person)`` is the query. With
    attention the answer is read from the attended memory; the baseline reads the mean memory
    together with the question. Returns ``(logits (B, rooms), weights (B, T))``.
    """

    def __init__(self, num_people: int, num_places: int, max_sentences: int = 16, dim: int = 32,
                 attention: bool = True) -> None:
        super().__init__()
        self.attention = attention
        self.person = nn.Embedding(require_int(num_people, "num_people"), dim)
        self.place = nn.Embedding(require_int(num_places, "num_places"), dim)
        self.time = nn.Embedding(require_int(max_sentences, "max_sentences"), dim)
        self.sentence = nn.Sequential(nn.Linear(2 * dim, dim), nn.Tanh(), nn.Linear(dim, dim))
        self.key = nn.Linear(dim, dim)  # W_k: sentence -> key (the person and the time)
        self.value = nn.Linear(dim, dim)  # W_v: sentence -> what is read (the place)
        self.out = nn.Sequential(nn.Linear(2 * dim, dim), nn.Tanh(), nn.Linear(dim, num_places))

    def forward(self, people: torch.Tensor, places: torch.Tensor, question: torch.Tensor):
        T = people.shape[1]
        m = self.sentence(torch.cat([self.person(people), self.place(places)], -1))  # (B, T, D)
        m = m + self.time(torch.arange(T))  # (B, T, D)
        q = self.person(question)[:, None, :]  # (B, 1, D)
        if self.attention:
            read, weights = scaled_dot_product_attention(q, self.key(m), self.value(m))  # (B, 1, D), (B, 1, T)
            read, weights = read[:, 0], weights[:, 0]  # (B, D), (B, T)
        else:
            weights = torch.full(people.shape, 1.0 / T)  # (B, T): the same for every sentence
            read = self.value(m).mean(1)  # (B, D)
        return self.out(torch.cat([read, q[:, 0]], -1)), weights  # (B, rooms), (B, T)


# ----------------------------------------------------------------------------- extractive summaries


@dataclass
class DocumentData:
    words: torch.Tensor  # (N, T, W) word ids of each sentence
    topic: torch.Tensor  # (N,) the document's topic (which key-fact words it plants)
    key: torch.Tensor  # (N, T) bool, True = a key-fact sentence
    vocab_size: int
    num_topics: int


def make_document_data(n: int, generator: torch.Generator, num_sentences: int = 10, sentence_len: int = 6,
                       num_topics: int = 4, key_sentences: int = 2, num_fillers: int = 40) -> DocumentData:
    """Documents of ``num_sentences`` filler sentences; ``key_sentences`` of them carry a key-fact word.

    Words ``0 .. num_topics - 1`` are the key-fact words (one per topic); the rest are fillers.
    A key-fact sentence is one filler sentence with one word replaced by the topic's word.
    """
    n, T, W = require_int(n, "n"), require_int(num_sentences, "num_sentences"), require_int(sentence_len, "sentence_len")
    vocab = num_topics + num_fillers
    words = torch.randint(num_topics, vocab, (n, T, W), generator=generator)
    topic = torch.randint(0, num_topics, (n,), generator=generator)
    key = torch.zeros(n, T, dtype=torch.bool)
    for i in range(n):
        rows = torch.randperm(T, generator=generator)[:key_sentences]
        cols = torch.randint(0, W, (key_sentences,), generator=generator)
        words[i, rows, cols] = topic[i]
        key[i, rows] = True
    return DocumentData(words, topic, key, vocab, num_topics)


class SentenceScorer(nn.Module):
    """Sentence vectors (mean of word features), attention pooling over them, topic classifier.

    Trained only to name the document's topic; the attention weights over sentences then rank
    them for an extractive summary. Returns ``(logits (B, topics), weights (B, T))``.
    """

    def __init__(self, vocab_size: int, num_topics: int, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(require_int(vocab_size, "vocab_size"), dim)
        self.word = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.pool = AttentionPooling(dim)
        self.head = nn.Linear(dim, require_int(num_topics, "num_topics"))

    def forward(self, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if words.dim() != 3:
            raise shape_error("words", words, "(B, T, W) word ids: T sentences of W words")
        sentences = self.word(self.embed(words)).mean(2)  # (B, T, W, D) -> (B, T, D)
        pooled, weights = self.pool(sentences)  # (B, D), (B, T)
        return self.head(pooled), weights
