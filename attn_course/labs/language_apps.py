"""Chapter 11's experiments: attention pooling, story QA and extractive summaries, each against a baseline.

Every run trains two small models on the same synthetic data with the same budget, one with
attention and one without, and returns their test numbers and the attention weights to draw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from ..apps.text import (
    PoolingClassifier,
    SentenceScorer,
    StoryReader,
    make_cue_word_data,
    make_document_data,
    make_story_data,
)
from ..utils import num_threads, seed_everything
from .training import fit

__all__ = [
    "SentimentResult",
    "run_sentiment",
    "QAResult",
    "run_story_qa",
    "SummaryResult",
    "run_summaries",
    "plot_word_weights",
    "plot_story_weights",
    "plot_sentence_weights",
]


# ----------------------------------------------------------------------------- sentiment


@dataclass
class SentimentResult:
    accuracy: dict[str, float]  # test accuracy per pooling ("attention", "mean")
    cue_weight: float  # mean total attention weight on the cue words (test set)
    weights: torch.Tensor  # (N, T) attention weights on the test set
    data: object  # the test CueWordData
    seconds: float


def run_sentiment(steps: int = 200, n_train: int = 2000, n_test: int = 500, test_len: tuple[int, int] = (150, 300),
                  seed: int = 0, progress: bool = True) -> SentimentResult:
    """Attention pooling vs mean pooling on cue-word reviews, the same budget for both.

    Training reviews have 16 to 40 words; the test reviews are longer (``test_len``), as real
    reviews vary: a mean dilutes its one or two cue words by the length, attention does not.
    """
    start = time.perf_counter()
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    train = make_cue_word_data(n_train, g)
    test = make_cue_word_data(n_test, g, min_len=test_len[0], max_len=test_len[1])
    acc, weights = {}, None
    with num_threads(1):
        for pooling in ("attention", "mean"):
            torch.manual_seed(seed)
            model = PoolingClassifier(len(train.vocab), 2, pooling=pooling)
            fit(model, lambda i, m=model: F.cross_entropy(m(train.tokens[i], train.mask[i])[0], train.labels[i]),
                n_train, steps, seed=seed, desc=f"{pooling} pooling", progress=progress)
            with torch.no_grad():
                logits, w = model(test.tokens, test.mask)
            acc[pooling] = (logits.argmax(-1) == test.labels).float().mean().item()
            if pooling == "attention":
                weights = w
    cue_weight = (weights * test.cue).sum(-1).mean().item()
    return SentimentResult(acc, cue_weight, weights, test, time.perf_counter() - start)


def plot_word_weights(result: SentimentResult, index: int = 0, window: int = 30, ax=None):
    """``window`` words of one test review around its first cue word: a bar per word, its attention weight."""
    d = result.data
    n = int(d.mask[index].sum())
    first = int(torch.nonzero(d.cue[index])[0])
    lo = max(0, min(first - window // 2, n - window))
    hi = min(n, lo + window)
    words = [d.vocab[int(t)] for t in d.tokens[index, lo:hi]]
    w = result.weights[index, lo:hi].numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 3.0))
    colors = ["#c51b7d" if c else "#9a9a9a" for c in d.cue[index, lo:hi].tolist()]
    ax.bar(range(hi - lo), w, color=colors)
    ax.set_xticks(range(hi - lo), words, rotation=90, fontsize=8)
    ax.set_ylabel("attention weight")
    ax.set_xlabel(f"words {lo + 1} to {hi} of {n}")
    label = "positive" if int(d.labels[index]) == 1 else "negative"
    ax.set_title(f"Attention pooling over one {label} review (cue words in magenta)")
    ax.figure.tight_layout()
    return ax


# ----------------------------------------------------------------------------- question answering


@dataclass
class QAResult:
    accuracy: dict[str, float]  # test accuracy ("attention", "mean")
    support_weight: float  # mean attention weight on the supporting sentence (test set)
    support_top: float  # share of questions whose most-attended sentence is the supporting one
    weights: torch.Tensor  # (N, T)
    data: object
    seconds: float


def run_story_qa(steps: int = 400, n_train: int = 3000, n_test: int = 500, seed: int = 0,
                 progress: bool = True) -> QAResult:
    """One-hop attention over the story vs reading the mean of its sentences."""
    start = time.perf_counter()
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    train, test = make_story_data(n_train, g), make_story_data(n_test, g)
    acc, weights = {}, None
    with num_threads(1):
        for name, attention in (("attention", True), ("mean", False)):
            torch.manual_seed(seed)
            model = StoryReader(len(train.names), len(train.rooms), attention=attention)

            def loss(i, m=model):
                return F.cross_entropy(m(train.people[i], train.places[i], train.question[i])[0], train.answer[i])

            fit(model, loss, n_train, steps, seed=seed, desc=f"story QA ({name})", progress=progress)
            with torch.no_grad():
                logits, w = model(test.people, test.places, test.question)
            acc[name] = (logits.argmax(-1) == test.answer).float().mean().item()
            if attention:
                weights = w
    rows = torch.arange(len(test.answer))
    return QAResult(acc, weights[rows, test.support].mean().item(),
                    (weights.argmax(-1) == test.support).float().mean().item(), weights, test,
                    time.perf_counter() - start)


def plot_story_weights(result: QAResult, index: int = 0, ax=None):
    """One story, one sentence per row, with the question's attention weight on each."""
    d = result.data
    sentences = [f"{d.names[int(p)]} went to the {d.rooms[int(r)]}." for p, r in zip(d.people[index], d.places[index])]
    w = result.weights[index].numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 2.8))
    colors = ["#c51b7d" if t == int(d.support[index]) else "#9a9a9a" for t in range(len(sentences))]
    ax.barh(range(len(sentences)), w, color=colors)
    ax.set_yticks(range(len(sentences)), sentences)
    ax.invert_yaxis()
    ax.set_xlabel("attention weight from the question")
    ax.set_title(f"Where is {d.names[int(d.question[index])]}? (supporting fact in magenta)")
    ax.figure.tight_layout()
    return ax


# ----------------------------------------------------------------------------- summaries


@dataclass
class SummaryResult:
    topic_accuracy: float  # test accuracy of the topic classifier the weights come from
    recall: dict[str, float]  # share of key sentences in the top-k summary ("attention", "lead", "random")
    weights: torch.Tensor  # (N, T)
    data: object
    seconds: float


def run_summaries(steps: int = 300, n_train: int = 2000, n_test: int = 500, seed: int = 0,
                  progress: bool = True) -> SummaryResult:
    """Train the topic classifier, then summarise each test document by its top-k attended sentences.

    Baselines without attention: the first k sentences (lead-k, the classic news baseline) and k
    random sentences.
    """
    start = time.perf_counter()
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    train, test = make_document_data(n_train, g), make_document_data(n_test, g)
    k = int(test.key[0].sum())
    with num_threads(1):
        torch.manual_seed(seed)
        model = SentenceScorer(train.vocab_size, train.num_topics)
        fit(model, lambda i: F.cross_entropy(model(train.words[i])[0], train.topic[i]), n_train, steps, seed=seed,
            desc="sentence attention", progress=progress)
        with torch.no_grad():
            logits, weights = model(test.words)
    acc = (logits.argmax(-1) == test.topic).float().mean().item()

    def recall(picked):  # (N, k) sentence indices
        return test.key.gather(1, picked).float().sum(1).div(k).mean().item()

    N, T = test.key.shape
    rand = torch.stack([torch.randperm(T, generator=g)[:k] for _ in range(N)])
    rec = {"attention": recall(weights.topk(k, -1).indices), "lead": recall(torch.arange(k).expand(N, k)),
           "random": recall(rand)}
    return SummaryResult(acc, rec, weights, test, time.perf_counter() - start)


def plot_sentence_weights(result: SummaryResult, count: int = 8, ax=None):
    """Attention over the sentences of ``count`` test documents; key-fact sentences outlined."""
    w = result.weights[:count].numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.2))
    im = ax.imshow(w, cmap="Purples", vmin=0, aspect="auto")
    rows, cols = torch.nonzero(result.data.key[:count], as_tuple=True)
    ax.scatter(cols, rows, marker="s", s=160, facecolors="none", edgecolors="#c51b7d", linewidths=2,
               label="key-fact sentence")
    ax.set_xlabel("sentence in the document")
    ax.set_ylabel("document")
    ax.set_title("Attention over sentences (the summary takes the top weights)")
    ax.legend(loc="upper right", bbox_to_anchor=(1.0, -0.18), fontsize=8)
    ax.figure.colorbar(im, ax=ax, label="weight")
    ax.figure.tight_layout()
    return ax
