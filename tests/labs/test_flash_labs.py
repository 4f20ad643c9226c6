"""The labs of chapters 21-23: memory measurements, traffic tables, diagrams."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from attn_course.flash import memory_traffic, naive_attention
from attn_course.labs import efficiency_diagrams
from attn_course.labs.flash_io import (
    memory_by_length,
    naive_attention_numpy,
    plot_memory_by_length,
    plot_memory_traffic,
    traffic_table,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_naive_numpy_equals_torch():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 9, 4), dtype=np.float32) for _ in range(3))
    for causal in (False, True):
        ref = naive_attention(*(torch.from_numpy(a) for a in (q, k, v)), causal=causal).numpy()
        np.testing.assert_allclose(naive_attention_numpy(q, k, v, causal), ref, atol=1e-6)


def test_memory_naive_quadratic_tiled_flat():
    mem = memory_by_length([128, 256, 512], head_dim=8, block_size=32)
    assert mem["N"] == [128, 256, 512]
    assert all(3.3 < b / a < 4.5 for a, b in zip(mem["naive"], mem["naive"][1:]))
    rest = [t - o for t, o in zip(mem["tiled"], mem["output"])]
    assert max(rest) < 1.2 * min(rest)
    assert isinstance(plot_memory_by_length(mem), matplotlib.axes.Axes)


def test_traffic_table_matches_memory_traffic():
    rows = traffic_table([1024, 2048], [64], 192 * 1024)
    t = memory_traffic(2048, 64, 192 * 1024)
    assert rows[1]["naive_MB"] == pytest.approx(t.naive_bytes / 1e6) and rows[1]["ratio"] == pytest.approx(t.ratio)
    fig = plot_memory_traffic([512, 1024], [64, 128], [64 * 1024, 128 * 1024])
    assert isinstance(fig, Figure) and len(fig.axes) == 2


@pytest.mark.parametrize("name", ["draw_tiling", "draw_ring"])
def test_diagrams_are_figures_with_alt_text(name):
    fig = getattr(efficiency_diagrams, name)()
    assert isinstance(fig, Figure) and fig.get_label() == efficiency_diagrams.ALT[name]
    assert len([p for ax in fig.axes for p in ax.patches]) >= 5
    w, h = fig.get_size_inches()
    assert 6 <= w <= 10.5 and h <= 5.5
    assert 40 < len(efficiency_diagrams.ALT[name]) < 500


def test_diagram_labels_and_arguments():
    text = "\n".join(t.get_text() for t in efficiency_diagrams.draw_tiling(blocks=5, query_block=3, key_block=2)
                     .findobj(matplotlib.text.Text))
    assert "$Q_3$" in text and "$K_2$" in text and "$S_{32}" in text and "SRAM" in text
    text = "\n".join(t.get_text() for t in efficiency_diagrams.draw_ring(3).findobj(matplotlib.text.Text))
    assert "rank 2" in text and "P = 3" in text
    with pytest.raises(ValueError, match="skipped"):
        efficiency_diagrams.draw_tiling(query_block=1, key_block=2)
    with pytest.raises(ValueError, match="world_size must be an int >= 2"):
        efficiency_diagrams.draw_ring(1)


def test_source_of_unwraps_kernel_objects():
    """Triton's autotuner and jit objects keep the Python function in ``.fn``: show_source reaches it."""
    from attn_course.utils import source_of

    class Wrapper:  # like triton.runtime.Autotuner / JITFunction
        def __init__(self, fn):
            self.fn = fn

        def __call__(self, *args):
            return self.fn(*args)

    text = source_of(Wrapper(Wrapper(naive_attention_numpy)))
    assert text.startswith("# naive_attention_numpy: attn_course/labs/flash_io.py, line ")
    assert "def naive_attention_numpy(" in text


@pytest.mark.parametrize("causal", [False, True])
def test_recomputed_backward_equals_autograd(causal):
    from attn_course.flash_backward import flash_backward, forward_with_lse

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 21, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    do = torch.randn(1, 2, 21, 8, generator=g, dtype=torch.float64)
    ref = torch.autograd.grad(naive_attention(q, k, v, causal=causal), (q, k, v), do)
    with torch.no_grad():
        out, lse = forward_with_lse(q, k, v, causal)
        torch.testing.assert_close(out, naive_attention(q, k, v, causal=causal))
        grads = flash_backward(q, k, v, out, lse, do, causal=causal, block_size=8)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b)


def test_recorded_table_parses():
    from attn_course.labs.flash_benchmark import load_recorded, parse_recorded, plot_tflops

    rec = load_recorded()
    assert "H200" in rec.device and rec.dtype == "torch.bfloat16" and (rec.batch, rec.heads) == (4, 32)
    assert len(rec.rows) == 12 and rec.columns == ["triton", "flash", "cudnn", "efficient"]
    assert rec.rows[(128, False, 4096)]["triton"] == 490.0
    assert len(plot_tflops(rec).axes) == 4
    with pytest.raises(ValueError, match="no TFLOP/s table"):
        parse_recorded("GPU torch 2\nnothing here")


def test_backward_table_is_parsed_apart_from_the_forward():
    from attn_course.labs.flash_benchmark import parse_recorded

    text = ("GPU X torch 2.11\ncorrectness: ok\n\nTFLOP/s, torch.bfloat16, B=4, H=32\n"
            "   d causal      N  triton     flash tri/flash\n 128  False   1024     398       322      1.23\n"
            "\nbackward TFLOP/s, torch.bfloat16, B=4, H=32\n"
            "   d causal      N  triton     flash tri/flash\n 128  False   1024     200       250      0.80\n"
            " 128   True   1024     150       190      0.79\n\ninstructions in the compiled kernels:\n"
            "  _attn_fwd: {'wgmma': True, 'mma': False}  x y z\ntarget 4: triton / flash 1 2 3 4 5 6 7\n")
    fw, bw = parse_recorded(text), parse_recorded(text, "backward")
    assert fw.rows == {(128, False, 1024): {"triton": 398.0, "flash": 322.0}}
    assert bw.rows == {(128, False, 1024): {"triton": 200.0, "flash": 250.0},
                       (128, True, 1024): {"triton": 150.0, "flash": 190.0}}
    assert (bw.device, bw.batch, bw.heads) == ("GPU X", 4, 32)
    with pytest.raises(ValueError, match=r"no TFLOP/s table \(backward\)"):
        parse_recorded(text.split("\nbackward")[0], "backward")
    with pytest.raises(ValueError, match="direction must be"):
        parse_recorded(text, "sideways")


def test_kernel_tiles_and_the_program_slider_frames():
    from attn_course.labs.flash_benchmark import PROGRAM_VISITS_ALT, draw_program_visits, kernel_tiles

    tiles = kernel_tiles(256, 256, 128, 64, causal=True)
    assert tiles == [([], [0, 1]), ([0, 1], [2, 3])]  # the diagonal costs 2 masked blocks per query block
    assert kernel_tiles(100, 100, 64, 32, causal=False) == [([0, 1, 2], [3]), ([0, 1, 2], [3])]
    assert all((full + masked)[0] == 0 for full, masked in kernel_tiles(1000, 700, 64, 32, True))  # key 0 first
    for program, expected in ((0, "program 0 -> query block 7: 14 mask-free\n+ 2 masked"),
                              (7, "program 7 -> query block 0: 0 mask-free\n+ 2 masked")):
        fig = Figure(figsize=(8.5, 4.2))
        draw_program_visits(fig, program)
        assert fig.axes[0].get_title().startswith(expected)
        heights = [p.get_height() for p in fig.axes[1].patches]
        assert heights == [16, 14, 12, 10, 8, 6, 4, 2]
    assert "program 0" in PROGRAM_VISITS_ALT and "hatched" in PROGRAM_VISITS_ALT
    with pytest.raises(ValueError, match="program"):
        draw_program_visits(Figure(), 8)


def test_shared_memory_estimate():
    from attn_course.labs.flash_benchmark import shared_memory_estimate

    # Q (128 x 128) + 3 stages of K and V (64 x 128), bfloat16: 32 KiB + 96 KiB
    assert shared_memory_estimate(128, 64, 128, 3) == 128 * 1024
    assert shared_memory_estimate(64, 32, 64, 2, dtype_bytes=4) == (64 * 64 + 2 * 2 * 32 * 64) * 4
    with pytest.raises(ValueError, match="stages"):
        shared_memory_estimate(64, 32, 64, 0)


def test_ptx_instructions_reads_compiled_kernels():
    from attn_course.labs.flash_benchmark import ptx_instructions

    class Compiled:
        asm = {"ptx": "wgmma.mma_async.sync.aligned ...\ncp.async.bulk.tensor.2d ..."}

    class Jit:  # like triton.runtime.JITFunction: device -> (kernel cache, ...)
        device_caches = {0: ({"key": Compiled()}, None, None, None, None)}

    class Tuner:  # like triton.runtime.Autotuner
        fn = Jit()

    found = ptx_instructions(Tuner())
    assert found == {"wgmma.mma_async": True, "mma.sync": False, "cp.async.bulk.tensor": True, "cp.async": True}

    class Empty:
        device_caches = {}

    with pytest.raises(ValueError, match="no compiled PTX"):
        ptx_instructions(Empty())


def test_tiny_model_trains_with_the_kernel_gradients():
    import attn_course.triton_attention as ta
    from attn_course.labs.flash_benchmark import train_with_kernel

    if not ta.INTERPRETED:
        pytest.skip("needs the Triton interpreter (TRITON_INTERPRET=1, set by tests/conftest.py without a GPU)")
    run = train_with_kernel(ta.flash_attention, ta.reference_attention, steps=3, batch=1, tokens=18)
    assert len(run.losses) == 3 and run.losses[-1] < 0.8 * run.losses[0]
    assert run.grad_difference < 1e-6 * max(1.0, run.grad_scale) and run.grad_scale > 1e-3


def test_kernel_block_counts():
    from attn_course.labs.flash_benchmark import kernel_block_counts

    assert kernel_block_counts(256, 256, 128, 64, causal=True) == {"full": 2, "masked": 4, "visited": 6, "all": 8}
    assert kernel_block_counts(100, 100, 64, 32, causal=False) == {"full": 6, "masked": 2, "visited": 8, "all": 8}
    big = kernel_block_counts(4096, 4096, 128, 64, causal=True)
    assert big["visited"] == 32 * 33  # query block i visits 2 (i + 1) key blocks of 64


def test_ring_schedule_and_step_times():
    from attn_course.labs.ring import plot_comm_vs_compute, ring_schedule, step_times

    sched = ring_schedule(3)
    assert [[c for c, _ in row] for row in sched] == [[0, 1, 2], [2, 0, 1], [1, 2, 0]]
    assert all(all(ok for _, ok in row) for row in sched)
    causal = ring_schedule(3, causal=True)
    assert sum(ok for row in causal for _, ok in row) == 6  # P (P + 1) / 2 chunk pairs
    rows = step_times([1024, 2048], head_dim=128, heads=32, flops_per_s=1e14, bytes_per_s=1e11)
    assert rows[1]["compute_s"] == pytest.approx(4 * rows[0]["compute_s"])
    assert rows[1]["send_s"] == pytest.approx(2 * rows[0]["send_s"])
    assert rows[0]["flops_per_byte"] == pytest.approx(1024)
    assert isinstance(plot_comm_vs_compute([512, 1024], 64, 8, 1e14, [1e10, 1e11]), matplotlib.axes.Axes)


def test_rank_environment_in_launched_processes():
    from attn_course.labs.ring import rank_environment
    from attn_course.ring_attention import launch

    envs = launch(rank_environment, 2)
    assert [e["rank"] for e in envs] == [0, 1] and all(e["backend"] == "gloo" for e in envs)
    assert envs[1]["RANK"] == "1" and envs[0]["WORLD_SIZE"] == "2" and envs[0]["pid"] != envs[1]["pid"]


def test_shipped_record_is_the_benchmark_output(root):
    """The package ships a copy of benchmarks/results/flash_gpu_h200.txt (chapters run from chapters/)."""
    from importlib import resources

    shipped = resources.files("attn_course.labs").joinpath("data", "flash_gpu_h200.txt").read_text(encoding="utf-8")
    assert shipped == (root / "benchmarks" / "results" / "flash_gpu_h200.txt").read_text(encoding="utf-8")


def test_chapters_use_the_alt_text_of_each_diagram(root):
    import json
    import re

    drawn = set()
    for name in ("21_online_softmax_tiling", "22_flash_attention_triton", "23_ring_attention"):
        nb = json.loads((root / "chapters" / f"{name}.ipynb").read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            m = re.fullmatch(r"(draw_\w+)\([^)]*\);", "".join(cell["source"]).strip())
            if cell["cell_type"] == "code" and m:
                assert cell["metadata"]["mystnb"]["image"]["alt"] == efficiency_diagrams.ALT[m.group(1)], (name, m.group(1))
                drawn.add(m.group(1))
    assert drawn == {"draw_tiling", "draw_ring", "draw_memory_hierarchy", "draw_gpu_execution"}, \
        "every diagram of these chapters is drawn in one of them"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_gpu_benchmark_says_it_needs_a_gpu():
    from attn_course.labs.flash_benchmark import benchmark_backends

    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        benchmark_backends()


def test_tiling_without_causal_mask_visits_every_tile():
    text = "\n".join(t.get_text() for t in efficiency_diagrams.draw_tiling(causal=False, key_block=3)
                     .findobj(matplotlib.text.Text))
    assert "every tile visited" in text and "$K_3$" in text


def test_the_one_benchmark_loop_runs_on_a_cpu_with_a_given_timer():
    """The Triton-vs-SDPA loop (chapter 22 and both GPU scripts call it), on a CPU: the kernel under
    the interpreter, every requested backend a column, TFLOP/s from attention_flops and the timer."""
    import attn_course.triton_attention as ta
    from attn_course.labs.flash_benchmark import benchmark_backends

    if not ta.INTERPRETED:
        pytest.skip("needs the Triton interpreter (TRITON_INTERPRET=1, set by tests/conftest.py without a GPU)")
    seen = []
    rec = benchmark_backends(lengths=(32,), head_dims=(16,), causals=(False, True), dtype=torch.float32,
                             batch=1, heads=1, backends=("math",), device="cpu",
                             milliseconds=lambda fn: (fn(), 2.0)[1], progress=lambda key, row: seen.append(key))
    assert seen == [(16, False, 32), (16, True, 32)] and rec.columns == ["triton", "math"]
    flops = 4 * 32 * 32 * 16  # 4 B H N^2 d
    assert rec.rows[(16, False, 32)]["math"] == pytest.approx(flops / 2e-3 / 1e12)
    assert rec.rows[(16, True, 32)]["triton"] == pytest.approx(flops / 2 / 2e-3 / 1e12)
    back = benchmark_backends(lengths=(20,), head_dims=(16,), causals=(True,), dtype=torch.float32, batch=1,
                              heads=1, backends=("math",), device="cpu", milliseconds=lambda fn: (fn(), 4.0)[1],
                              direction="backward")
    flops = 2.5 * 4 * 20 * 20 * 16 / 2  # the backward counts 2.5 x the (causal) forward
    assert back.rows[(16, True, 20)] == pytest.approx({"triton": flops / 4e-3 / 1e12, "math": flops / 4e-3 / 1e12})
    with pytest.raises(ValueError, match="direction must be"):
        benchmark_backends(device="cpu", milliseconds=lambda fn: 1.0, direction="up")
    with pytest.raises(ValueError, match="milliseconds="):
        benchmark_backends(device="cpu")
    with pytest.raises(ValueError, match="backends must be among"):
        benchmark_backends(device="cpu", milliseconds=lambda fn: 1.0, backends=("fastest",))


def test_online_softmax_trace_follows_the_recurrence():
    from attn_course.labs.flash_io import draw_online_softmax_step, online_softmax_trace

    x = torch.tensor([1.0, 3.0, 0.5, 2.0, 6.0, -1.0, 4.0, 5.5, 2.5, 7.0, 0.0, 1.5])
    trace = online_softmax_trace(x, 3)
    assert [s.m for s in trace] == [3.0, 6.0, 6.0, 7.0] and [s.stop for s in trace] == [3, 6, 9, 12]
    assert [s.alpha for s in trace] == pytest.approx([0.0, np.exp(-3.0), 1.0, np.exp(-1.0)])
    for s in trace:  # l is the sum over the prefix, measured against the running max
        assert s.ell == pytest.approx(torch.exp(x[: s.stop] - s.m).sum().item())
    fig = Figure()
    draw_online_softmax_step(fig, x, trace, 1)
    assert len(fig.axes) == 2 and "block 2 of 4" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="x has shape"):
        online_softmax_trace(x.view(3, 4), 3)
    with pytest.raises(ValueError, match="step"):
        draw_online_softmax_step(Figure(), x, trace, 4)


def test_tiled_work_counts_tiles_and_lazy_rescaling():
    from attn_course.labs.flash_io import tiled_work

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 8, generator=g) for _ in range(3))
    plain, causal = tiled_work(q, k, v, block_size=16), tiled_work(q, k, v, causal=True, block_size=16)
    assert (plain["tiles"], plain["redone"], plain["block_maxima"], plain["masked"]) == (16, 0, 4, 0)
    assert (causal["tiles"], causal["redone"], causal["block_maxima"], causal["masked"]) == (10, 0, 4, 4)
    torch.testing.assert_close(causal["out"], naive_attention(q, k, v, causal=True))
    # scores that climb by ~23 nats per key block: every later block is redone, still exact
    q = torch.ones(1, 1, 4, 8)
    k = torch.arange(64.0).view(1, 1, 64, 1).expand(1, 1, 64, 8) / 2
    steep = tiled_work(q, k, v[:, :1], block_size=16)
    assert steep["tiles"] == 4 and steep["redone"] == 3 and steep["block_maxima"] == 4
    torch.testing.assert_close(steep["out"], naive_attention(q, k, v[:, :1]))


def test_query_outer_traffic_and_the_h100():
    from attn_course.labs.flash_io import H100_SXM, query_outer_traffic

    assert query_outer_traffic(4096, 128, 128) == 2 * 4096 * 128 * (1 + 32)
    assert query_outer_traffic(100, 8, 64, batch_heads=3) == 3 * 2 * 100 * 8 * (1 + 2)
    assert query_outer_traffic(4096, 128, 128) < memory_traffic(4096, 128, 64 * 1024).naive_elements
    assert H100_SXM.sms == 132 and H100_SXM.shared_per_sm == 228 * 1024 and H100_SXM.l2_bytes == 50 * 2**20
    assert H100_SXM.shared_total == 132 * 228 * 1024 and H100_SXM.hbm_bytes_per_s == 3.35e12


def test_simulated_ring_ends_at_attention_and_draws():
    from attn_course.labs.ring import draw_ring_step, ring_schedule, simulate_ring

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 4, generator=g) for _ in range(3))
    for causal in (False, True):
        steps = simulate_ring(q, k, v, 3, causal=causal)
        assert [s.held for s in steps] == [[c for c, _ in row] for row in ring_schedule(3, causal)]
        assert [s.computed for s in steps] == [[ok for _, ok in row] for row in ring_schedule(3, causal)]
        assert max(steps[-1].to_final) < 1e-6
    assert [sorted(m) for m in steps[-1].merged] == [[0], [0, 1], [0, 1, 2]]  # causal: earlier chunks only
    assert min(simulate_ring(q, k, v, 3)[0].to_final) > 0.01  # after one step, not yet the output
    fig = Figure()
    draw_ring_step(fig, steps, 2)
    text = "\n".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
    assert "rank 2" in text and "KV0" in text and len(fig.axes) == 2
    with pytest.raises(ValueError, match="divisible"):
        simulate_ring(q, k, v, 5)


def test_causal_pairs_per_rank():
    from attn_course.labs.ring import causal_pairs_per_rank

    N, P = 64, 4
    for layout in ("contiguous", "zigzag"):
        assert sum(causal_pairs_per_rank(N, P, layout)) == N * (N + 1) // 2
    assert causal_pairs_per_rank(N, P) == [136, 392, 648, 904]
    assert len(set(causal_pairs_per_rank(N, P, "zigzag"))) == 1
    with pytest.raises(ValueError, match="layout"):
        causal_pairs_per_rank(N, P, "striped")
