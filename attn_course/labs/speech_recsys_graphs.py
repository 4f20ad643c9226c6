"""Chapter 13's experiments: speech alignment, next-item recommendation, graph attention.

Each run trains the attention model and its baseline without attention on the same synthetic
data and budget, and returns the numbers and weights the chapter prints, asserts and draws.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from ..apps.graphs import GraphClassifier, make_community_graph
from ..apps.recsys import SASRec, hit_rate, last_item_scores, make_histories, popularity_scores
from ..apps.speech import ListenAttendSpell, make_speech_data
from ..seq2seq import PAD
from ..utils import num_threads, seed_everything
from .training import fit, run_steps

__all__ = [
    "SpeechResult",
    "run_speech",
    "plot_alignment",
    "RecsysResult",
    "run_recsys",
    "plot_history_attention",
    "GraphResult",
    "run_graph",
    "plot_neighbour_weights",
]


# ----------------------------------------------------------------------------- speech


@dataclass
class SpeechResult:
    accuracy: dict[str, float]  # label accuracy of greedy transcripts ("attention", "fixed")
    diagonal: float  # share of labels whose most-attended frame pair lies inside that label's frames
    weights: torch.Tensor  # (N, steps, S // 2) attention of the test set
    data: object
    seconds: float


def run_speech(steps: int = 250, n_train: int = 1500, n_test: int = 300, seed: int = 0,
               progress: bool = True) -> SpeechResult:
    """Listen-Attend-Spell with Bahdanau attention vs the same listener with a fixed-context speller."""
    start = time.perf_counter()
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    train, test = make_speech_data(n_train, g), make_speech_data(n_test, g)
    acc, weights = {}, None
    steps_out = test.labels.shape[1]
    real = test.labels != PAD  # (N, L + 1): labels and EOS
    with num_threads(1):
        for name, attention in (("attention", True), ("fixed", False)):
            torch.manual_seed(seed)
            model = ListenAttendSpell(train.vocab_size, attention=attention)

            def loss(i, m=model):
                logits, _ = m(train.frames[i], train.frame_lengths[i], train.labels[i])
                return F.cross_entropy(logits.flatten(0, 1), train.labels[i].flatten(), ignore_index=PAD)

            fit(model, loss, n_train, steps, lr=5e-3, seed=seed, desc=f"speech ({name})", progress=progress)
            tokens, w = model.transcribe(test.frames, test.frame_lengths, steps_out)
            acc[name] = ((tokens == test.labels) & real).sum().item() / real.sum().item()
            if attention:
                weights = w
    hits = total = 0
    for i, starts in enumerate(test.boundaries):  # frame pair p holds frames 2p, 2p + 1
        ends = starts[1:] + [int(test.frame_lengths[i])]
        for t, (a, b) in enumerate(zip(starts, ends)):
            p = int(weights[i, t].argmax())
            hits += a <= 2 * p + 1 and 2 * p < b
            total += 1
    return SpeechResult(acc, hits / total, weights, test, time.perf_counter() - start)


def plot_alignment(result: SpeechResult, index: int = 0, ax=None):
    """One utterance: each emitted label's attention over the frame pairs, true label spans outlined."""
    d = result.data
    L = int(d.label_lengths[index])
    S2 = (int(d.frame_lengths[index]) + 1) // 2
    w = result.weights[index, :L + 1, :S2].numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.2))
    im = ax.imshow(w, cmap="Purples", aspect="auto", vmin=0)
    starts = d.boundaries[index] + [int(d.frame_lengths[index])]
    for t in range(L):
        ax.add_patch(plt.Rectangle((starts[t] / 2 - 0.5, t - 0.5), (starts[t + 1] - starts[t]) / 2, 1,
                                   fill=False, edgecolor="#c51b7d", lw=1.5))
    ax.set_yticks(range(L + 1), [f"label {t + 1}" for t in range(L)] + ["EOS"])
    ax.set_xlabel("frame pair (listener state)")
    ax.set_ylabel("emitted label")
    ax.set_title("Speller attention over the audio (true frames of each label outlined)")
    ax.figure.colorbar(im, ax=ax, label="weight")
    ax.figure.tight_layout()
    return ax


# ----------------------------------------------------------------------------- recommendation


@dataclass
class RecsysResult:
    hit_rate: dict[str, float]  # HR@10 of the held-out next item ("sasrec", "popularity", "last item")
    weights: torch.Tensor  # (N, T) last position's attention over the history (last block, mean of heads)
    lag_weight: dict[int, float]  # mean weight on the item `lag` steps back (lag 0 = the last item)
    items: torch.Tensor  # (N, T) test histories (inputs)
    seconds: float


def run_recsys(steps: int = 300, n_train: int = 3000, n_test: int = 500, seed: int = 0,
               progress: bool = True) -> RecsysResult:
    """SASRec vs popularity and last-item baselines: hit rate@10 of each test user's last item."""
    start = time.perf_counter()
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    train, test = make_histories(n_train, g), make_histories(n_test, g)
    V = train.num_items
    x_test, y_test = test.items[:, :-1], test.items[:, -1]
    with num_threads(1):
        torch.manual_seed(seed)
        model = SASRec(V)

        def loss(i):
            scores, _ = model(train.items[i, :-1])  # (b, T - 1, V): every position predicts the next item
            return F.cross_entropy(scores.flatten(0, 1), train.items[i, 1:].flatten())

        fit(model, loss, n_train, steps, lr=5e-3, seed=seed, desc="SASRec", progress=progress)
        with torch.no_grad():
            scores, maps = model(x_test)
    hr = {"sasrec": hit_rate(scores[:, -1], y_test),
          "popularity": hit_rate(popularity_scores(train.items, V).expand(len(y_test), V), y_test),
          "last item": hit_rate(last_item_scores(train.items, V)[x_test[:, -1]], y_test)}
    w = maps[-1].mean(1)[:, -1]  # (N, T): the last position's weights, averaged over heads
    T = w.shape[1]
    lag = {k: w[:, T - 1 - k].mean().item() for k in range(min(4, T))}
    return RecsysResult(hr, w, lag, x_test, time.perf_counter() - start)


def plot_history_attention(result: RecsysResult, count: int = 3, ax=None):
    """The last position's attention over the history for a few users, items as labels."""
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 2.6))
    w = result.weights[:count].numpy()
    im = ax.imshow(w, cmap="Purples", vmin=0, aspect="auto")
    for r in range(count):
        for c in range(w.shape[1]):
            ax.text(c, r, str(int(result.items[r, c])), ha="center", va="center", fontsize=8,
                    color="white" if w[r, c] > 0.5 * w.max() else "black")
    T = w.shape[1]
    ax.set_xticks(range(T), [f"t-{T - 1 - c}" if c < T - 1 else "last" for c in range(T)], fontsize=8)
    ax.set_yticks(range(count), [f"user {r}" for r in range(count)])
    ax.set_xlabel("position in the history (item ids in the cells)")
    ax.set_title("What the next-item prediction attends to")
    ax.figure.colorbar(im, ax=ax, label="weight")
    ax.figure.tight_layout()
    return ax


# ----------------------------------------------------------------------------- graphs


@dataclass
class GraphResult:
    accuracy: dict[str, float]  # test accuracy on uninformative unlabelled nodes ("attention", "mean")
    informative_weight: float  # mean GAT weight (heads averaged) an uninformative node puts on informative neighbours
    informative_share: float  # the same under mean aggregation (share of its neighbours that are informative)
    weights: torch.Tensor  # (n, n) GAT weights, heads averaged
    graph: object
    seconds: float


def run_graph(steps: int = 200, seed: int = 0, progress: bool = True) -> GraphResult:
    """A GAT layer vs mean aggregation (GCN-style) on the community graph, full-batch training."""
    start = time.perf_counter()
    seed_everything(seed)
    graph = make_community_graph(torch.Generator().manual_seed(seed))
    K = int(graph.labels.max()) + 1
    test = ~graph.train & ~graph.informative
    acc, weights = {}, None
    with num_threads(1):
        for agg in ("attention", "mean"):
            torch.manual_seed(seed)
            model = GraphClassifier(graph.x.shape[1], K, aggregation=agg)
            opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=5e-4)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)

            def loss(i, m=model):
                return F.cross_entropy(m(graph.x, graph.adj)[0][graph.train], graph.labels[graph.train])

            run_steps(model, loss, opt, sched, steps, progress=progress, desc=f"graph ({agg})", postfix_every=20)
            with torch.no_grad():
                logits, w = model(graph.x, graph.adj)
            acc[agg] = (logits.argmax(-1) == graph.labels)[test].float().mean().item()
            if agg == "attention":
                weights = w.mean(0)  # (n, n)
    unin = ~graph.informative
    on_inf = (weights * graph.informative[None, :])[unin].sum(-1).mean().item()
    share = (graph.adj.float() * graph.informative[None, :]).sum(-1)[unin] / graph.adj[unin].sum(-1)
    return GraphResult(acc, on_inf, share.mean().item(), weights, graph, time.perf_counter() - start)


def plot_neighbour_weights(result: GraphResult, node: int | None = None, ax=None):
    """One uninformative node in the middle, its neighbours on a circle, edges as wide as their GAT weight."""
    gr = result.graph
    if node is None:
        node = int(torch.nonzero(~gr.train & ~gr.informative)[0])
    nbrs = [int(j) for j in torch.nonzero(gr.adj[node]).flatten() if int(j) != node]
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 5.5))
    colors = ["#2166ac", "#d9730d", "#1b7837", "#762a83"]
    angles = np.linspace(0, 2 * np.pi, len(nbrs), endpoint=False)
    w = result.weights[node]
    for a, j in zip(angles, nbrs):
        x, y = np.cos(a), np.sin(a)
        ax.plot([0, x], [0, y], color="#c51b7d", lw=0.5 + 12 * float(w[j]), alpha=0.8, zorder=1)
        marker = "o" if gr.informative[j] else "x"
        ax.scatter([x], [y], s=160, marker=marker, color=colors[int(gr.labels[j]) % 4], zorder=2)
        ax.text(1.18 * x, 1.18 * y, f"{float(w[j]):.2f}", ha="center", va="center", fontsize=8)
    ax.scatter([0], [0], s=320, marker="s", color=colors[int(gr.labels[node]) % 4], zorder=3)
    ax.text(0, -0.18, f"node {node}\n(self {float(w[node]):.2f})", ha="center", va="top", fontsize=8)
    ax.scatter([], [], marker="o", color="#888888", label="informative neighbour (colour = community)")
    ax.scatter([], [], marker="x", color="#888888", label="noisy neighbour")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.16), fontsize=8)
    ax.set_xlim(-1.4, 1.4)
    ax.set_ylim(-1.4, 1.4)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title("GAT weights on one node's neighbours (edge width = weight)")
    ax.figure.tight_layout()
    return ax
