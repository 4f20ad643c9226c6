"""Chapter 24's lab: the seeded trace, the comparison the benchmark reads, the sweep and the figures."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from attn_course.labs.serving_trace import (  # noqa: E402
    draw_iteration_schedule,
    draw_sweep_frame,
    make_trace,
    plot_metrics,
    run_policies,
    serving_comparison,
    sweep,
)


def test_the_trace_is_seeded_and_shaped_as_asked():
    a, b = make_trace(30, rate=2.0, seed=3), make_trace(30, rate=2.0, seed=3)
    assert a == b and a != make_trace(30, rate=2.0, seed=4)
    assert a[0].arrival == 0 and all(x.arrival <= y.arrival for x, y in zip(a, a[1:]))
    assert all(8 <= len(r.prompt) <= 96 and 4 <= r.max_new_tokens <= 128 for r in a)
    slow = make_trace(30, rate=0.5, seed=3)
    assert slow[-1].arrival == pytest.approx(4 * a[-1].arrival)  # the same gaps, scaled by the rate
    with pytest.raises(ValueError, match="rate"):
        make_trace(5, rate=0)
    with pytest.raises(ValueError, match="output_lengths"):
        make_trace(5, output_lengths=(10, 5))


def test_serving_comparison_reports_identical_outputs_and_ratios():
    r = serving_comparison("tiny", num_requests=16, check_alone=2)
    assert r["outputs_identical"] and r["mismatched_requests"] == 0 and r["alone_equal"] == 2
    assert r["continuous_vs_static_tokens_per_unit"] > 1.0  # 16 requests: one static batch
    assert set(r["metrics"]) == {"static", "continuous", "chunked"}
    with pytest.raises(ValueError, match="shape"):
        serving_comparison("gpt9")


def test_sweep_and_figures():
    swept = sweep("rate", [0.5, 4.0], trace_kwargs={"num_requests": 16})
    assert set(swept) == {0.5, 4.0}
    assert all(m["static"]["ttft_p99"] > m["continuous"]["ttft_p99"] for m in swept.values())
    by_budget = sweep("token_budget", [16, 64], trace_kwargs={"num_requests": 16})
    assert by_budget[16]["chunked"]["steps"] >= by_budget[64]["chunked"]["steps"]
    results = run_policies(make_trace(8, rate=0.5), None)
    fig = draw_iteration_schedule(results)
    assert len(fig.axes) == 3 and fig.get_label()
    fig2 = plot_metrics({p: r.metrics for p, r in results.items()})
    fig3 = plt.figure()
    draw_sweep_frame(fig3, 4.0, swept)
    assert len(fig3.axes) == 3
    for f in (fig, fig2, fig3):
        plt.close(f)
    with pytest.raises(ValueError, match="knob"):
        sweep("temperature", [1.0])
