"""Attention in graphs: GAT (Velickovic et al., 2018), GATv2 (Brody et al., 2022) and degree-weighted means.

A node attends over its neighbours: the score of neighbour ``j`` for node ``i`` is, in GAT,
``e_ij = LeakyReLU(a_dst . W h_i + a_src . W h_j)`` and, in GATv2,
``e_ij = a . LeakyReLU(W_dst h_i + W_src h_j)`` (``a^T LeakyReLU(W [h_i || h_j])`` with ``W``
split in two). The weights are a softmax over the neighbourhood only (the library's
``masked_softmax`` with the adjacency as the mask), and the new state is the weighted sum of the
neighbours' projected states (the library's ``context_vector``). The layers are dense (an
``(n, n)`` adjacency mask), which is what a small graph needs; they match
``torch_geometric.nn.GATConv`` and ``GATv2Conv`` given the same weights (``from_pyg``).

GAT's attention is *static* (Brody et al., Thm. 1): the LeakyReLU is monotone, so the ranking of
``e_ij`` over the neighbours ``j`` is the ranking of ``a_src . W h_j``, the same for every query
node ``i``. GATv2 applies ``a`` after the non-linearity, so the ranking can depend on ``i``
(*dynamic* attention). ``make_dictionary_lookup`` is a task that needs it.

``MeanAggregation`` is the baseline without attention, fixed weights from the degrees: the mean
(random-walk normalisation ``D^-1 A``) or GCN's symmetric normalisation ``D^-1/2 A D^-1/2``
(Kipf and Welling, 2017; matches ``torch_geometric.nn.GCNConv``). ``make_community_graph``
builds a graph whose communities are only recoverable by weighting neighbours: a few
informative neighbours among many noisy ones.

Every layer reads ``x (n, F)`` or a batch of graphs with the same edges ``x (B, n, F)``.
Dimension glossary: B graphs, n nodes, F input features, H heads, C features per head (output),
K classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import require_floating, require_int, shape_error
from ..attention import context_vector
from ..masking import masked_softmax

__all__ = ["GATLayer", "GATv2Layer", "MeanAggregation", "GraphClassifier", "edges_to_adjacency",
           "CommunityGraph", "make_community_graph", "DictionaryLookup", "make_dictionary_lookup"]


def edges_to_adjacency(edge_index: torch.Tensor, num_nodes: int, self_loops: bool = True) -> torch.Tensor:
    """``(2, E)`` edges ``source -> target`` to a bool ``(n, n)`` mask: ``adj[i, j]`` = node ``i`` reads node ``j``.

    This is torch_geometric's convention: messages flow from ``edge_index[0]`` to ``edge_index[1]``.
    """
    n = require_int(num_nodes, "num_nodes")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise shape_error("edge_index", edge_index, "(2, E): row 0 sources, row 1 targets")
    adj = torch.zeros(n, n, dtype=torch.bool)
    adj[edge_index[1], edge_index[0]] = True
    if self_loops:
        adj |= torch.eye(n, dtype=torch.bool)
    return adj


def _check_graph(x: object, adj: object, width: int) -> None:
    require_floating(x, "x")
    if x.dim() not in (2, 3) or x.shape[-1] != width:
        raise shape_error("x", x, f"(n, {width}) node features, or (B, n, {width}) for B graphs")
    n = x.shape[-2]
    if not isinstance(adj, torch.Tensor) or adj.dtype != torch.bool or tuple(adj.shape) != (n, n):
        got = f"{adj.dtype} {tuple(adj.shape)}" if isinstance(adj, torch.Tensor) else type(adj).__name__
        raise ValueError(f"adj must be a bool tensor of shape (n, n) = ({n}, {n}), adj[i, j] = i reads j; got {got}")


def _heads(wh: torch.Tensor, heads: int) -> torch.Tensor:
    """``(..., n, H*C)`` -> ``(..., H, n, C)``: one slice per head."""
    return wh.unflatten(-1, (heads, -1)).transpose(-3, -2)  # (..., n, H, C) -> (..., H, n, C)


def _merge_heads(out: torch.Tensor, concat: bool) -> torch.Tensor:
    """``(..., H, n, C)`` -> ``(..., n, H*C)`` (concatenated) or ``(..., n, C)`` (averaged)."""
    return out.transpose(-3, -2).flatten(-2) if concat else out.mean(-3)


class GATLayer(nn.Module):
    """One graph attention layer: ``H`` heads of ``C`` features, concatenated (``H * C`` out) or averaged.

    ``forward(x (n, F), adj (n, n) bool)`` returns ``(out (n, H*C) or (n, C), weights (H, n, n))``;
    with ``x (B, n, F)``, ``(out (B, n, .), weights (B, H, n, n))``.
    """

    def __init__(self, in_features: int, out_features: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2) -> None:
        super().__init__()
        self.in_features, self.out_features = require_int(in_features, "in_features"), require_int(out_features, "out_features")
        self.heads, self.concat, self.negative_slope = require_int(heads, "heads"), concat, negative_slope
        self.lin = nn.Linear(in_features, heads * out_features, bias=False)  # W, every head at once
        self.att_src = nn.Parameter(torch.empty(heads, out_features))  # a_src: scores the neighbour j
        self.att_dst = nn.Parameter(torch.empty(heads, out_features))  # a_dst: scores the node i itself
        self.bias = nn.Parameter(torch.zeros(heads * out_features if concat else out_features))
        nn.init.xavier_uniform_(self.lin.weight)
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(e (H, n, n), Wh (H, n, C))``: ``e[h, i, j] = LeakyReLU(a_dst . Wh_i + a_src . Wh_j)``."""
        wh = _heads(self.lin(x), self.heads)  # (n, H*C) -> (H, n, C)
        s_dst = (wh * self.att_dst[:, None, :]).sum(-1)  # (H, n): node i's part of the score
        s_src = (wh * self.att_src[:, None, :]).sum(-1)  # (H, n): neighbour j's part
        # LeakyReLU is monotone: for a fixed i, e[h, i, :] is ordered as s_src is, whatever i (static attention)
        e = F.leaky_relu(s_dst[..., :, None] + s_src[..., None, :], self.negative_slope)  # (H, n, n)
        return e, wh

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_graph(x, adj, self.in_features)
        e, wh = self.scores(x)  # (H, n, n), (H, n, C)
        weights = masked_softmax(e, adj)  # (H, n, n): each row sums to 1 over i's neighbours only
        out = context_vector(weights, wh)  # (H, n, C)
        return _merge_heads(out, self.concat) + self.bias, weights  # (n, H*C) or (n, C)

    @classmethod
    @torch.no_grad()
    def from_pyg(cls, conv: nn.Module) -> GATLayer:
        """A ``GATLayer`` with the weights of a ``torch_geometric.nn.GATConv`` (self-loops on, no edge features)."""
        H, C = conv.heads, conv.out_channels
        lin = getattr(conv, "lin", None) or conv.lin_src  # one shared W (newer) or lin_src (older versions)
        layer = cls(lin.weight.shape[1], C, heads=H, concat=conv.concat, negative_slope=conv.negative_slope)
        layer.lin.weight.copy_(lin.weight)  # (H*C, F)
        layer.att_src.copy_(conv.att_src.view(H, C))  # PyG stores (1, H, C)
        layer.att_dst.copy_(conv.att_dst.view(H, C))
        layer.bias.copy_(conv.bias)
        return layer


class GATv2Layer(nn.Module):
    """GATv2: ``e_ij = a . LeakyReLU(W_dst h_i + W_src h_j)``, the attention vector after the non-linearity.

    The same interface as ``GATLayer``. The message is ``W_src h_j`` (as in ``GATv2Conv``); both
    projections have a bias. Dense, the score needs an ``(H, n, n, C)`` intermediate: every pair
    ``(i, j)`` goes through the LeakyReLU before ``a`` reduces it, which is what makes it dynamic.
    """

    def __init__(self, in_features: int, out_features: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2) -> None:
        super().__init__()
        self.in_features, self.out_features = require_int(in_features, "in_features"), require_int(out_features, "out_features")
        self.heads, self.concat, self.negative_slope = require_int(heads, "heads"), concat, negative_slope
        self.lin_src = nn.Linear(in_features, heads * out_features)  # W_src: the neighbour j (and its message)
        self.lin_dst = nn.Linear(in_features, heads * out_features)  # W_dst: the node i itself
        self.att = nn.Parameter(torch.empty(heads, out_features))  # a, applied after the LeakyReLU
        self.bias = nn.Parameter(torch.zeros(heads * out_features if concat else out_features))
        nn.init.xavier_uniform_(self.lin_src.weight)
        nn.init.xavier_uniform_(self.lin_dst.weight)
        nn.init.zeros_(self.lin_src.bias)
        nn.init.zeros_(self.lin_dst.bias)
        nn.init.xavier_uniform_(self.att)

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(e (H, n, n), W_src h (H, n, C))``: ``e[h, i, j] = a_h . LeakyReLU(W_dst h_i + W_src h_j)``."""
        src = _heads(self.lin_src(x), self.heads)  # (H, n, C)
        dst = _heads(self.lin_dst(x), self.heads)  # (H, n, C)
        pair = F.leaky_relu(dst[..., :, None, :] + src[..., None, :, :], self.negative_slope)  # (H, n, n, C)
        e = (pair * self.att[:, None, None, :]).sum(-1)  # (H, n, n): a after the bend, so i and j interact
        return e, src

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_graph(x, adj, self.in_features)
        e, src = self.scores(x)  # (H, n, n), (H, n, C)
        weights = masked_softmax(e, adj)  # (H, n, n)
        out = context_vector(weights, src)  # (H, n, C)
        return _merge_heads(out, self.concat) + self.bias, weights

    @classmethod
    @torch.no_grad()
    def from_pyg(cls, conv: nn.Module) -> GATv2Layer:
        """A ``GATv2Layer`` with the weights of a ``torch_geometric.nn.GATv2Conv`` (``share_weights=False``, bias on)."""
        H, C = conv.heads, conv.out_channels
        layer = cls(conv.lin_l.weight.shape[1], C, heads=H, concat=conv.concat, negative_slope=conv.negative_slope)
        for ours, theirs in ((layer.lin_src, conv.lin_l), (layer.lin_dst, conv.lin_r)):  # PyG: l = source, r = target
            ours.weight.copy_(theirs.weight)  # (H*C, F)
            ours.bias.copy_(theirs.bias)
        layer.att.copy_(conv.att.view(H, C))  # PyG stores (1, H, C)
        layer.bias.copy_(conv.bias)
        return layer


class MeanAggregation(nn.Module):
    """The baseline without attention: fixed weights from the degrees on the neighbours' ``W h_j``.

    ``normalization="mean"``: ``D^-1 A`` (random-walk normalisation), every neighbour weighs
    ``1 / d_i``. ``"symmetric"``: GCN's ``D^-1/2 A D^-1/2``, neighbour ``j`` of ``i`` weighs
    ``1 / sqrt(d_i d_j)``. ``d_i`` counts the nodes ``i`` reads (self-loop included).
    """

    def __init__(self, in_features: int, out_features: int, normalization: str = "mean") -> None:
        super().__init__()
        if normalization not in ("mean", "symmetric"):
            raise ValueError(f"normalization must be 'mean' or 'symmetric', got {normalization!r}")
        self.in_features, self.normalization = require_int(in_features, "in_features"), normalization
        self.lin = nn.Linear(in_features, require_int(out_features, "out_features"), bias=False)
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.xavier_uniform_(self.lin.weight)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_graph(x, adj, self.in_features)
        a = adj.to(x.dtype)  # (n, n)
        deg = a.sum(-1)  # (n,): d_i, the nodes i reads
        if self.normalization == "mean":
            weights = a / deg[:, None]  # (n, n): 1 / d_i on every neighbour
        else:
            r = deg.clamp(min=1).rsqrt()  # (n,)
            weights = r[:, None] * a * r[None, :]  # (n, n): 1 / sqrt(d_i d_j)
        return weights @ self.lin(x) + self.bias, weights[None]  # (n, out), (1, n, n)

    @classmethod
    @torch.no_grad()
    def from_pyg(cls, conv: nn.Module) -> MeanAggregation:
        """A symmetric ``MeanAggregation`` with the weights of a ``torch_geometric.nn.GCNConv`` (self-loops on)."""
        layer = cls(conv.lin.weight.shape[1], conv.lin.weight.shape[0], normalization="symmetric")
        layer.lin.weight.copy_(conv.lin.weight)  # (out, F)
        layer.bias.copy_(conv.bias)
        return layer


_AGGREGATIONS = ("gat", "gatv2", "mean", "gcn")


class GraphClassifier(nn.Module):
    """One aggregation layer, ELU, a linear classifier per node.

    ``aggregation``: ``"gat"``, ``"gatv2"`` (``heads`` heads of ``hidden``, concatenated),
    ``"mean"`` (``D^-1 A``) or ``"gcn"`` (``D^-1/2 A D^-1/2``), both ``hidden * heads`` wide.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 8, heads: int = 2,
                 aggregation: str = "gat") -> None:
        super().__init__()
        if aggregation not in _AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")
        width = require_int(hidden, "hidden") * require_int(heads, "heads")
        if aggregation in ("gat", "gatv2"):
            layer = GATLayer if aggregation == "gat" else GATv2Layer
            self.layer = layer(in_features, hidden, heads=heads)
        else:
            self.layer = MeanAggregation(in_features, width, "mean" if aggregation == "mean" else "symmetric")
        self.head = nn.Linear(width, require_int(num_classes, "num_classes"))

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, weights = self.layer(x, adj)
        return self.head(F.elu(h)), weights  # (n, K), (H, n, n)


@dataclass
class CommunityGraph:
    x: torch.Tensor  # (n, F) node features
    adj: torch.Tensor  # (n, n) bool, self-loops included
    labels: torch.Tensor  # (n,) community
    informative: torch.Tensor  # (n,) bool: the node's features show its community
    train: torch.Tensor  # (n,) bool: labelled nodes


def make_community_graph(generator: torch.Generator, communities: int = 3, nodes: int = 300,
                         informative_share: float = 0.3, good_edges: int = 3, noisy_edges: int = 12,
                         noise: float = 1.0, train_share: float = 0.3) -> CommunityGraph:
    """Nodes in ``communities``; only the informative ones show theirs (a one-hot), the rest show noise.

    Every node reads ``good_edges`` informative nodes of its own community and ``noisy_edges``
    random uninformative nodes. A node's community is therefore only recoverable from the few
    informative neighbours: averaging all neighbours drowns them in noise, weighting them finds it.
    Features: ``[flag, one-hot or noise (communities), noise (2)]``, ``flag`` = informative.
    """
    n, K = require_int(nodes, "nodes"), require_int(communities, "communities")
    labels = torch.randint(0, K, (n,), generator=generator)
    informative = torch.rand(n, generator=generator) < informative_share
    x = noise * torch.randn(n, 1 + K + 2, generator=generator)
    x[:, 0] = informative.float()
    x[informative, 1:1 + K] = F.one_hot(labels[informative], K).float() + 0.1 * torch.randn(
        int(informative.sum()), K, generator=generator)
    adj = torch.eye(n, dtype=torch.bool)
    noisy = torch.nonzero(~informative).flatten()
    for i in range(n):
        same = torch.nonzero(informative & (labels == labels[i])).flatten()
        adj[i, same[torch.randperm(len(same), generator=generator)[:good_edges]]] = True
        adj[i, noisy[torch.randperm(len(noisy), generator=generator)[:noisy_edges]]] = True
    train = torch.rand(n, generator=generator) < train_share
    return CommunityGraph(x, adj, labels, informative, train)


@dataclass
class DictionaryLookup:
    x: torch.Tensor  # (N, 2k, 1 + 3k) node features of N graphs: k keys, then k queries
    adj: torch.Tensor  # (2k, 2k) bool, the same for every graph: each query reads every key
    values: torch.Tensor  # (N, k) the value each query must output (that of the key with its attribute)
    match: torch.Tensor  # (N, k) which key (0 .. k-1) has the query's attribute
    keys: int  # k


def make_dictionary_lookup(n: int, generator: torch.Generator, keys: int = 6) -> DictionaryLookup:
    """``n`` bipartite graphs of Brody et al.'s DictionaryLookup: ``k`` keys, ``k`` queries.

    Key ``j`` holds an attribute (a permutation of ``0 .. k-1`` over the keys) and a value (``k``
    distinct values drawn from ``0 .. 2k-1``); query ``q`` holds an attribute only. Each query reads
    all ``k`` keys (no self-loop; a key reads itself only) and must output the value of the key
    with its attribute. Which key that is depends on the query, so one ranking of the keys shared
    by every query (static attention) cannot find it: chance is ``1 / k`` among the values present.
    Distinct values leave no majority value to guess, and drawing ``k`` of ``2k`` means the values
    the query did *not* look up do not name the one it did. Features:
    ``[is_key, one-hot attribute (k), one-hot value (2k)]``; classes: the ``2k`` values.
    """
    n, k = require_int(n, "n"), require_int(keys, "keys", minimum=2)
    key_attr = torch.argsort(torch.rand(n, k, generator=generator), -1)  # (N, k): a permutation per graph
    query_attr = torch.argsort(torch.rand(n, k, generator=generator), -1)  # (N, k)
    key_value = torch.argsort(torch.rand(n, 2 * k, generator=generator), -1)[:, :k]  # (N, k): distinct values
    x = torch.zeros(n, 2 * k, 1 + 3 * k)
    x[:, :k, 0] = 1.0
    x[:, :k, 1:1 + k] = F.one_hot(key_attr, k).float()
    x[:, :k, 1 + k:] = F.one_hot(key_value, 2 * k).float()
    x[:, k:, 1:1 + k] = F.one_hot(query_attr, k).float()
    match = torch.argsort(key_attr, -1).gather(1, query_attr)  # (N, k): the key whose attribute is the query's
    adj = torch.zeros(2 * k, 2 * k, dtype=torch.bool)
    adj[k:, :k] = True  # queries read every key
    adj[:k, :k] = torch.eye(k, dtype=torch.bool)  # keys read themselves (their output is not used)
    return DictionaryLookup(x, adj, key_value.gather(1, match), match, k)
