"""Exercise 7: attention across fields (Part III).

Tasks:
    attention_pooling(x, query, W_k, mask)                   (B, T, D) -> (B, D)
    patch_embedding(images, weight, bias, patch_size)        (B, C, I, I) -> (B, N, D)
    gat_coefficient(h, W, a_src, a_dst, adj, i, j)           one GAT weight alpha_ij, a 0-d tensor
    query_readout(queries, memory, W_q, W_k, W_v)            (B, Q, D), (B, S, E) -> (B, Q, d)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attention import scaled_dot_product_attention
from ..grading.tasks import Case, Exercise, Task, randn
from ..masking import masked_softmax

_ATTENTION = ("attn_course.attention.scaled_dot_product_attention",
              "torch.nn.functional.scaled_dot_product_attention")


def _pooling_reference(x, query, W_k, mask):
    q = query.expand(x.shape[0], 1, x.shape[-1])  # (B, 1, D)
    out, _ = scaled_dot_product_attention(q, x @ W_k.T, x, mask[:, None, :])  # (B, 1, D)
    return out[:, 0]  # (B, D)


def _pooling_cases(g: torch.Generator) -> list[Case]:
    def args(B, T, D, lengths):
        mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
        return (randn(g, B, T, D), randn(g, D), randn(g, D, D, scale=D ** -0.5), mask)

    return [
        Case("full sequences", args(2, 5, 4, [5, 5])),
        Case("padding", args(3, 6, 8, [6, 2, 4]), hint="Padded positions (mask False) get weight 0."),
        Case("one real token", args(2, 4, 4, [1, 3]), hint="With one real token the pool is that token."),
    ]


def _patch_reference(images, weight, bias, patch_size):
    x = F.conv2d(images, weight, bias, stride=patch_size)  # (B, D, I/P, I/P)
    return x.flatten(2).transpose(1, 2)  # (B, N, D)


def _patch_cases(g: torch.Generator) -> list[Case]:
    def args(B, C, side, P, D):
        return (randn(g, B, C, side, side), randn(g, D, C, P, P), randn(g, D), P)

    return [
        Case("digits: 8x8, 2x2 patches", args(2, 1, 8, 2, 6)),
        Case("colour", args(2, 3, 6, 3, 4), hint="Flatten a patch channel by channel, then row by row."),
        Case("one patch", args(1, 2, 4, 4, 5), hint="patch_size = image side: one token per image."),
    ]


def _gat_reference(h, W, a_src, a_dst, adj, i, j):
    wh = h @ W.T  # (n, C)
    e = F.leaky_relu(wh[i] @ a_dst + wh @ a_src, 0.2)  # (n,): node i's score for every node
    return masked_softmax(e, adj[i])[j]


def _gat_cases(g: torch.Generator) -> list[Case]:
    def graph(n, F_in, C):
        adj = torch.rand(n, n, generator=g) < 0.4
        adj = adj | torch.eye(n, dtype=torch.bool)
        return randn(g, n, F_in), randn(g, C, F_in), randn(g, C), randn(g, C), adj

    h, W, a_s, a_d, adj = graph(6, 4, 3)
    j = int(torch.nonzero(adj[0])[-1])
    h2, W2, a_s2, a_d2, adj2 = graph(5, 3, 2)
    adj2[2] = False
    adj2[2, 2] = True
    h3, W3, a_s3, a_d3, adj3 = graph(7, 5, 4)
    adj3[4, 1] = False
    return [
        Case("a neighbour", (h, W, a_s, a_d, adj, 0, j)),
        Case("a node with only itself", (h2, W2, a_s2, a_d2, adj2, 2, 2),
             hint="Its only neighbour is itself: the softmax over one score is 1."),
        Case("not a neighbour", (h3, W3, a_s3, a_d3, adj3, 4, 1),
             hint="A node that is not a neighbour gets weight 0 (mask it out of the softmax)."),
    ]


def _readout_reference(queries, memory, W_q, W_k, W_v):
    out, _ = scaled_dot_product_attention(queries @ W_q.T, memory @ W_k.T, memory @ W_v.T)
    return out  # (B, Q, d)


def _readout_cases(g: torch.Generator) -> list[Case]:
    def args(B, Q, S, D, E, d):
        return (randn(g, B, Q, D), randn(g, B, S, E), randn(g, d, D, scale=D ** -0.5),
                randn(g, d, E, scale=E ** -0.5), randn(g, d, E, scale=E ** -0.5))

    return [
        Case("4 queries over a 4x4 grid", args(2, 4, 16, 8, 6, 8)),
        Case("one query", args(3, 1, 9, 4, 4, 4)),
        Case("one memory position", args(2, 3, 1, 6, 5, 4),
             hint="One key: every query's weight on it is 1, so it reads that value."),
    ]


EXERCISE = Exercise(
    id="ex07_attention_across_fields",
    title="Attention across fields",
    tasks=(
        Task("attention_pooling", _pooling_reference, _pooling_cases, points=1,
             arg_names=("x", "query", "W_k", "mask"), forbidden=_ATTENTION,
             hint="scores = (x @ W_k.T) @ query / sqrt(D), -inf where mask is False, softmax over T, "
                  "then the weighted sum of x."),
        Task("patch_embedding", _patch_reference, _patch_cases, points=1,
             arg_names=("images", "weight", "bias", "patch_size"),
             forbidden=("torch.nn.functional.conv2d", "torch.conv2d"),
             hint="Cut the image into (I/P)^2 patches in reading order (unfold or reshape), flatten each to "
                  "C*P*P numbers, multiply by weight.reshape(D, -1).T and add bias."),
        Task("gat_coefficient", _gat_reference, _gat_cases, points=1,
             arg_names=("h", "W", "a_src", "a_dst", "adj", "i", "j"),
             hint="e_ik = LeakyReLU(a_dst . W h_i + a_src . W h_k, slope 0.2) for every node k; softmax over the "
                  "k with adj[i, k] True; return the weight of j."),
        Task("query_readout", _readout_reference, _readout_cases, points=1,
             arg_names=("queries", "memory", "W_q", "W_k", "W_v"), forbidden=_ATTENTION,
             hint="q = queries @ W_q.T, k = memory @ W_k.T, v = memory @ W_v.T; "
                  "softmax(q @ k^T / sqrt(d)) over the memory positions, then @ v."),
    ),
)
