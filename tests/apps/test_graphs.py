"""Part III graph attention: the GAT layer, its parity with torch_geometric, the community graph."""

import pytest
import torch

from attn_course.apps.graphs import (
    GATLayer,
    GraphClassifier,
    MeanAggregation,
    edges_to_adjacency,
    make_community_graph,
)


def random_graph(n=7, e=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, n, (2, e), generator=g)
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]  # self-loops are added by both layers
    edge_index = torch.unique(edge_index, dim=1)  # a dense adjacency has no multi-edges
    return edge_index, torch.randn(n, 5, generator=g)


@pytest.mark.parametrize("heads,concat", [(1, True), (3, True), (2, False)])
def test_gat_layer_matches_torch_geometric(heads, concat):
    pyg = pytest.importorskip("torch_geometric.nn")
    torch.manual_seed(0)
    edge_index, x = random_graph()
    conv = pyg.GATConv(5, 4, heads=heads, concat=concat).eval()
    with torch.no_grad():
        conv.bias.normal_()
    layer = GATLayer.from_pyg(conv)
    out, weights = layer(x, edges_to_adjacency(edge_index, 7))
    theirs, (idx, alpha) = conv(x, edge_index, return_attention_weights=True)
    torch.testing.assert_close(out, theirs, atol=1e-5, rtol=1e-5)
    # the same coefficient for every edge (idx[0] source j, idx[1] target i)
    torch.testing.assert_close(weights[:, idx[1], idx[0]].T, alpha, atol=1e-6, rtol=1e-5)


def test_one_gat_coefficient_by_hand():
    torch.manual_seed(0)
    layer = GATLayer(3, 2)
    x = torch.randn(3, 3)
    adj = torch.tensor([[True, True, False], [True, True, True], [False, True, True]])
    _, w = layer(x, adj)
    wh = layer.lin(x)
    e = lambda i, j: torch.nn.functional.leaky_relu(layer.att_dst[0] @ wh[i] + layer.att_src[0] @ wh[j], 0.2)
    expected = torch.exp(e(0, 1)) / (torch.exp(e(0, 0)) + torch.exp(e(0, 1)))
    torch.testing.assert_close(w[0, 0, 1], expected)
    assert w[0, 0, 2] == 0  # not a neighbour


def test_mean_aggregation_weights_are_one_over_degree():
    adj = torch.tensor([[True, True, False], [True, True, True], [False, True, True]])
    _, w = MeanAggregation(3, 2)(torch.randn(3, 3), adj)
    torch.testing.assert_close(w[0, 1], torch.tensor([1 / 3, 1 / 3, 1 / 3]))


def test_bad_inputs_are_named():
    layer = GATLayer(3, 2)
    with pytest.raises(ValueError, match="x"):
        layer(torch.randn(4, 5), torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="adj"):
        layer(torch.randn(4, 3), torch.ones(4, 3, dtype=torch.bool))


def test_community_graph_and_classifier_shapes():
    g = make_community_graph(torch.Generator().manual_seed(0), nodes=60)
    assert g.adj.diagonal().all() and g.x.shape == (60, 6)
    logits, w = GraphClassifier(6, 3)(g.x, g.adj)
    assert logits.shape == (60, 3) and w.shape == (2, 60, 60)
