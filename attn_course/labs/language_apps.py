"""Chapter 11's experiments: attention pooling, story QA and extractive summaries, each against a baseline.

Every run trains two small models on the same synthetic data with the same budget, one with
attention and one without, and returns their test numbers, the trained models and the attention
weights to draw. The probes then ask the trained models what the chapter's prose claims: reviews
with cue words of both polarities (:func:`mixed_cue_probe`), the story reader with its weights
replaced by ``1/T`` (:func:`accuracy_with_uniform_weights`) or trained without its time embedding
(``run_story_qa(time_embedding=False)``, :func:`accuracy_by_moves`), what the mean read-out
answers (:func:`mean_readout_guesses`), and the summariser with its most- or least-attended
sentences erased (:func:`erase_sentences`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from ..apps.text import (
    POSITIVE,
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
    "MixedCues",
    "mixed_cue_probe",
    "QAResult",
    "run_story_qa",
    "accuracy_with_uniform_weights",
    "MovesBreakdown",
    "accuracy_by_moves",
    "mean_readout_guesses",
    "SummaryResult",
    "run_summaries",
    "erase_sentences",
    "plot_word_weights",
    "plot_story_weights",
    "plot_sentence_weights",
]


# ----------------------------------------------------------------------------- sentiment


@dataclass
class SentimentResult:
    accuracy: dict[str, float]  # test accuracy per pooling ("attention", "mean") on the long reviews
    cue_weight: float  # mean total attention weight on the cue words (long test reviews)
    weights: torch.Tensor  # (N, T) attention weights on the long test reviews
    data: object  # the long test CueWordData
    seconds: float
    accuracy_short: dict[str, float] = field(default_factory=dict)  # the same, on reviews of the training lengths
    models: dict[str, PoolingClassifier] = field(default_factory=dict)  # the trained models, per pooling
    cue_share: dict[str, float] = field(default_factory=dict)  # share of the words that are cue words: "short", "long"


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
    short = make_cue_word_data(n_test, g)  # held-out reviews of the training lengths
    acc, acc_short, models, weights = {}, {}, {}, None
    with num_threads(1):
        for pooling in ("attention", "mean"):
            torch.manual_seed(seed)
            model = PoolingClassifier(len(train.vocab), 2, pooling=pooling)
            fit(model, lambda i, m=model: F.cross_entropy(m(train.tokens[i], train.mask[i])[0], train.labels[i]),
                n_train, steps, seed=seed, desc=f"{pooling} pooling", progress=progress)
            with torch.no_grad():
                logits, w = model(test.tokens, test.mask)
                short_logits, _ = model(short.tokens, short.mask)
            acc[pooling] = (logits.argmax(-1) == test.labels).float().mean().item()
            acc_short[pooling] = (short_logits.argmax(-1) == short.labels).float().mean().item()
            models[pooling] = model
            if pooling == "attention":
                weights = w
    cue_weight = (weights * test.cue).sum(-1).mean().item()
    share = {name: (d.cue.sum() / d.mask.sum()).item() for name, d in (("short", short), ("long", test))}
    return SentimentResult(acc, cue_weight, weights, test, time.perf_counter() - start, acc_short, models, share)


@dataclass
class MixedCues:
    positive: dict[str, float]  # share of mixed reviews each model calls positive
    confidence: dict[str, float]  # mean probability of the predicted label, on mixed reviews
    confidence_single: dict[str, float]  # the same on ordinary (one-polarity) reviews of the same lengths
    cue_weight: float  # attention: mean total weight on the cue words of a mixed review
    minority_share: float  # attention: mean share of that cue weight on the less-attended polarity


@torch.no_grad()
def mixed_cue_probe(result: SentimentResult, n: int = 500, per_polarity: int = 5, length: tuple[int, int] = (30, 40),
                    seed: int = 1) -> MixedCues:
    """Reviews with ``per_polarity`` positive *and* ``per_polarity`` negative cue words (never seen in training).

    Both trained models classify them; for attention pooling, how its weight on the cue words is
    split between the polarities.
    """
    g = torch.Generator().manual_seed(seed)
    d = make_cue_word_data(n, g, min_len=length[0], max_len=length[1], max_cues=1)
    n_cues = len(POSITIVE)
    tokens, pos, neg = d.tokens.clone(), torch.zeros_like(d.mask), torch.zeros_like(d.mask)
    tokens[d.cue] = 1 + 2 * n_cues  # the planted cue becomes a filler word ("w0"): the cues are placed below
    for i in range(n):
        places = torch.randperm(int(d.mask[i].sum()), generator=g)[: 2 * per_polarity]  # distinct positions
        p, q = places[:per_polarity], places[per_polarity:]
        tokens[i, p] = 1 + torch.randint(0, n_cues, (per_polarity,), generator=g)  # positive cue ids
        tokens[i, q] = 1 + n_cues + torch.randint(0, n_cues, (per_polarity,), generator=g)  # negative cue ids
        pos[i, p], neg[i, q] = True, True
    positive, confidence, confidence_single = {}, {}, {}
    weights = None
    for pooling, model in result.models.items():
        logits, w = model(tokens, d.mask)
        prob = logits.softmax(-1)  # (N, 2)
        positive[pooling] = (prob.argmax(-1) == 1).float().mean().item()
        confidence[pooling] = prob.max(-1).values.mean().item()
        confidence_single[pooling] = model(d.tokens, d.mask)[0].softmax(-1).max(-1).values.mean().item()
        if pooling == "attention":
            weights = w
    on_pos, on_neg = (weights * pos).sum(-1), (weights * neg).sum(-1)  # (N,), (N,)
    total = on_pos + on_neg
    minority = torch.minimum(on_pos, on_neg) / total
    return MixedCues(positive, confidence, confidence_single, total.mean().item(), minority.mean().item())


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
    accuracy: dict[str, float]  # test accuracy per read-out ("attention", "mean")
    support_weight: float  # mean attention weight on the supporting sentence (test set)
    support_top: float  # share of questions whose most-attended sentence is the supporting one
    weights: torch.Tensor  # (N, T)
    data: object
    seconds: float
    models: dict[str, StoryReader] = field(default_factory=dict)  # the trained readers, per read-out


def run_story_qa(steps: int = 400, n_train: int = 3000, n_test: int = 500, seed: int = 0, progress: bool = True,
                 time_embedding: bool = True, readouts: tuple[str, ...] = ("attention", "mean")) -> QAResult:
    """One-hop attention over the story vs reading the mean of its sentences.

    ``time_embedding=False`` is the ablation: the time embedding is fixed at zero (and not
    trained), so the memories carry no order. ``readouts`` picks the models to train;
    ``"attention"`` must be one of them.
    """
    if "attention" not in readouts or not set(readouts) <= {"attention", "mean"}:
        raise ValueError(f"readouts must hold 'attention' and optionally 'mean', got {readouts!r}")
    start = time.perf_counter()
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    train, test = make_story_data(n_train, g), make_story_data(n_test, g)
    acc, models, weights = {}, {}, None
    with num_threads(1):
        for name in readouts:
            attention = name == "attention"
            torch.manual_seed(seed)
            model = StoryReader(len(train.names), len(train.rooms), attention=attention)
            if not time_embedding:
                model.time.weight.data.zero_()
                model.time.weight.requires_grad_(False)  # Adam skips it: the memories stay unordered

            def loss(i, m=model):
                return F.cross_entropy(m(train.people[i], train.places[i], train.question[i])[0], train.answer[i])

            fit(model, loss, n_train, steps, seed=seed, desc=f"story QA ({name})", progress=progress)
            with torch.no_grad():
                logits, w = model(test.people, test.places, test.question)
            acc[name] = (logits.argmax(-1) == test.answer).float().mean().item()
            models[name] = model
            if attention:
                weights = w
    rows = torch.arange(len(test.answer))
    return QAResult(acc, weights[rows, test.support].mean().item(),
                    (weights.argmax(-1) == test.support).float().mean().item(), weights, test,
                    time.perf_counter() - start, models)


@torch.no_grad()
def accuracy_with_uniform_weights(result: QAResult) -> float:
    """The trained attention reader with every weight replaced by ``1/T`` at inference, nothing retrained.

    ``StoryReader.forward`` with ``attention=False`` reads ``mean_t W_v m_t``, which is exactly
    ``sum_t (1/T) W_v m_t``: switching the flag on the trained model is the intervention.
    """
    model, d = result.models["attention"], result.data
    model.attention = False
    try:
        logits, _ = model(d.people, d.places, d.question)
    finally:
        model.attention = True
    return (logits.argmax(-1) == d.answer).float().mean().item()


@dataclass
class MovesBreakdown:
    accuracy: dict[str, dict[str, float]]  # read-out -> {"once": ..., "several": ...}
    share_several: float  # share of test questions in the "several" group
    random_pick: float  # accuracy, on "several", of answering the room of a random sentence about the person
    support_share: float  # attention: mean share of the weight on the person's sentences given to the last one


@torch.no_grad()
def accuracy_by_moves(result: QAResult) -> MovesBreakdown:
    """Accuracy on questions about a person with one sentence ("once") or several in different rooms ("several").

    For "several", only the order of the sentences tells which room is the answer.
    """
    d = result.data
    about = d.people == d.question[:, None]  # (N, T): the sentences about the asked person
    in_answer_room = about & (d.places == d.answer[:, None])  # (N, T)
    once = about.sum(-1) == 1  # (N,)
    several = (about & ~in_answer_room).any(-1)  # (N,): an earlier room differs from the answer
    acc = {}
    for name, model in result.models.items():
        right = model(d.people, d.places, d.question)[0].argmax(-1) == d.answer  # (N,)
        acc[name] = {"once": right[once].float().mean().item(), "several": right[several].float().mean().item()}
    pick = in_answer_room.sum(-1).float() / about.sum(-1)  # (N,): chance a random sentence about them is right
    rows = torch.arange(len(d.answer))
    share = result.weights[rows, d.support] / (result.weights * about).sum(-1)  # (N,)
    return MovesBreakdown(acc, several.float().mean().item(), pick[several].mean().item(),
                          share[several].mean().item())


@torch.no_grad()
def mean_readout_guesses(result: QAResult) -> dict[str, float]:
    """Where the mean read-out's answers come from, on the test questions.

    ``"in_story"``: share of its answers that are rooms the story mentions; ``"of_person"``: rooms
    of a sentence about the asked person; ``"guess_in_story"``: the accuracy of a uniform guess among
    the story's rooms; ``"guess_of_person"``: among the asked person's rooms.
    """
    d = result.data
    pred = result.models["mean"](d.people, d.places, d.question)[0].argmax(-1)  # (N,)
    about = d.people == d.question[:, None]  # (N, T)
    rooms = torch.arange(len(d.rooms))
    in_story = (d.places[:, :, None] == rooms).any(1)  # (N, rooms): rooms the story mentions
    of_person = ((d.places[:, :, None] == rooms) & about[:, :, None]).any(1)  # (N, rooms)
    rows = torch.arange(len(pred))
    return {"in_story": in_story[rows, pred].float().mean().item(),
            "of_person": of_person[rows, pred].float().mean().item(),
            "guess_in_story": (1 / in_story.sum(-1).float()).mean().item(),
            "guess_of_person": (1 / of_person.sum(-1).float()).mean().item()}


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
    model: SentenceScorer | None = None  # the trained classifier


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
    return SummaryResult(acc, rec, weights, test, time.perf_counter() - start, model)


@torch.no_grad()
def erase_sentences(result: SummaryResult, seed: int = 1) -> dict[str, float]:
    """Topic accuracy after the k most-attended, the k least-attended or k random sentences are rewritten
    as fresh filler sentences (k = the number of key sentences), and before (``"none"``).

    If the weights are faithful to the decision, erasing the most-attended sentences should destroy
    it and erasing the least-attended ones should not change it.
    """
    d, model = result.data, result.model
    N, T, W = d.words.shape
    k = int(d.key[0].sum())
    g = torch.Generator().manual_seed(seed)
    filler = torch.randint(d.num_topics, d.vocab_size, (N, k, W), generator=g)  # (N, k, W): no topic word
    picks = {"most attended": result.weights.topk(k, -1).indices,
             "least attended": (-result.weights).topk(k, -1).indices,
             "random": torch.stack([torch.randperm(T, generator=g)[:k] for _ in range(N)])}
    out = {"none": (model(d.words)[0].argmax(-1) == d.topic).float().mean().item()}
    for name, rows in picks.items():  # rows: (N, k) sentence indices
        words = d.words.clone()
        words.scatter_(1, rows[:, :, None].expand(N, k, W), filler)  # (N, T, W)
        out[name] = (model(words)[0].argmax(-1) == d.topic).float().mean().item()
    return out


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
