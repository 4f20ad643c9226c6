"""Chapter 13's measurements on tiny budgets: what they return and what holds whatever the training."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from attn_course.labs.speech_recsys_graphs import (  # noqa: E402
    plot_history_attention,
    plot_lookup_weights,
    run_dictionary_lookup,
    run_recsys,
)


def test_dictionary_lookup_gat_ranking_is_static_after_any_training():
    r = run_dictionary_lookup(steps=3, keys=3, n_train=64, n_test=16, hidden=4, progress=False)
    assert r.same_ranking["gat"] == 1.0  # Brody et al., Thm. 1: true for every GAT, trained or not
    assert set(r.accuracy) == {"gat", "gatv2"} and all(0 <= a <= 1 for a in r.accuracy.values())
    w = r.weights["gatv2"]
    assert w.shape == (16, 3, 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(16, 3))  # each query's weights over the keys only
    plt.close(plot_lookup_weights(r)[0].figure)


def test_recsys_reports_each_block_and_the_occluded_hit_rates():
    r = run_recsys(steps=2, n_train=64, n_test=32, progress=False)
    blocks, n, t = r.weights.shape
    assert (blocks, n, t) == (2, 32, 11) and len(r.lag_weight) == 2
    for b in range(blocks):
        assert abs(sum(r.lag_weight[b].values()) - 1) < 1e-5  # the last position's weights over its history
    assert set(r.occluded) == {0, 1, 2, 3} and 0 <= r.best_sellers <= 1
    plt.close(plot_history_attention(r)[0].figure)
