"""Chapter 25's lab: the counts and the model behind the decode kernels, the diagrams, the headline dict."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from attn_course.decode_attention import check_paged, gather_then_attend, paged_decode  # noqa: E402
from attn_course.labs import decode_kernels as lab  # noqa: E402


def test_intensity_of_decode_and_prefill():
    d = lab.attention_intensity(1, 4096, 128)
    assert d["flops"] == 4 * 4096 * 128 and d["bytes"] == 2 * (2 * 4096 * 128 + 2 * 128)
    assert abs(d["intensity"] - 1) < 1e-3
    assert lab.attention_intensity(4096, 4096, 128)["intensity"] == 2048
    assert abs(lab.attention_intensity(1, 4096, 128, n_rep=8)["intensity"] - 8) < 0.02
    assert lab.roofline_seconds(d["flops"], d["bytes"])["bound"] == "memory"
    with pytest.raises(ValueError, match="S must be a positive int"):
        lab.attention_intensity(1, 0, 128)


def test_occupancy_and_split_k_model():
    assert lab.occupancy(8) == {"programs": 8, "waves": 1, "busy": 8 / 132, "idle_sms_first_wave": 124}
    assert lab.occupancy(264)["waves"] == 2 and lab.occupancy(264)["busy"] == 1
    times = {n: lab.split_k_model(1, 8, 32, 32768, 128, n)["seconds"] for n in (1, 2, 4, 8, 16, 17, 32)}
    assert times[1] > times[2] > times[4] > times[8] > times[16] and times[17] > times[16]
    m = lab.split_k_model(1, 8, 32, 32768, 128, 16)
    assert m["ideal_s"] < m["seconds"] and m["reduce_s"] > 0 and lab.split_k_model(1, 8, 32, 100, 128, 1)["reduce_s"] == 0


def test_random_cache_bytes_and_agreement():
    cache = lab.random_paged_cache(batch=2, kv_heads=2, heads=4, seq_lens=[16, 8], head_dim=4, block_size=4)
    assert cache["block_table"].shape == (2, 4) and (cache["block_table"][1, 2:] == -1).all()
    check_paged(cache["q"], cache["k_pool"], cache["v_pool"], cache["block_table"], cache["seq_lens"])
    nbytes = lab.decode_bytes(cache)
    per_slot = 2 * 2 * 4 * 4  # K and V, 2 KV heads, d = 4, float32
    assert nbytes["paged"] == 6 * 4 * per_slot  # 4 + 2 blocks of 4 slots
    assert nbytes["gather_copy"] == 2 * 16 * per_slot  # padded to the longest row: 2 x 16 slots
    assert nbytes["gather"] == nbytes["paged"] + 2 * nbytes["gather_copy"]
    args = (cache["q"], cache["k_pool"], cache["v_pool"], cache["block_table"], cache["seq_lens"])
    torch.testing.assert_close(paged_decode(*args), gather_then_attend(*args), atol=1e-6, rtol=0)
    t = lab.time_paged_vs_gather(cache, repeats=1)
    assert set(t) == {"paged_s", "gather_then_attend_s", "gather_only_s"} and all(v > 0 for v in t.values())


def test_check_values_false_skips_only_the_value_checks():
    cache = lab.random_paged_cache(batch=1, kv_heads=1, heads=1, seq_lens=[8], head_dim=4, block_size=4)
    table = cache["block_table"].clone()
    table[0, 0] = 1000
    check_paged(cache["q"], cache["k_pool"], cache["v_pool"], table, cache["seq_lens"], check_values=False)
    with pytest.raises(ValueError, match="outside the pool"):
        check_paged(cache["q"], cache["k_pool"], cache["v_pool"], table, cache["seq_lens"])
    with pytest.raises(ValueError, match="block_table has shape"):
        check_paged(cache["q"], cache["k_pool"], cache["v_pool"], table[0], cache["seq_lens"], check_values=False)


def test_decode_comparison_dict():
    out = lab.decode_comparison(batch=2, heads=4, kv_heads=2, head_dim=8, seq_lens=[64, 40], block_size=16, repeats=1)
    assert out["gather_over_paged_bytes"] >= 3 and out["max_abs_difference"] < 1e-5
    assert out["split_k_splits"] == 16 and 10 < out["split_k_modelled_speedup"] < 16
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())


def test_time_decode_kernels_gpu_needs_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        lab.time_decode_kernels_gpu()


@pytest.mark.parametrize("name,texts", [
    ("draw_split_k", ["program 0\nm0, l0, acc0", "query q (one new token)"]),
    ("draw_block_table", ["block table", "7", "gather-then-attend: copy the blocks first"]),
])
def test_diagrams_have_alt_text_and_labels(name, texts):
    fig = getattr(lab, name)()
    try:
        assert isinstance(fig, Figure) and fig.get_label() == lab.ALT[name]
        shown = [t.get_text() for t in fig.axes[0].texts]
        for text in texts:
            assert text in shown, (text, shown)
    finally:
        plt.close(fig)


def test_diagram_arguments_are_checked():
    with pytest.raises(ValueError, match="table must hold"):
        lab.draw_block_table(table=(1, 2))
    with pytest.raises(ValueError, match="num_splits must be an int in"):
        lab.draw_split_k(num_splits=9)


def test_split_frame_draws_the_sms_and_the_curve():
    fig = Figure()
    lab.split_k_frame(fig, 16)
    left, right = fig.axes
    assert "128 of 132 SMs busy" in left.get_title() and right.get_title().startswith("n = 16")
