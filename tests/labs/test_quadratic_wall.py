"""Chapter 18's measurements: FLOPs counted, peak tensor memory tracked, the 128k budget."""

import re
from pathlib import Path

import pytest
import torch

from attn_course.flash import attention_flops, naive_attention, tiled_attention
from attn_course.kv_cache import published_shapes
from attn_course.labs.quadratic_wall import (
    H200,
    H200_MEASURED_TFLOPS,
    count_flops,
    fit_slope,
    long_context_budget,
    memory_pass_ns,
    peak_tensor_bytes,
    scaling_table,
)

ROOT = Path(__file__).resolve().parents[2]

@pytest.mark.parametrize("B, H, N, d", [(1, 1, 16, 8), (2, 3, 40, 5)])
def test_counted_flops_match_the_formula(B, H, N, d):
    q, k, v = (torch.randn(B, H, N, d) for _ in range(3))
    assert count_flops(lambda: naive_attention(q, k, v)) == attention_flops(B, H, N, N, d)
    assert count_flops(lambda: naive_attention(q, k, v, causal=True)) == attention_flops(B, H, N, N, d)


def test_in_place_matrix_products_are_counted_too():
    # tiled_attention accumulates with baddbmm_ into reused buffers: the same work as the naive method
    B, H, N, d = 1, 2, 300, 16  # N not a multiple of the blocks
    q, k, v = (torch.randn(B, H, N, d) for _ in range(3))
    tiled = count_flops(lambda: tiled_attention(q, k, v, block_size=(64, 128), threads=1))
    assert tiled == attention_flops(B, H, N, N, d)
    causal = count_flops(lambda: tiled_attention(q, k, v, causal=True, block_size=64, threads=1))
    assert attention_flops(B, H, N, N, d, causal=True) < causal < 0.7 * tiled  # skips the tiles above the diagonal
    x, w, acc = torch.randn(3, 4), torch.randn(4, 5), torch.zeros(3, 5)
    assert count_flops(lambda: acc.addmm_(x, w)) == count_flops(lambda: torch.addmm(acc, x, w)) == 2 * 3 * 4 * 5


def test_peak_memory_of_naive_attention_is_two_score_matrices_and_the_output():
    B, H, N, d = 1, 2, 64, 8
    q, k, v = (torch.randn(B, H, N, d) for _ in range(3))
    assert peak_tensor_bytes(lambda: naive_attention(q, k, v)) == 2 * B * H * N * N * 4 + B * H * N * d * 4
    # the inputs and their views never count; a tiled computation keeps far less
    assert peak_tensor_bytes(lambda: q.transpose(-2, -1)) == 0
    assert peak_tensor_bytes(lambda: tiled_attention(q, k, v, block_size=16, threads=1)) < B * H * N * N * 4


def test_freed_temporaries_leave_the_count():
    x = torch.randn(256)  # 1 KiB

    def two_in_sequence():
        a = x * 2  # 1 KiB, freed when `a` is rebound
        a = a + 1  # both alive while add runs: 2 KiB
        return (a * 3).sum()  # a, a * 3 and the 4-byte sum

    assert peak_tensor_bytes(two_in_sequence) == 2 * 1024 + 4  # at the end: a, a * 3 and the sum


def test_scaling_table_and_slopes():
    rows = scaling_table({"naive": lambda q, k, v: naive_attention(q, k, v)}, [32, 64], B=1, H=1, d=8, repeats=1)
    assert [r["N"] for r in rows] == [32, 64] and all(r["seconds"] > 0 for r in rows)
    assert fit_slope([r["N"] for r in rows], [r["flops"] for r in rows]) == pytest.approx(2.0)
    assert fit_slope([1, 2, 4], [3, 12, 48]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        fit_slope([1, 2], [0, 1])


def test_memory_pass_rows():
    rows = memory_pass_ns([16, 32], B=1, H=1, repeats=1)
    assert [r["N"] for r in rows] == [16, 32] and rows[1]["matrix_bytes"] == 32 * 32 * 4
    assert all(r["reused_ns"] > 0 and r["fresh_ns"] > 0 for r in rows)


def test_long_context_budget_numbers():
    b = long_context_budget(published_shapes()["llama3-8b"], 131072, H200, achieved_tflops=500)
    assert b["scores_bytes_head"] == 2**35 and b["heads_that_fit"] == 4
    assert b["attention_flops"] == 32 * 4 * 131072**2 * 128 * 32 / 2
    assert b["crossover_N"] == pytest.approx(8e9 / (32 * 32 * 128))
    assert b["attention_seconds_achieved"] == pytest.approx(b["attention_flops"] / 500e12)
    assert H200.dense_bf16_tflops == pytest.approx(989.5)


def test_measured_h200_numbers_are_the_stored_results():
    text = (ROOT / "benchmarks" / "results" / "flash_gpu_h200.txt").read_text()
    rows = {(m[1], m[2]): (float(m[3]), float(m[4]))
            for m in re.finditer(r"^\s*128\s+(True|False)\s+(\d+)\s+(\d+)\s+(\d+)", text, re.M)}
    assert H200_MEASURED_TFLOPS["triton, causal"] == rows[("True", "16384")][0]
    assert H200_MEASURED_TFLOPS["sdpa flash, causal"] == rows[("True", "16384")][1]
    assert H200_MEASURED_TFLOPS["triton, non-causal"] == rows[("False", "16384")][0]
    assert H200_MEASURED_TFLOPS["sdpa flash, non-causal"] == rows[("False", "16384")][1]
