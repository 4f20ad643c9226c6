"""Part III graph attention: GAT, GATv2 and GCN layers, their parity with torch_geometric, the tasks' graphs."""

import pytest
import torch

from attn_course.apps.graphs import (
    GATLayer,
    GATv2Layer,
    GraphClassifier,
    MeanAggregation,
    edges_to_adjacency,
    make_community_graph,
    make_dictionary_lookup,
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


@pytest.mark.parametrize("heads,concat", [(1, True), (3, True), (2, False)])
def test_gatv2_layer_matches_torch_geometric(heads, concat):
    pyg = pytest.importorskip("torch_geometric.nn")
    torch.manual_seed(0)
    edge_index, x = random_graph()
    conv = pyg.GATv2Conv(5, 4, heads=heads, concat=concat).eval()
    with torch.no_grad():
        conv.bias.normal_()
        conv.lin_l.bias.normal_()
        conv.lin_r.bias.normal_()
    layer = GATv2Layer.from_pyg(conv)
    out, weights = layer(x, edges_to_adjacency(edge_index, 7))
    theirs, (idx, alpha) = conv(x, edge_index, return_attention_weights=True)
    torch.testing.assert_close(out, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights[:, idx[1], idx[0]].T, alpha, atol=1e-6, rtol=1e-5)


def test_gcn_normalisation_matches_torch_geometric():
    pyg = pytest.importorskip("torch_geometric.nn")
    torch.manual_seed(0)
    edge_index, x = random_graph()
    conv = pyg.GCNConv(5, 4).eval()
    with torch.no_grad():
        conv.bias.normal_()
    layer = MeanAggregation.from_pyg(conv)
    assert layer.normalization == "symmetric"
    out, _ = layer(x, edges_to_adjacency(edge_index, 7))
    torch.testing.assert_close(out, conv(x, edge_index), atol=1e-5, rtol=1e-5)


def test_one_gatv2_coefficient_by_hand():
    torch.manual_seed(0)
    layer = GATv2Layer(3, 2)
    x = torch.randn(3, 3)
    adj = torch.tensor([[True, True, False], [True, True, True], [False, True, True]])
    _, w = layer(x, adj)
    src, dst = layer.lin_src(x), layer.lin_dst(x)
    e = lambda i, j: layer.att[0] @ torch.nn.functional.leaky_relu(dst[i] + src[j], 0.2)
    expected = torch.exp(e(0, 1)) / (torch.exp(e(0, 0)) + torch.exp(e(0, 1)))
    torch.testing.assert_close(w[0, 0, 1], expected)
    assert w[0, 0, 2] == 0


@pytest.mark.parametrize("layer", [GATLayer(5, 4, heads=2), GATv2Layer(5, 4, heads=2, concat=False),
                                   MeanAggregation(5, 4, "symmetric")])
def test_a_batch_of_graphs_with_the_same_edges_is_each_graph_alone(layer):
    torch.manual_seed(0)
    edge_index, _ = random_graph()
    adj = edges_to_adjacency(edge_index, 7)
    xs = torch.randn(3, 7, 5)
    out, w = layer(xs, adj)
    for b in range(3):
        out_b, w_b = layer(xs[b], adj)
        torch.testing.assert_close(out[b], out_b)
        torch.testing.assert_close(w[b] if w.dim() == 4 else w, w_b)  # the mean's weights are shared


def test_gat_ranks_the_neighbours_the_same_for_every_query_and_gatv2_need_not():
    """Brody et al. (2022), Thm. 1: GAT's attention is static, whatever its weights."""
    d = make_dictionary_lookup(20, torch.Generator().manual_seed(0), keys=5)
    torch.manual_seed(0)
    for cls, static in ((GATLayer, True), (GATv2Layer, False)):
        layer = cls(d.x.shape[-1], 8, heads=3)
        with torch.no_grad():
            e, _ = layer.scores(d.x)  # (N, H, 2k, 2k)
        order = e[..., 5:, :5].argsort(-1)  # (N, H, queries, keys)
        same = (order == order[..., :1, :]).all(-1).all(-1)  # (N, H)
        assert bool(same.all()) is static


def test_mean_aggregation_weights_are_one_over_degree_and_gcn_is_symmetric():
    adj = torch.tensor([[True, True, False], [True, True, True], [False, True, True]])
    _, w = MeanAggregation(3, 2)(torch.randn(3, 3), adj)
    torch.testing.assert_close(w[0, 1], torch.tensor([1 / 3, 1 / 3, 1 / 3]))
    _, w = MeanAggregation(3, 2, normalization="symmetric")(torch.randn(3, 3), adj)
    d = torch.tensor([2.0, 3.0, 2.0])
    torch.testing.assert_close(w[0], adj.float() / (d[:, None] * d[None, :]).sqrt())
    with pytest.raises(ValueError, match="normalization"):
        MeanAggregation(3, 2, normalization="row")


def test_bad_inputs_are_named():
    layer = GATLayer(3, 2)
    with pytest.raises(ValueError, match="x"):
        layer(torch.randn(4, 5), torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="adj"):
        layer(torch.randn(4, 3), torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="x"):
        GATv2Layer(3, 2)(torch.randn(2, 2, 4, 3), torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="aggregation"):
        GraphClassifier(3, 2, aggregation="attention")


def test_community_graph_and_classifier_shapes():
    g = make_community_graph(torch.Generator().manual_seed(0), nodes=60)
    assert g.adj.diagonal().all() and g.x.shape == (60, 6)
    for agg, heads in (("gat", 2), ("gatv2", 2), ("mean", 1), ("gcn", 1)):
        logits, w = GraphClassifier(6, 3, aggregation=agg)(g.x, g.adj)
        assert logits.shape == (60, 3) and w.shape == (heads, 60, 60)


def test_dictionary_lookup_answers_with_the_value_of_the_key_with_the_query_attribute():
    k = 4
    d = make_dictionary_lookup(10, torch.Generator().manual_seed(0), keys=k)
    assert d.x.shape == (10, 2 * k, 1 + 3 * k) and d.values.shape == d.match.shape == (10, k)
    key_attr, query_attr = d.x[:, :k, 1:1 + k].argmax(-1), d.x[:, k:, 1:1 + k].argmax(-1)
    key_value = d.x[:, :k, 1 + k:].argmax(-1)
    assert (key_attr.gather(1, d.match) == query_attr).all()
    assert (key_value.gather(1, d.match) == d.values).all()
    assert all(len(set(v.tolist())) == k for v in key_value)  # distinct values: no majority to guess
    assert d.adj[k:, :k].all() and not d.adj[k:, k:].any() and (d.adj[:k, :k] == torch.eye(k, dtype=torch.bool)).all()
    assert (d.x[:, k:, 1 + k:] == 0).all() and (d.x[:, k:, 0] == 0).all()  # queries carry no value
