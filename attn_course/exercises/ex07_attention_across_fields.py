"""Exercise 7: attention across fields (practises chapters 11, 12 and 13).

Tasks:
    attention_pooling(x, query, W_k, mask)                   (B, T, D) -> (B, D)
    sentence_weights(words, word_mask, query, W_k)           (B, T, W, D) -> (B, T): weights over sentences
    patch_embedding(images, weight, bias, patch_size)        (B, C, I, I) -> (B, N, D)
    query_readout(queries, memory, W_q, W_k, W_v)            (B, Q, D), (B, S, E) -> (B, Q, d)
    detr_cost(class_logits, pred_boxes, target_classes, target_boxes, box_weight)   (Q, M) matching cost
    detr_match(cost)                                         (Q, M) -> (M,) the query matched to each target
    gat_coefficient(h, W, a_src, a_dst, adj, i, j)           one GAT weight alpha_ij, a 0-d tensor
    gatv2_coefficient(h, W_src, W_dst, a, adj, i, j)         one GATv2 weight alpha_ij, a 0-d tensor

References follow the library: ``apps.text.AttentionPooling`` and ``SentenceScorer`` (with a
word mask), ``apps.vision.PatchEmbedding``, ``ObjectQueryDetector``'s cross-attention and
``hungarian_match`` (split into its cost and its assignment), ``apps.graphs.GATLayer`` and
``GATv2Layer`` (one head, no bias); tests/grading/exercises/test_ex07_attention_across_fields.py
checks each against the library.

The cases are drawn from a seed the grader keeps secret, so every case that separates a wrong
variant from the right one is built to separate it for any draw (the matching traps, the negative
GAT scores, widths that all differ), not by luck.

Dimension glossary: B batch, T positions (or sentences), W words per sentence, D/E widths, d
projected width, C channels (or GAT features), I image side, P patch side, N patches, Q queries,
S memory positions, M targets, K classes, n nodes, F node features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attention import scaled_dot_product_attention
from ..grading.tasks import Case, Exercise, Task, randn
from ..masking import masked_softmax

_ATTENTION = ("attn_course.attention.scaled_dot_product_attention",
              "torch.nn.functional.scaled_dot_product_attention")
_MATCHER = ("attn_course.apps.vision.hungarian_match",)
_GAT = ("attn_course.apps.graphs.GATLayer.scores", "attn_course.apps.graphs.GATv2Layer.scores")


# ----------------------------------------------------------------------------- chapter 11: pooling


def _pooling_reference(x, query, W_k, mask):
    q = query.expand(x.shape[0], 1, x.shape[-1])  # (B, 1, D): one query per sequence
    out, _ = scaled_dot_product_attention(q, x @ W_k.T, x, mask[:, None, :])  # (B, 1, D)
    return out[:, 0]  # (B, D)


def _pooling_cases(g: torch.Generator) -> list[Case]:
    def args(B, T, D, mask):
        return (randn(g, B, T, D), randn(g, D), randn(g, D, D, scale=D ** -0.5), mask)

    def prefix(T, lengths):
        return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)

    holes = torch.rand(3, 9, generator=g) < 0.5
    holes[:, 4] = True  # every row keeps a real token
    holes[:, 0] = False  # and loses its first one: a mask that is not a prefix
    return [
        Case("full sequences", args(2, 5, 16, prefix(5, [5, 5]))),
        Case("padding", args(3, 6, 8, prefix(6, [6, 2, 4])), hint="Padded positions (mask False) get weight 0."),
        Case("one real token", args(2, 4, 4, prefix(4, [1, 3])), hint="With one real token the pool is that token."),
        Case("holes in the mask", args(3, 9, 12, holes),
             hint="The mask is not a prefix here: False positions sit anywhere, the first one included."),
    ]


def _sentence_reference(words, word_mask, query, W_k):
    counts = word_mask.sum(-1, keepdim=True)  # (B, T, 1): real words per sentence
    sentences = (words * word_mask[..., None]).sum(2) / counts.clamp(min=1)  # (B, T, W, D) -> (B, T, D)
    real = counts[..., 0] > 0  # (B, T): a sentence without words is padding
    q = query.expand(words.shape[0], 1, words.shape[-1])  # (B, 1, D)
    _, weights = scaled_dot_product_attention(q, sentences @ W_k.T, sentences, real[:, None, :])  # (B, 1, T)
    return weights[:, 0]  # (B, T)


def _sentence_cases(g: torch.Generator) -> list[Case]:
    def args(B, T, W, D, counts):
        word_mask = torch.arange(W)[None, None, :] < counts[..., None]  # (B, T, W)
        # padded words hold numbers too (never zeros): only the mask says which words are real
        return (randn(g, B, T, W, D), word_mask, randn(g, D), randn(g, D, D, scale=D ** -0.5))

    uneven = torch.randint(1, 6, (2, 6), generator=g)
    uneven[:, 0], uneven[:, 1] = 1, 5  # one-word and full sentences in every document
    padded = torch.randint(1, 5, (3, 7), generator=g)
    padded[0, 4:], padded[1, 2:], padded[2, 6:] = 0, 0, 0  # documents of 4, 2 and 6 sentences
    padded[2, 1] = 0  # and an empty sentence between real ones
    one = torch.zeros(2, 3, dtype=torch.long)
    one[0, 0], one[1, 2] = 3, 2
    return [
        Case("full sentences", args(2, 5, 4, 8, torch.full((2, 5), 4))),
        Case("sentences of different lengths", args(2, 6, 5, 8, uneven),
             hint="Sentences have from 1 to 5 real words here (word_mask False after them)."),
        Case("padded documents", args(3, 7, 4, 6, padded),
             hint="Some sentences have no real word at all (padding): they get weight 0, and no NaN anywhere."),
        Case("one sentence per document", args(2, 3, 3, 4, one),
             hint="Each document has one real sentence: it gets all the weight."),
    ]


# ----------------------------------------------------------------------------- chapter 12: vision


def _patch_reference(images, weight, bias, patch_size):
    x = F.conv2d(images, weight, bias, stride=patch_size)  # (B, D, I/P, I/P), as PatchEmbedding does
    return x.flatten(2).transpose(1, 2)  # (B, N, D)


def _patch_cases(g: torch.Generator) -> list[Case]:
    def args(B, C, side, P, D):
        return (randn(g, B, C, side, side), randn(g, D, C, P, P), randn(g, D), P)

    return [
        Case("digits: 8x8, 2x2 patches", args(2, 1, 8, 2, 6)),
        Case("colour", args(2, 3, 6, 3, 4), hint="3 channels here: a patch is C*P*P numbers in weight's layout."),
        Case("colour, a 3x3 grid of patches", args(2, 3, 12, 4, 5),
             hint="3 channels and a 3x3 grid of patches here."),
        Case("one patch", args(1, 2, 4, 4, 5), hint="patch_size = image side: one token per image."),
    ]


def _readout_reference(queries, memory, W_q, W_k, W_v):
    out, _ = scaled_dot_product_attention(queries @ W_q.T, memory @ W_k.T, memory @ W_v.T)
    return out  # (B, Q, d)


def _readout_cases(g: torch.Generator) -> list[Case]:
    def args(B, Q, S, D, E, d):
        return (randn(g, B, Q, D), randn(g, B, S, E), randn(g, d, D, scale=D ** -0.5),
                randn(g, d, E, scale=E ** -0.5), randn(g, d, E, scale=E ** -0.5))

    return [
        Case("three different widths", args(1, 3, 5, 12, 3, 6),
             hint="D (queries) = 12, E (memory) = 3 and d (after the projections) = 6 all differ here."),
        Case("4 queries over a 4x4 grid", args(2, 4, 16, 8, 6, 16)),
        Case("one query", args(3, 1, 9, 5, 12, 3)),
        Case("one memory position", args(2, 3, 1, 6, 5, 4),
             hint="One key: every query's weight on it is 1, so it reads that value."),
    ]


def _cost_reference(class_logits, pred_boxes, target_classes, target_boxes, box_weight):
    prob = class_logits.softmax(-1)  # (Q, K + 1): "no object" is the last class
    cost = -prob[:, target_classes]  # (Q, M): the probability of each target's class, negated
    return cost + box_weight * torch.cdist(pred_boxes, target_boxes, p=1)  # (Q, M), as hungarian_match


def _cost_cases(g: torch.Generator) -> list[Case]:
    def args(Q, K, M, box_weight, sharp=1.0):
        boxes = torch.rand(Q, 4, generator=g, dtype=torch.float64).float()  # (cx, cy, w, h) in [0, 1]
        targets = torch.rand(M, 4, generator=g, dtype=torch.float64).float()
        classes = torch.randint(0, K, (M,), generator=g)  # never "no object" (class K)
        return (randn(g, Q, K + 1, scale=sharp), boxes, classes, targets, box_weight)

    repeated = args(6, 3, 3, 5.0)
    repeated[2][1] = repeated[2][0]  # two targets of the same class
    return [
        Case("4 queries, 2 objects", args(4, 3, 2, 5.0)),
        Case("6 queries, 3 objects, two of one class", repeated),
        Case("no objects", args(3, 3, 0, 5.0), hint="No targets (M = 0): the cost has no column, shape (Q, 0)."),
        Case("another box weight", args(3, 2, 3, 2.0, sharp=3.0), hint="box_weight = 2 here, not 5."),
    ]


def _match_reference(cost):
    from scipy.optimize import linear_sum_assignment  # the Hungarian algorithm, as hungarian_match uses

    rows, cols = linear_sum_assignment(cost.numpy())  # query rows[k] takes target cols[k]
    match = torch.empty(cost.shape[1], dtype=torch.long)
    match[torch.as_tensor(cols, dtype=torch.long)] = torch.as_tensor(rows, dtype=torch.long)
    return match  # (M,)


def _match_cases(g: torch.Generator) -> list[Case]:
    def order(Q):
        return torch.randperm(Q, generator=g).tolist()  # which query plays which part, fresh per draw

    def noise(*shape, scale):
        return torch.rand(*shape, generator=g, dtype=torch.float64).float() * scale

    # Every target's cheapest query is the same one, `fav`; each target's second choice costs
    # 1, 3 and 2. The cheapest pairing gives fav to the target whose second choice costs most,
    # the middle one: greedy (per target in either order, or cheapest pair first) gives it away.
    Q, M = 5, 3
    p = order(Q)
    fav, alt = p[0], p[1:4]
    shared = 5 + noise(Q, M, scale=1.0)
    shared[fav] = torch.tensor([0.01, 0.05, 0.03]) + noise(M, scale=0.01)
    for t, c in enumerate((1.0, 3.0, 2.0)):
        shared[alt[t], t] = c + float(noise(1, scale=0.1))

    # Target 0 costs exactly the same with two queries; target 1 decides between them.
    p = order(4)
    tie = 4 + noise(4, 2, scale=1.0)
    a, b = sorted(p[:2])  # a < b: an argmin takes a for target 0
    tie[a, 0] = tie[b, 0] = 0.5
    tie[a, 1], tie[b, 1] = 0.2 + float(noise(1, scale=0.1)), 3.0

    # A planted permutation that is not the identity: each target has one cheap query.
    n = 5
    perm = order(n)
    if perm == sorted(perm):
        perm[0], perm[1] = perm[1], perm[0]
    square = 1 + noise(n, n, scale=1.0)
    for t, q in enumerate(perm):
        square[q, t] = float(noise(1, scale=0.1))

    return [
        Case("5 queries, 3 targets that all want one query", (shared,),
             hint="Every target's cheapest query is the same query here; each query may take one target."),
        Case("a tie for target 0", (tie,),
             hint="Two queries cost exactly the same for target 0 here."),
        Case("as many queries as targets", (square,)),
        Case("no targets", (5 + noise(4, 0, scale=1.0),), hint="No targets (M = 0): an empty (0,) long tensor."),
        Case("random costs, 6 queries, 4 targets", (noise(6, 4, scale=1.0),)),
    ]


# ----------------------------------------------------------------------------- chapter 13: graphs


def _gat_reference(h, W, a_src, a_dst, adj, i, j):
    wh = h @ W.T  # (n, C)
    e = F.leaky_relu(wh[i] @ a_dst + wh @ a_src, 0.2)  # (n,): node i's score for every node, as GATLayer.scores
    return masked_softmax(e, adj[i])[j]


def _gatv2_reference(h, W_src, W_dst, a, adj, i, j):
    pair = F.leaky_relu(h[i] @ W_dst.T + h @ W_src.T, 0.2)  # (n, C): node i with every node k
    e = pair @ a  # (n,): a after the bend, as GATv2Layer.scores
    return masked_softmax(e, adj[i])[j]


def _graph(g: torch.Generator, n: int, i: int) -> torch.Tensor:
    """A directed graph with self-loops: ``adj[i, k]`` = ``i`` reads ``k`` (not symmetric).

    Node ``i`` reads nodes ``i + 1 .. i + 3`` (and maybe more), not node ``i + 4``; node ``i + 1``
    does not read ``i``, so a row and a column of ``adj`` differ where the cases look.
    """
    adj = (torch.rand(n, n, generator=g) < 0.4) | torch.eye(n, dtype=torch.bool)
    adj[i, [(i + 1) % n, (i + 2) % n, (i + 3) % n]] = True
    adj[i, (i + 4) % n] = False
    adj[(i + 1) % n, i] = False
    return adj


def _separates(e: torch.Tensor, bent: torch.Tensor, row: torch.Tensor) -> bool:
    """Whether node i's scores ``e (n,)`` make a case that tells the right formula from its neighbours.

    ``bent`` holds what goes through the LeakyReLU: some of it must be clearly below zero and
    some clearly above (or its slope would not matter), and every neighbour's weight must be
    neither negligible nor nearly everything (or any score would give about the same weights).
    """
    w = masked_softmax(e, row)[row]
    return bool((bent < -0.3).any() and (bent > 0.3).any() and w.min() > 0.03 and w.max() < 0.8)


def _gat_draw(g: torch.Generator, n: int, F_in: int, C: int, i: int) -> tuple[torch.Tensor, ...]:
    while True:  # redraw until the case separates (see _separates); a few draws on average
        adj = _graph(g, n, i)
        h, W = randn(g, n, F_in), randn(g, C, F_in, scale=F_in ** -0.5)
        a_s, a_d = randn(g, C, scale=C ** -0.5), randn(g, C, scale=C ** -0.5)
        wh = h @ W.T  # (n, C)
        raw = wh[i] @ a_d + wh @ a_s  # (n,): before the LeakyReLU
        if _separates(F.leaky_relu(raw, 0.2), raw[adj[i]], adj[i]):
            return h, W, a_s, a_d, adj


def _gat_cases(g: torch.Generator) -> list[Case]:
    h, W, a_s, a_d, adj = _gat_draw(g, 6, 4, 3, 0)
    h2, W2, a_s2, a_d2, adj2 = _gat_draw(g, 5, 3, 2, 0)
    adj2[2] = False
    adj2[2, 2] = True
    adj2[:, 2] = True  # everybody reads node 2, which reads only itself
    h3, W3, a_s3, a_d3, adj3 = _gat_draw(g, 7, 5, 4, 3)
    h4, W4, a_s4, a_d4, adj4 = _gat_draw(g, 6, 3, 5, 1)
    return [
        Case("a neighbour", (h, W, a_s, a_d, adj, 0, 2),
             hint="Node 0 reads several nodes here but not all (not node 4; adj is not symmetric), and their "
                  "scores before the LeakyReLU fall on both sides of zero."),
        Case("a node with only itself", (h2, W2, a_s2, a_d2, adj2, 2, 2),
             hint="Its only neighbour is itself: the softmax over one score is 1."),
        Case("not a neighbour", (h3, W3, a_s3, a_d3, adj3, 3, 0),
             hint="Node 3 does not read node 0 here (adj[3, 0] is False)."),
        Case("a directed graph", (h4, W4, a_s4, a_d4, adj4, 1, 2),
             hint="adj is not symmetric here: node 1 reads node 2 while node 2 does not read node 1."),
    ]


def _gatv2_draw(g: torch.Generator, n: int, F_in: int, C: int, i: int) -> tuple[torch.Tensor, ...]:
    while True:  # redraw until the case separates (see _separates)
        adj = _graph(g, n, i)
        h = randn(g, n, F_in)
        W_src, W_dst = randn(g, C, F_in, scale=F_in ** -0.5), randn(g, C, F_in, scale=F_in ** -0.5)
        a = randn(g, C, scale=C ** -0.5)
        pair = h[i] @ W_dst.T + h @ W_src.T  # (n, C): before the LeakyReLU
        if _separates(F.leaky_relu(pair, 0.2) @ a, pair[adj[i]].flatten(), adj[i]):
            return h, W_src, W_dst, a, adj


def _gatv2_cases(g: torch.Generator) -> list[Case]:
    h, Ws, Wd, a, adj = _gatv2_draw(g, 6, 4, 3, 0)
    h2, Ws2, Wd2, a2, adj2 = _gatv2_draw(g, 5, 3, 4, 1)
    adj2[3] = False
    adj2[3, 3] = True  # node 3 reads only itself
    h3, Ws3, Wd3, a3, adj3 = _gatv2_draw(g, 7, 5, 4, 2)
    h4, Ws4, Wd4, a4, adj4 = _gatv2_draw(g, 5, 4, 3, 0)
    adj4[4] = False  # node 4 reads nobody, not even itself
    return [
        Case("a neighbour", (h, Ws, Wd, a, adj, 0, 1),
             hint="Node 0 reads several nodes here but not all (node 1 does not read node 0 back), and what goes "
                  "into the LeakyReLU has both signs."),
        Case("a node with only itself", (h2, Ws2, Wd2, a2, adj2, 3, 3),
             hint="Its only neighbour is itself: the softmax over one score is 1."),
        Case("not a neighbour", (h3, Ws3, Wd3, a3, adj3, 2, 6),
             hint="Node 2 does not read node 6 here (adj[2, 6] is False)."),
        Case("an isolated node", (h4, Ws4, Wd4, a4, adj4, 4, 0),
             hint="Node 4 reads no node at all here, not even itself: it attends to nothing (weight 0, not NaN)."),
    ]


EXERCISE = Exercise(
    id="ex07_attention_across_fields",
    title="Attention across fields",
    tasks=(
        Task("attention_pooling", _pooling_reference, _pooling_cases, points=1,
             arg_names=("x", "query", "W_k", "mask"),
             forbidden=_ATTENTION + ("attn_course.apps.text.AttentionPooling.forward",),
             hint="Start with one score per position, shape (B, T): the query against each key. Where should the "
                  "mask act so that the weights of the real positions still sum to 1?"),
        Task("sentence_weights", _sentence_reference, _sentence_cases, points=2,
             arg_names=("words", "word_mask", "query", "W_k"),
             forbidden=_ATTENTION + ("attn_course.apps.text.AttentionPooling.forward",
                                     "attn_course.apps.text.SentenceScorer.forward"),
             hint="Two levels: first one vector per sentence (B, T, D) from its real words only (count them per "
                  "sentence; a count of 0 must not divide), then attention pooling over the sentences, with the "
                  "sentences that have no word masked out."),
        Task("patch_embedding", _patch_reference, _patch_cases, points=1,
             arg_names=("images", "weight", "bias", "patch_size"),
             forbidden=("torch.nn.functional.conv2d", "torch.conv2d",
                        "attn_course.apps.vision.PatchEmbedding.forward"),
             hint="Split each image side I into (I/P, P): a 6-d view (B, C, I/P, P, I/P, P). Which axes must come "
                  "first so that the patches are in reading order, and which last so that each patch flattens in "
                  "weight's (C, P, P) layout?"),
        Task("query_readout", _readout_reference, _readout_cases, points=1,
             arg_names=("queries", "memory", "W_q", "W_k", "W_v"), forbidden=_ATTENTION,
             hint="Project first, then attend: the scores (B, Q, S) are dot products of vectors of which width? "
                  "That width sets the scale."),
        Task("detr_cost", _cost_reference, _cost_cases, points=2,
             arg_names=("class_logits", "pred_boxes", "target_classes", "target_boxes", "box_weight"),
             forbidden=_MATCHER,
             hint="Two (Q, M) terms: the class term reads, for each query, the probability (not the logit) of each "
                  "target's class, over all K + 1 classes; the box term is the sum of the 4 absolute differences "
                  "for every (query, target) pair (broadcast (Q, 1, 4) against (1, M, 4))."),
        Task("detr_match", _match_reference, _match_cases, points=1, arg_names=("cost",),
             forbidden=_MATCHER,
             hint="Taking each target's cheapest query can give one query two targets, and taking the cheapest "
                  "free pair first can cost more in total. scipy.optimize.linear_sum_assignment finds the cheapest "
                  "one-to-one pairing; read what its two arrays mean, and which one is indexed by target."),
        Task("gat_coefficient", _gat_reference, _gat_cases, points=1,
             arg_names=("h", "W", "a_src", "a_dst", "adj", "i", "j"), forbidden=_GAT,
             hint="Compute node i's score for every node k, shape (n,), then a softmax over the k that node i "
                  "reads (row i of adj), then pick j. Mind LeakyReLU's slope: 0.2, not torch's default."),
        Task("gatv2_coefficient", _gatv2_reference, _gatv2_cases, points=1,
             arg_names=("h", "W_src", "W_dst", "a", "adj", "i", "j"), forbidden=_GAT,
             hint="Pair node i with every node k first: an (n, C) tensor before the LeakyReLU, reduced by a only "
                  "after it. A node that reads nobody has no score to normalise."),
    ),
)
