"""Chapter 13's experiments: speech alignment, next-item recommendation, graph attention (static and dynamic).

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

from ..apps.graphs import GraphClassifier, make_community_graph, make_dictionary_lookup
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
    "LookupResult",
    "run_dictionary_lookup",
    "plot_lookup_weights",
]


# ----------------------------------------------------------------------------- speech


@dataclass
class SpeechResult:
    accuracy: dict[str, float]  # label accuracy of greedy transcripts ("attention", "fixed")
    diagonal: float  # share of labels whose most-attended frame pair lies inside that label's frames
    monotonic: float  # share of consecutive labels whose most-attended frame pair does not move back
    weights: torch.Tensor  # (N, steps, S // 2) attention of the test set
    data: object
    seconds: float


def run_speech(steps: int = 250, n_train: int = 1500, n_test: int = 300, seed: int = 0,
               progress: bool = True) -> SpeechResult:
    """A LAS-style listener with a Bahdanau speller vs the same listener with a fixed-context speller."""
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
    hits = total = forward = steps_seen = 0
    for i, starts in enumerate(test.boundaries):  # frame pair p holds frames 2p, 2p + 1
        ends = starts[1:] + [int(test.frame_lengths[i])]
        peaks = [int(weights[i, t].argmax()) for t in range(len(starts))]  # most-attended pair per label
        for p, a, b in zip(peaks, starts, ends):
            hits += a <= 2 * p + 1 and 2 * p < b
            total += 1
        forward += sum(q >= p for p, q in zip(peaks, peaks[1:]))
        steps_seen += len(peaks) - 1
    return SpeechResult(acc, hits / total, forward / steps_seen, weights, test, time.perf_counter() - start)


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
    weights: torch.Tensor  # (blocks, N, T) last position's attention over the history, per block, mean of heads
    lag_weight: list[dict[int, float]]  # per block: mean weight on the item `lag` steps back (lag 0 = the last item)
    previous_weight: float  # block 1: mean weight of each position (but the first) on the item just before it
    occluded: dict[int, float]  # SASRec's HR@10 with the item `lag` steps back replaced by a random item
    best_sellers: float  # share of test next items that are best sellers (ids 1 .. popular)
    items: torch.Tensor  # (N, T) test histories (inputs)
    seconds: float


def run_recsys(steps: int = 300, n_train: int = 3000, n_test: int = 500, seed: int = 0,
               progress: bool = True) -> RecsysResult:
    """SASRec vs popularity and last-item baselines: hit rate@10 of each test user's last item.

    Also measures what the prediction uses: each block's attention from the last position, and
    the hit rate when one history position is *occluded* (its item replaced by a random item that
    is not a best seller, so it looks like neither series nor an impulse buy).
    """
    start = time.perf_counter()
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    popular = 10  # make_histories' default: impulse buys are items 1 .. 10
    train, test = make_histories(n_train, g, popular=popular), make_histories(n_test, g, popular=popular)
    V = train.num_items
    x_test, y_test = test.items[:, :-1], test.items[:, -1]
    T = x_test.shape[1]
    occluded = {}
    with num_threads(1):
        torch.manual_seed(seed)
        model = SASRec(V)

        def loss(i):
            scores, _ = model(train.items[i, :-1])  # (b, T - 1, V): every position predicts the next item
            return F.cross_entropy(scores.flatten(0, 1), train.items[i, 1:].flatten())

        fit(model, loss, n_train, steps, lr=5e-3, seed=seed, desc="SASRec", progress=progress)
        with torch.no_grad():
            scores, maps = model(x_test)
            for k in range(min(4, T)):
                x = x_test.clone()
                x[:, T - 1 - k] = torch.randint(popular + 1, V, (len(x),), generator=g)
                occluded[k] = hit_rate(model(x)[0][:, -1], y_test)
    hr = {"sasrec": hit_rate(scores[:, -1], y_test),
          "popularity": hit_rate(popularity_scores(train.items, V).expand(len(y_test), V), y_test),
          "last item": hit_rate(last_item_scores(train.items, V)[x_test[:, -1]], y_test)}
    w = torch.stack([m.mean(1)[:, -1] for m in maps])  # (blocks, N, T): the last position's weights, heads averaged
    lag = [{k: w[b, :, T - 1 - k].mean().item() for k in range(T)} for b in range(len(maps))]
    previous = maps[0].mean(1).diagonal(offset=-1, dim1=-2, dim2=-1).mean().item()  # (N, T - 1) -> mean
    best = (y_test <= popular).float().mean().item()
    return RecsysResult(hr, w, lag, previous, occluded, best, x_test, time.perf_counter() - start)


def plot_history_attention(result: RecsysResult, count: int = 3, axes=None):
    """The last position's attention over the history for a few users, one panel per block, items as labels."""
    blocks = result.weights.shape[0]
    if axes is None:
        _, axes = plt.subplots(blocks, 1, figsize=(8, 1.4 + 0.75 * count * blocks), squeeze=False)
        axes = axes[:, 0]
    T = result.weights.shape[2]
    for b, ax in enumerate(axes):
        w = result.weights[b, :count].numpy()
        im = ax.imshow(w, cmap="Purples", vmin=0, vmax=1, aspect="auto")
        for r in range(count):
            for c in range(T):
                ax.text(c, r, str(int(result.items[r, c])), ha="center", va="center", fontsize=8,
                        color="white" if w[r, c] > 0.5 else "black")
        ax.set_xticks(range(T), [f"t-{T - 1 - c}" if c < T - 1 else "last" for c in range(T)], fontsize=8)
        ax.set_yticks(range(count), [f"user {r}" for r in range(count)])
        ax.set_title(f"block {b + 1}: what the last position attends to", fontsize=10)
        ax.figure.colorbar(im, ax=ax, label="weight")
    axes[-1].set_xlabel("position in the history (item ids in the cells)")
    axes[0].figure.tight_layout()
    return axes


# ----------------------------------------------------------------------------- graphs


@dataclass
class GraphResult:
    accuracy: dict[str, float]  # test accuracy on uninformative unlabelled nodes ("gat", "mean", "gcn")
    informative_weight: float  # mean GAT weight (heads averaged) an uninformative node puts on informative neighbours
    informative_share: float  # the same under mean aggregation (share of its neighbours that are informative)
    mean_vs_gcn: float  # largest difference between a mean weight (D^-1 A) and a GCN weight (D^-1/2 A D^-1/2)
    weights: torch.Tensor  # (n, n) GAT weights, heads averaged
    graph: object
    seconds: float


def run_graph(steps: int = 200, seed: int = 0, progress: bool = True) -> GraphResult:
    """A GAT layer vs mean aggregation and a GCN layer on the community graph, full-batch training."""
    start = time.perf_counter()
    seed_everything(seed)
    graph = make_community_graph(torch.Generator().manual_seed(seed))
    K = int(graph.labels.max()) + 1
    test = ~graph.train & ~graph.informative
    acc, weights = {}, {}
    with num_threads(1):
        for agg in ("gat", "mean", "gcn"):
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
            weights[agg] = w.mean(0)  # (n, n), heads averaged
    unin = ~graph.informative
    on_inf = (weights["gat"] * graph.informative[None, :])[unin].sum(-1).mean().item()
    share = (graph.adj.float() * graph.informative[None, :]).sum(-1)[unin] / graph.adj[unin].sum(-1)
    gap = (weights["mean"] - weights["gcn"]).abs().max().item()
    return GraphResult(acc, on_inf, share.mean().item(), gap, weights["gat"], graph, time.perf_counter() - start)


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


# ----------------------------------------------------------------------------- static vs dynamic attention


@dataclass
class LookupResult:
    accuracy: dict[str, float]  # test accuracy of the queries ("gat", "gatv2"); chance 1 / keys
    same_ranking: dict[str, float]  # share of test graphs in which every query ranks the keys in the same order
    top_is_match: dict[str, float]  # share of queries whose highest-weighted key is the one with their attribute
    weights: dict[str, torch.Tensor]  # (N, k, k) queries' weights over the keys (one head)
    data: object
    seconds: float


def run_dictionary_lookup(steps: int = 200, keys: int = 6, n_train: int = 2000, n_test: int = 500,
                          hidden: int = 16, seed: int = 0, progress: bool = True) -> LookupResult:
    """One GAT layer vs one GATv2 layer (one head each) on Brody et al.'s DictionaryLookup."""
    start = time.perf_counter()
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    train, test = make_dictionary_lookup(n_train, g, keys), make_dictionary_lookup(n_test, g, keys)
    k = keys
    acc, same, top, weights = {}, {}, {}, {}
    with num_threads(1):
        for agg in ("gat", "gatv2"):
            torch.manual_seed(seed)
            model = GraphClassifier(train.x.shape[-1], 2 * k, hidden=hidden, heads=1, aggregation=agg)

            def loss(i, m=model):
                logits, _ = m(train.x[i], train.adj)  # (b, 2k, classes): only the queries (k ..) are scored
                return F.cross_entropy(logits[:, k:].flatten(0, 1), train.values[i].flatten())

            fit(model, loss, n_train, steps, lr=1e-2, seed=seed, desc=f"lookup ({agg})", progress=progress)
            with torch.no_grad():
                logits, w = model(test.x, test.adj)  # (N, 2k, classes), (N, 1, 2k, 2k)
                e, _ = model.layer.scores(test.x)  # (N, 1, 2k, 2k): scores before the softmax, no ties from rounding
            acc[agg] = (logits[:, k:].argmax(-1) == test.values).float().mean().item()
            order = e[:, 0, k:, :k].argsort(-1)  # (N, k queries, k keys): each query's ranking of the keys
            same[agg] = (order == order[:, :1]).all(-1).all(-1).float().mean().item()
            weights[agg] = w[:, 0, k:, :k]  # (N, k, k)
            top[agg] = (weights[agg].argmax(-1) == test.match).float().mean().item()
    return LookupResult(acc, same, top, weights, test, time.perf_counter() - start)


def plot_lookup_weights(result: LookupResult, index: int = 0, axes=None):
    """One test graph: each query's weights over the keys, GAT beside GATv2, the right key outlined."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(8.5, 3.6))
    match = result.data.match[index]
    k = len(match)
    for ax, name in zip(axes, ("gat", "gatv2")):
        w = result.weights[name][index].numpy()
        ax.imshow(w, cmap="Purples", vmin=0, vmax=1)
        for q in range(k):
            ax.add_patch(plt.Rectangle((int(match[q]) - 0.5, q - 0.5), 1, 1, fill=False, edgecolor="#c51b7d", lw=2))
        ax.set_xticks(range(k), [f"key {j}" for j in range(k)], fontsize=8, rotation=45)
        ax.set_yticks(range(k), [f"query {q}" for q in range(k)], fontsize=8)
        label = "GAT (static)" if name == "gat" else "GATv2 (dynamic)"
        ax.set_title(f"{label}: accuracy {result.accuracy[name]:.0%}", fontsize=10)
    axes[0].figure.suptitle("Each query's weights over the keys (its own key outlined)", fontsize=10)
    axes[0].figure.tight_layout()
    return axes
