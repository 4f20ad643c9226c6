"""Part IV's lab helpers: intensity, cache tables, timing, paging plots, and finding/loading local
GPT-2 weights (never downloading)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from attn_course.decoding import generate  # noqa: E402
from attn_course.gpt import GPT, GPTConfig  # noqa: E402
from attn_course.kv_cache import PagedCache, published_shapes  # noqa: E402
from attn_course.labs import gpt2_weights  # noqa: E402
from attn_course.labs.cache_shrinking import (  # noqa: E402
    cache_table,
    influence_by_distance,
    plot_paging,
    simulate_paging,
    time_kv_head_decode,
    trace_forked_paging,
    trace_ring_buffer,
)
from attn_course.labs.kv_cache_costs import (  # noqa: E402
    balance_batch,
    decode_intensity,
    decode_intensity_limit,
    decode_seconds_alternated,
    plot_roofline,
    prefill_intensity,
    read_bandwidth,
    roofline_points,
    thread_speedups,
    time_generation,
    weight_bytes,
)


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(vocab_size=31, context_length=32, n_layer=2, n_head=4, n_embd=16), **kw})).eval()


def test_weight_bytes_counts_every_parameter_but_positions():
    for kw in ({}, {"n_kv_head": 2}, {"n_kv_head": 1, "bias": False}):
        model = tiny(**kw)
        n = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("wpe"))
        assert weight_bytes(model.config) == 4 * n


def test_intensities():
    gpt2 = GPTConfig()
    assert 0.45 < decode_intensity(gpt2, 512) < 0.55  # ~2 FLOPs per 4-byte weight
    assert decode_intensity(gpt2, 512, batch=8) > 5 * decode_intensity(gpt2, 512)
    assert prefill_intensity(gpt2, 512) > 100


def test_batching_decode_tends_to_flops_per_cache_byte():
    gpt2 = GPTConfig()
    limit = decode_intensity_limit(gpt2, 512)
    assert 6.5 < limit < 7.5  # GPT-2 small, float32, 512 cached tokens
    assert decode_intensity(gpt2, 512, batch=10**7) == pytest.approx(limit, rel=1e-3)
    assert decode_intensity_limit(gpt2, 2048) < limit < decode_intensity_limit(gpt2, 128)  # longer caches: lower


def test_balance_batch_is_the_first_batch_at_the_balance():
    gpt2 = GPTConfig()
    for context, balance in ((128, 11.7), (512, 5.0), (512, 0.3), (128, 26.0)):
        b = balance_batch(gpt2, context, balance)
        assert decode_intensity(gpt2, context, b) >= balance
        assert b == 1 or decode_intensity(gpt2, context, b - 1) < balance
    assert balance_batch(gpt2, 512, 8.0) is None  # above the limit: no batch gets there
    assert balance_batch(gpt2, 512, decode_intensity_limit(gpt2, 512) * 1.001) is None
    with pytest.raises(ValueError, match="balance"):
        balance_batch(gpt2, 512, 0)


def test_roofline_places_each_point_on_the_roof():
    gpt2 = GPTConfig()
    series = roofline_points(gpt2, contexts=(128, 512), batches=(1, 8, 64), prompt_len=256)
    assert list(series) == ["decode, 128 cached", "decode, 512 cached", "prefill"]
    assert list(series["decode, 512 cached"]) == ["batch 1", "batch 8", "batch 64"]
    assert series["prefill"]["256-token prompt"] == prefill_intensity(gpt2, 256)
    peak, bandwidth = 1e11, 1e10  # balance 10 FLOP/byte
    ax, attained = plot_roofline(peak, bandwidth, series)
    for name, points in series.items():
        for label, x in points.items():
            assert attained[name][label] == min(peak, x * bandwidth)
    assert attained["prefill"]["256-token prompt"] == peak  # compute-bound
    assert attained["decode, 512 cached"]["batch 1"] < peak / 10  # memory-bound
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "machine balance 10.0 FLOP/byte" in legend and "batch 64" in legend
    with pytest.raises(ValueError, match="bandwidth"):
        plot_roofline(peak, 0, series)
    with pytest.raises(ValueError, match="series"):
        plot_roofline(peak, bandwidth, {"empty": {}})
    plt.close("all")


def test_thread_speedups_are_ratios():
    ratios = thread_speedups(threads=2, gemv_mbytes=1, gemm_size=32, repeat=1)
    assert set(ratios) == {"gemv", "gemm"} and all(0 < r < 100 for r in ratios.values())
    assert torch.get_num_threads() >= 1
    with pytest.raises((TypeError, ValueError), match="gemv_mbytes"):
        thread_speedups(gemv_mbytes=0)


def test_cache_table():
    rows = {r["key"]: r for r in cache_table(published_shapes(), tokens=10, batch=2)}
    assert rows["llama3-8b"]["per_token"] == 2 * 32 * 8 * 128 * 2
    assert rows["gpt2"]["cache"] == 2 * 12 * 12 * 64 * 2 * 10 * 2


def test_time_generation_and_plots_return_what_they_measure():
    model = tiny()
    tps = time_generation(model, torch.randint(0, 31, (1, 3)), [4, 8], repeat=1, progress=False)
    assert set(tps) == {"no cache", "dynamic", "static"} and all(v > 0 for d in tps.values() for v in d.values())
    ax, stats = plot_paging(max_len=256, block_sizes=(8, 32), num_requests=20)
    assert stats[8].paged_waste < stats[32].paged_waste < stats[8].contiguous_waste
    plt.close("all")


def test_decode_arms_take_turns_with_their_own_threads(monkeypatch):
    from attn_course.labs import kv_cache_costs

    seen, warmups = [], []

    def fake(model, prompt_len, new_tokens, repeat, warmup):
        seen.append((model, torch.get_num_threads()))
        warmups.append(warmup)
        return 0.0, 0.01 * len(seen)  # later runs slower: each arm keeps its first (best) one

    monkeypatch.setattr(kv_cache_costs, "time_prefill_decode", fake)
    best = decode_seconds_alternated({"a": ("A", 1), "b": ("B", 2)}, prompt_len=4, rounds=2)
    assert seen == [("A", 1), ("B", 2), ("A", 1), ("B", 2)] and best == {"a": 0.01, "b": 0.02}
    assert warmups == [True, True, False, False]  # each arm warmed up once, in the first round
    model = tiny()
    real = decode_seconds_alternated({"one": (model, 1)}, prompt_len=4, new_tokens=2, rounds=1, repeat=1)
    assert real["one"] > 0


def test_find_and_load_local_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(gpt2_weights.ENV_VAR, raising=False)
    monkeypatch.setattr(gpt2_weights, "_hub_cache_file", lambda repo, name: None)  # an empty HF cache
    assert gpt2_weights.find_gpt2_weights(folders=[tmp_path]) is None
    model = tiny()
    torch.save(gpt2_weights.hf_state_dict(model), tmp_path / "pytorch_model.bin")
    monkeypatch.setenv(gpt2_weights.ENV_VAR, str(tmp_path))
    found = gpt2_weights.find_gpt2_weights()
    assert found == tmp_path / "pytorch_model.bin"
    loaded = gpt2_weights.load_gpt2_weights(found, model.config)
    idx = torch.randint(0, 31, (2, 5))
    assert torch.equal(generate(loaded, idx, 6), generate(model, idx, 6))
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in gpt2_weights.hf_state_dict(model).items() if k != "lm_head.weight"},
              str(tmp_path / "model.safetensors"))
    assert gpt2_weights.find_gpt2_weights() == tmp_path / "model.safetensors"
    loaded = gpt2_weights.load_gpt2_weights(tmp_path / "model.safetensors", model.config)
    assert torch.equal(generate(loaded, idx, 6), generate(model, idx, 6))
    assert "never" in gpt2_weights.HOW_TO_GET_GPT2 and gpt2_weights.ENV_VAR in gpt2_weights.HOW_TO_GET_GPT2


def test_read_bandwidth_is_a_rate_and_names_bad_sizes():
    assert 0.1 < read_bandwidth(mbytes=8, repeat=1) < 10_000  # GB/s, on any machine
    with pytest.raises((TypeError, ValueError), match="mbytes"):
        read_bandwidth(mbytes=0)


def test_simulate_paging():
    stats = simulate_paging(num_requests=200, max_len=1024, block_size=16, shared_prefix=100, seed=0)
    assert stats.contiguous_waste > 0.3  # lengths uniform up to max_len: about half is wasted
    assert stats.paged_waste < 16 / 100  # under one block per request
    assert 0 < stats.sharing_saving < 1
    assert simulate_paging(shared_prefix=0).sharing_saving == 0
    with pytest.raises(ValueError, match="shared_prefix"):
        simulate_paging(max_len=10, shared_prefix=10)


def test_simulation_counts_what_the_paged_cache_allocates():
    stats = simulate_paging(num_requests=3, max_len=20, block_size=4, shared_prefix=6, min_len=7, seed=1)
    import random

    rng = random.Random(1)  # the same draws as the simulation
    lengths = [rng.randint(7, 20) for _ in range(3)]
    assert sum(lengths) == stats.tokens_needed
    for n in lengths:  # a real PagedCache takes ceil(n / block_size) blocks for n tokens
        one = PagedCache(1, 1, 2, batch_size=1, block_size=4, num_blocks=64)
        one.update(0, torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2))  # n positions of layer 0
        assert one.blocks_in_use == -(-n // 4)
    assert stats.paged_slots == sum(-(-n // 4) for n in lengths) * 4
    assert stats.shared_slots == stats.paged_slots - 2 * (6 // 4) * 4


def test_time_kv_head_decode_reports_speed_and_the_bytes_a_step_reads():
    out = time_kv_head_decode((4, 2, 1), n_head=4, n_embd=32, batch=2, context=16, steps=2, repeat=1)
    assert set(out) == {4, 2, 1} and all(r["tokens_per_s"] > 0 for r in out.values())
    assert out[4]["cache_bytes"] == 2 * out[2]["cache_bytes"] == 4 * out[1]["cache_bytes"] == 2 * 4 * 8 * 16 * 2 * 4
    assert out[4]["weight_bytes"] > out[2]["weight_bytes"] > out[1]["weight_bytes"]  # smaller K/V projections


def test_influence_reaches_exactly_layers_times_window_minus_one():
    for n_layer, window in ((1, 4), (2, 3)):
        model = tiny(n_layer=n_layer, sliding_window=window)
        change = influence_by_distance(model, 12)
        reach = n_layer * (window - 1)
        assert change.shape == (12,) and bool((change[:reach + 1] > 1e-6).all())
        assert bool((change[reach + 1:] <= 1e-6).all())
    assert bool((influence_by_distance(tiny(), 12) > 1e-6).all())  # no window: every token counts


def test_ring_buffer_trace_is_the_real_cache_wrapping():
    steps = trace_ring_buffer(window=4, steps=7)
    assert [s.position for s in steps] == list(range(7))
    assert steps[1].slots == [0, 1, None, None] and steps[1].returned == [0, 1]
    assert steps[6].slots == [4, 5, 6, 3] and steps[6].returned == [4, 5, 6, 3]  # slot order, not time order
    for s in steps:
        assert sorted(s.returned) == list(range(max(0, s.position - 3), s.position + 1))  # the window


def test_forked_paging_trace_shares_then_copies_on_write():
    steps = trace_forked_paging(prompt_len=5, num_samples=3, new_tokens=4, block_size=2)
    prefill, fork, first, *rest = steps
    assert prefill.block_tables == [[0, 1, 2]] and prefill.contents[2] == [4, None]
    assert fork.block_tables == [[0, 1, 2]] * 3 and fork.ref_counts[:3] == [3, 3, 3] and fork.copies_on_write == 0
    assert first.copies_on_write == 2 and first.block_tables == [[0, 1, 3], [0, 1, 4], [0, 1, 2]]
    assert first.contents[3] == first.contents[4] == first.contents[2] == [4, 5]  # copied, then written
    assert "sequence 2 is now the only user of #2: it writes in place" in first.events
    last = steps[-1]
    assert last.seq_len == 9 and all(len(t) == 5 for t in last.block_tables)
    assert sum(1 for r in last.ref_counts if r) == 2 + 3 * 3  # the prompt's 2 full blocks stored once


def test_block_outputs_find_the_first_block_a_loader_got_wrong():
    """Against a transformers GPT-2 built from our own weights (hf_state_dict): equal after every block;
    with one square weight left untransposed, equal before that block and not from it on."""
    transformers = pytest.importorskip("transformers")
    from matplotlib.figure import Figure

    cfg = GPTConfig(vocab_size=31, context_length=16, n_layer=3, n_head=2, n_embd=16)
    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    hf_cfg = transformers.GPT2Config(vocab_size=31, n_positions=16, n_embd=16, n_layer=3, n_head=2)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.load_state_dict(gpt2_weights.hf_state_dict(ours), strict=False)
    idx = torch.randint(0, 31, (2, 5))
    good = gpt2_weights.block_outputs(ours, hf, idx)
    assert len(good) == 3 and all((a - b).abs().max() < 1e-5 for a, b in good)
    with torch.no_grad():
        ours.h[1].attn.out.weight.copy_(ours.h[1].attn.out.weight.t().clone())
    bad = gpt2_weights.block_outputs(ours, hf, idx)
    assert [bool((a - b).abs().max() > 1e-4) for a, b in bad] == [False, True, True]
    fig = Figure()
    gpt2_weights.draw_block_comparison(fig, {"right": good, "wrong": bad}, 2, "wrong")
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "wrong:\nafter block 2"
