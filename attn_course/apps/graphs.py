"""Attention in graphs: the graph attention layer (GAT, Velickovic et al., 2018) and a mean-aggregation baseline.

A node attends over its neighbours (and itself): the score of neighbour ``j`` for node ``i`` is
``e_ij = LeakyReLU(a_dst . W h_i + a_src . W h_j)``, the weights are a softmax over the
neighbourhood only (the library's ``masked_softmax`` with the adjacency as the mask), and the
new state is the weighted sum of the neighbours' ``W h_j`` (the library's ``context_vector``).
The layer is dense (an ``(n, n)`` adjacency mask), which is what a small graph needs; it matches
``torch_geometric.nn.GATConv`` given the same weights (``GATLayer.from_pyg``).

``MeanAggregation`` is the GCN-style baseline: every neighbour counts the same.
``make_community_graph`` builds a graph whose communities are only recoverable by weighting
neighbours: a few informative neighbours among many noisy ones.

Dimension glossary: n nodes, F input features, H heads, C features per head (output), K classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import require_floating, require_int, shape_error
from ..attention import context_vector
from ..masking import masked_softmax

__all__ = ["GATLayer", "MeanAggregation", "GraphClassifier", "edges_to_adjacency", "CommunityGraph",
           "make_community_graph"]


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
    if x.dim() != 2 or x.shape[1] != width:
        raise shape_error("x", x, f"(n, {width}) node features")
    n = x.shape[0]
    if not isinstance(adj, torch.Tensor) or adj.dtype != torch.bool or tuple(adj.shape) != (n, n):
        got = f"{adj.dtype} {tuple(adj.shape)}" if isinstance(adj, torch.Tensor) else type(adj).__name__
        raise ValueError(f"adj must be a bool tensor of shape (n, n) = ({n}, {n}), adj[i, j] = i reads j; got {got}")


class GATLayer(nn.Module):
    """One graph attention layer: ``H`` heads of ``C`` features, concatenated (``H * C`` out) or averaged.

    ``forward(x (n, F), adj (n, n) bool)`` returns ``(out (n, H*C) or (n, C), weights (H, n, n))``.
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
        H, C = self.heads, self.out_features
        wh = self.lin(x).view(-1, H, C).transpose(0, 1)  # (n, H*C) -> (n, H, C) -> (H, n, C)
        s_dst = (wh * self.att_dst[:, None, :]).sum(-1)  # (H, n): node i's part of the score
        s_src = (wh * self.att_src[:, None, :]).sum(-1)  # (H, n): neighbour j's part
        e = F.leaky_relu(s_dst[:, :, None] + s_src[:, None, :], self.negative_slope)  # (H, n, n)
        return e, wh

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_graph(x, adj, self.in_features)
        e, wh = self.scores(x)  # (H, n, n), (H, n, C)
        weights = masked_softmax(e, adj)  # (H, n, n): each row sums to 1 over i's neighbours only
        out = context_vector(weights, wh)  # (H, n, C)
        out = out.transpose(0, 1).reshape(x.shape[0], -1) if self.concat else out.mean(0)  # (n, H*C) or (n, C)
        return out + self.bias, weights

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


class MeanAggregation(nn.Module):
    """The baseline without attention (GCN-style): the plain mean of the neighbours' ``W h_j``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = require_int(in_features, "in_features")
        self.lin = nn.Linear(in_features, require_int(out_features, "out_features"))

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_graph(x, adj, self.in_features)
        weights = adj.float() / adj.sum(-1, keepdim=True)  # (n, n): 1 / degree on every neighbour
        return weights @ self.lin(x), weights[None]  # (n, out), (1, n, n)


class GraphClassifier(nn.Module):
    """One aggregation layer (``"attention"``: GAT, ``"mean"``: mean), ELU, a linear classifier per node."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 8, heads: int = 2,
                 aggregation: str = "attention") -> None:
        super().__init__()
        if aggregation == "attention":
            self.layer = GATLayer(in_features, hidden, heads=heads)
            width = hidden * heads
        elif aggregation == "mean":
            self.layer, width = MeanAggregation(in_features, hidden * heads), hidden * heads
        else:
            raise ValueError(f"aggregation must be 'attention' or 'mean', got {aggregation!r}")
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
