"""Chapter 25's experiment: why decode attention needs its own kernels, in counts, models and timings.

The mechanisms are ``attn_course.decode_attention`` (torch) and ``attn_course.triton_decode``
(Triton). This lab measures and models them:

* ``attention_intensity``     FLOPs, bytes and FLOP/byte of attention for ``L`` queries against
                              ``S`` keys (one decode query vs a prefill), from stated formulas.
* ``roofline_seconds``        ``max(FLOPs / peak, bytes / bandwidth)`` on a stated accelerator.
* ``occupancy``               programs of a launch against the SMs: waves, share of SMs busy.
* ``split_k_model``           the modelled time of a split-K decode launch, and its speed-up.
* ``plot_split_speedup``      the modelled speed-up against the number of splits.
* ``split_k_frame``           one frame of the chapter's slider: SMs busy and time for ``n`` splits.
* ``random_paged_cache``      a paged cache with shuffled blocks and ragged lengths (synthetic).
* ``decode_bytes``            bytes moved by a paged decode and by gather-then-attend, counted.
* ``time_paged_vs_gather``    CPU seconds of ``paged_decode`` and ``gather_then_attend``.
* ``decode_comparison``       the chapter's headline numbers as a dict (for ``benchmarks/serving.py``).
* ``time_decode_kernels_gpu`` GPU milliseconds of the Triton decode kernels against SDPA (CUDA only;
                              ``benchmarks/decode_gpu_quick.py`` and the chapter's GPU cell call it).
* ``draw_split_k``, ``draw_block_table``   the chapter's diagrams (``ALT`` holds their alt text).

Hardware numbers are stated, not measured here: ``H200`` (NVIDIA's datasheet, from
``attn_course.labs.quadratic_wall``) and ``HOPPER_SMS`` (132 SMs on an H100 SXM and an H200).

Dimension glossary: B batch, H query heads, H_kv KV heads, n_rep = H / H_kv, L queries,
S keys, d head width, n splits, P block size, T block-table width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from attn_course._validation import require_int, require_positive_number
from attn_course.decode_attention import choose_num_splits, gather_kv, gather_then_attend, paged_decode
from attn_course.diagrams import COLORS, INK, MUTED, arrow, box, canvas, label, light, rect
from attn_course.labs.quadratic_wall import H200, Hardware
from attn_course.plotting import finish_axes, new_axes
from attn_course.utils import best_seconds, num_threads

__all__ = [
    "HOPPER_SMS",
    "ALT",
    "SPLIT_FRAME_ALT",
    "attention_intensity",
    "roofline_seconds",
    "occupancy",
    "split_k_model",
    "plot_split_speedup",
    "split_k_frame",
    "random_paged_cache",
    "decode_bytes",
    "time_paged_vs_gather",
    "decode_comparison",
    "time_decode_kernels_gpu",
    "draw_split_k",
    "draw_block_table",
]

HOPPER_SMS = 132  # streaming multiprocessors of an H100 SXM and of an H200 (NVIDIA's Hopper whitepaper)

ALT = {
    "draw_split_k": (
        "Split-K decoding. One query vector at the top; the keys and values of the cache below it, "
        "cut into four chunks of different colours. Each chunk goes to its own program, which computes "
        "a partial result: its running max m_i, its sum l_i and its unnormalised output acc_i. The four "
        "partials meet in a reduce step that rescales each by exp(m_i - M), M the largest max, and "
        "divides the summed outputs by the summed sums: the exact attention output."
    ),
    "draw_block_table": (
        "Paged attention's indirection. Left: one sequence's positions 0 to 13 in logical blocks of 4. "
        "Middle: its block table, the physical block id of each logical block (7, 2, 9, 4). Right: the "
        "pool of physical blocks 0 to 9, the sequence's blocks scattered among other sequences' blocks "
        "and free ones. The paged kernel follows the table and loads each block where it lies; "
        "gather-then-attend first copies the four blocks into a contiguous buffer, shown below, and "
        "then reads that copy."
    ),
}

SPLIT_FRAME_ALT = (
    "Left: a grid of 132 squares, the SMs of an H200; the ones given a program in the first wave of a "
    "split-K decode launch at batch 1 with 8 KV heads are coloured. Right: the modelled time of the "
    "launch against the number of splits, falling as more SMs are used until 128 of the 132 are busy "
    "at 16 splits, then flat: more splits only fill further waves and add a little merge work; the "
    "current number of splits is marked."
)


# --------------------------------------------------------------------------- intensity, roofline


def attention_intensity(L: int, S: int, d: int, n_rep: int = 1, dtype_bytes: int = 2) -> dict[str, float]:
    """FLOPs, bytes and arithmetic intensity of ``L`` queries (per head) against ``S`` keys, per KV head.

    ``n_rep`` query heads share the KV head (GQA). FLOPs: ``4 n_rep L S d`` (``q k^T`` and ``p v``,
    a multiply and an add each). Bytes (read or written once, each in ``dtype_bytes``): K and V,
    ``2 S d``, plus the queries and outputs, ``2 n_rep L d``; the score matrix never leaves the chip
    (a fused kernel). A decode step has ``L = 1``; a prefill ``L = S`` (not causal: the causal half
    halves the FLOPs, not the order of magnitude).
    """
    for v, name in ((L, "L"), (S, "S"), (d, "d"), (n_rep, "n_rep"), (dtype_bytes, "dtype_bytes")):
        require_int(v, name)
    flops = 4.0 * n_rep * L * S * d
    nbytes = float(dtype_bytes * (2 * S * d + 2 * n_rep * L * d))
    return {"flops": flops, "bytes": nbytes, "intensity": flops / nbytes}


def roofline_seconds(flops: float, nbytes: float, hw: Hardware = H200) -> dict[str, float]:
    """``compute_s = flops / peak``, ``memory_s = bytes / bandwidth`` and the roofline time, their max."""
    require_positive_number(flops, "flops")
    require_positive_number(nbytes, "nbytes")
    compute = flops / (hw.dense_bf16_tflops * 1e12)
    memory = nbytes / (hw.bandwidth_tb_s * 1e12)
    return {"compute_s": compute, "memory_s": memory, "seconds": max(compute, memory),
            "bound": "memory" if memory >= compute else "compute"}


# --------------------------------------------------------------------------- occupancy, split-K


def occupancy(programs: int, num_sms: int = HOPPER_SMS) -> dict[str, float]:
    """How a launch of ``programs`` equal programs fills ``num_sms`` SMs (one program per SM at a time).

    ``waves = ceil(programs / num_sms)``; ``busy`` is the share of SM-time doing work over those
    waves, ``programs / (waves * num_sms)``. (A real SM can hold several small programs at once;
    counting one keeps the picture simple and is what matters for a memory stream.)
    """
    p = require_int(programs, "programs")
    sms = require_int(num_sms, "num_sms")
    waves = math.ceil(p / sms)
    return {"programs": p, "waves": waves, "busy": p / (waves * sms), "idle_sms_first_wave": max(0, sms - p)}


def split_k_model(batch: int, kv_heads: int, heads: int, num_keys: int, head_dim: int, num_splits: int,
                  hw: Hardware = H200, num_sms: int = HOPPER_SMS, dtype_bytes: int = 2,
                  launch_s: float = 3e-6) -> dict[str, float]:
    """A model of one split-K decode launch: its time and what it is made of.

    Assumptions (a model, not a measurement): every program streams its chunk of K and V at the
    bandwidth one SM gets when all of them stream, ``bandwidth / num_sms``; programs run in waves
    of ``num_sms``; the partials (``m, l, acc`` in float32) are written once and read once by the
    reduce kernel, at the full bandwidth; each kernel launch costs ``launch_s`` (the reduce is a
    second launch when ``n > 1``). Then::

        main   = waves * (2 * ceil(S / n) * d * dtype_bytes) / (bandwidth / num_sms)
        reduce = 2 * B * H * n * (d + 2) * 4 / bandwidth + launch_s      (n > 1 only)

    Returns ``programs``, ``waves``, ``busy`` (``occupancy``), ``main_s``, ``reduce_s``,
    ``seconds`` (with the launches), ``ideal_s`` (all K/V bytes at the full bandwidth).
    """
    for v, name in ((batch, "batch"), (kv_heads, "kv_heads"), (heads, "heads"), (num_keys, "num_keys"),
                    (head_dim, "head_dim"), (num_splits, "num_splits"), (dtype_bytes, "dtype_bytes")):
        require_int(v, name)
    bw = hw.bandwidth_tb_s * 1e12
    occ = occupancy(batch * kv_heads * num_splits, num_sms)
    chunk = math.ceil(num_keys / num_splits)
    main = occ["waves"] * (2 * chunk * head_dim * dtype_bytes) / (bw / num_sms)
    reduce = (2 * batch * heads * num_splits * (head_dim + 2) * 4 / bw + launch_s) if num_splits > 1 else 0.0
    ideal = 2 * batch * kv_heads * num_keys * head_dim * dtype_bytes / bw
    return {**occ, "main_s": main, "reduce_s": reduce, "seconds": main + reduce + launch_s, "ideal_s": ideal}


def plot_split_speedup(num_keys: Sequence[int], splits: Sequence[int], batch: int = 1, kv_heads: int = 8,
                       heads: int = 32, head_dim: int = 128, ax: Axes | None = None) -> Axes:
    """Modelled speed-up ``time(n = 1) / time(n)`` against ``n``, one curve per cache length (H200)."""
    ax = new_axes(ax)
    for S in num_keys:
        base = split_k_model(batch, kv_heads, heads, S, head_dim, 1)["seconds"]
        ax.plot(list(splits), [base / split_k_model(batch, kv_heads, heads, S, head_dim, n)["seconds"]
                               for n in splits], marker="o", ms=3, label=f"S = {S:,} keys")
    ax.axvline(HOPPER_SMS / (batch * kv_heads), color="0.5", ls="--", lw=1,
               label=f"n = SMs / (B H_kv) = {HOPPER_SMS / (batch * kv_heads):.1f}")
    ax.set_xscale("log", base=2)
    finish_axes(ax, xlabel="number of splits n", ylabel="modelled speed-up over n = 1",
                title=f"Split-K decode, modelled on an H200 (B={batch}, H_kv={kv_heads}, d={head_dim})")
    return ax


def split_k_frame(fig: Figure, num_splits: float, *, batch: int = 1, kv_heads: int = 8, heads: int = 32,
                  num_keys: int = 32768, head_dim: int = 128,
                  splits: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)) -> None:
    """One frame of the slider: which SMs the first wave uses, and the modelled time, for ``num_splits``."""
    n = int(num_splits)
    model = split_k_model(batch, kv_heads, heads, num_keys, head_dim, n)
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.3))
    cols, rows = 12, 11  # 132 SMs, drawn as one image (a patch per SM is slow to render for every frame)
    busy_now = min(model["programs"], HOPPER_SMS)
    busy_rgb, idle_rgb = light(COLORS["key"], 0.3), light("#999999", 0.7)
    grid = [[busy_rgb if r * cols + c < busy_now else idle_rgb for c in range(cols)] for r in range(rows)]
    left.imshow(grid, interpolation="nearest")
    left.set_xticks([x - 0.5 for x in range(1, cols)], minor=True)
    left.set_yticks([y - 0.5 for y in range(1, rows)], minor=True)
    left.grid(which="minor", color="white", lw=1.5)
    left.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    left.set_title(f"{busy_now} of {HOPPER_SMS} SMs busy\n{model['programs']} programs, "
                   f"{math.ceil(num_keys / n):,} keys each", fontsize=10)
    times = [split_k_model(batch, kv_heads, heads, num_keys, head_dim, s)["seconds"] * 1e6 for s in splits]
    xs = list(range(len(splits)))  # evenly spaced, labelled with n (log scales are slow to draw per frame)
    right.plot(xs, times, marker="o", color=COLORS["query"])
    if n in splits:
        right.plot([splits.index(n)], [model["seconds"] * 1e6], marker="o", ms=12, color=COLORS["context"], ls="none")
    right.axhline(model["ideal_s"] * 1e6, color="0.5", ls="--", lw=1, label="all SMs streaming")
    right.set_xticks(xs, [str(x) for x in splits])
    right.set_ylim(0, max(times) * 1.08)
    right.set_xlabel("splits n")
    right.set_ylabel("modelled time (µs)")
    right.set_title(f"n = {n}: {model['seconds'] * 1e6:.0f} µs (S = {num_keys:,})", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=8)


# --------------------------------------------------------------------------- paged vs gather


def random_paged_cache(batch: int, kv_heads: int, heads: int, seq_lens: Sequence[int], head_dim: int,
                       block_size: int, extra_blocks: int = 8, seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A synthetic paged cache: the blocks of ``batch`` sequences shuffled through one pool.

    Returns ``q (B, H, 1, d)``, ``k_pool, v_pool (N_blk, P, H_kv, d)``, ``block_table (B, T)``
    (``-1`` past each sequence's last block), ``seq_lens (B,)``; ``extra_blocks`` blocks belong to
    nobody, as in a pool shared by requests that come and go.
    """
    B, P = require_int(batch, "batch"), require_int(block_size, "block_size")
    if len(seq_lens) != B:
        raise ValueError(f"seq_lens must have one length per sequence ({B}), got {len(seq_lens)}")
    g = torch.Generator().manual_seed(seed)
    blocks = [math.ceil(require_int(n, "seq_lens[i]") / P) for n in seq_lens]
    N_blk = sum(blocks) + require_int(extra_blocks, "extra_blocks", 0)
    perm = torch.randperm(N_blk, generator=g)
    table = torch.full((B, max(blocks)), -1, dtype=torch.long)
    start = 0
    for b, nb in enumerate(blocks):
        table[b, :nb] = perm[start : start + nb]
        start += nb
    return {
        "q": torch.randn(B, heads, 1, head_dim, generator=g).to(dtype),
        "k_pool": torch.randn(N_blk, P, kv_heads, head_dim, generator=g).to(dtype),
        "v_pool": torch.randn(N_blk, P, kv_heads, head_dim, generator=g).to(dtype),
        "block_table": table,
        "seq_lens": torch.tensor(list(seq_lens)),
    }


def decode_bytes(cache: dict[str, torch.Tensor]) -> dict[str, int]:
    """Bytes of K and V that each method moves through memory, counted on the tensors.

    ``paged``: every block a sequence uses is read once (``ceil(len / P)`` blocks per sequence).
    ``gather``: the same reads, then the copy is **written** (``gather_kv``'s tensors, padded to
    the longest table row: their size is measured) and **read** again by the attention.
    """
    k_pool, v_pool, table, lens = cache["k_pool"], cache["v_pool"], cache["block_table"], cache["seq_lens"]
    P = k_pool.shape[1]
    block_bytes = (k_pool[0].numel() * k_pool.element_size() + v_pool[0].numel() * v_pool.element_size())
    used_blocks = int(((lens + P - 1) // P).sum())
    kg, vg = gather_kv(k_pool, v_pool, table, lens)
    copy = kg.numel() * kg.element_size() + vg.numel() * vg.element_size()
    paged = used_blocks * block_bytes
    return {"paged": paged, "gather_copy": copy, "gather": paged + 2 * copy}


def time_paged_vs_gather(cache: dict[str, torch.Tensor], repeats: int = 3, threads: int | None = 1
                         ) -> dict[str, float]:
    """Best-of-``repeats`` CPU seconds of ``paged_decode`` and ``gather_then_attend`` on one cache.

    Printed by the chapter, never asserted: they depend on the machine and its load. Also times the
    gather alone (``gather_kv``), the copy that paged attention avoids.
    """
    args = (cache["q"], cache["k_pool"], cache["v_pool"], cache["block_table"], cache["seq_lens"])
    with num_threads(threads), torch.inference_mode():
        out = {
            "paged_s": best_seconds(lambda: paged_decode(*args), repeats),
            "gather_then_attend_s": best_seconds(lambda: gather_then_attend(*args), repeats),
            "gather_only_s": best_seconds(lambda: gather_kv(*args[1:]), repeats),
        }
    return out


def decode_comparison(batch: int = 4, heads: int = 16, kv_heads: int = 4, head_dim: int = 64,
                      seq_lens: Sequence[int] | None = None, block_size: int = 64, repeats: int = 3,
                      threads: int | None = 1, seed: int = 0) -> dict[str, float]:
    """The chapter's headline numbers in one dict (for ``benchmarks/serving.py``).

    On a synthetic paged cache (``random_paged_cache``; default lengths ragged around 2,000 keys):
    CPU seconds of paged decode and of gather-then-attend, their ratio, the bytes each moves
    (``decode_bytes``) and their ratio, and whether the two agree; plus, modelled on an H200 for
    Llama-3-8B's attention shape (32 heads, 8 KV heads, d = 128) at batch 1 and 32k keys, the SMs a
    one-program-per-(sequence, KV head) launch keeps busy and the speed-up of split-K with the
    number of splits that fills the GPU.
    """
    lens = list(seq_lens) if seq_lens is not None else [2048 - 300 * i for i in range(batch)]
    cache = random_paged_cache(batch, kv_heads, heads, lens, head_dim, block_size, seed=seed)
    times = time_paged_vs_gather(cache, repeats, threads)
    nbytes = decode_bytes(cache)
    args = (cache["q"], cache["k_pool"], cache["v_pool"], cache["block_table"], cache["seq_lens"])
    diff = (paged_decode(*args) - gather_then_attend(*args)).abs().max().item()
    n_fill = choose_num_splits(8, 32768, HOPPER_SMS)  # 16: 128 programs, one wave
    one = split_k_model(1, 8, 32, 32768, 128, 1)
    split = split_k_model(1, 8, 32, 32768, 128, n_fill)
    return {
        **times,
        "gather_over_paged_time": times["gather_then_attend_s"] / times["paged_s"],
        "paged_bytes": float(nbytes["paged"]),
        "gather_bytes": float(nbytes["gather"]),
        "gather_over_paged_bytes": nbytes["gather"] / nbytes["paged"],
        "max_abs_difference": diff,
        "batch1_sms_busy_one_split": one["programs"] / HOPPER_SMS,
        "split_k_splits": float(n_fill),
        "split_k_modelled_speedup": one["seconds"] / split["seconds"],
    }


def time_decode_kernels_gpu(batch: int = 1, heads: int = 32, kv_heads: int = 8, num_keys: int = 32768,
                            head_dim: int = 128, block_size: int = 16, dtype: torch.dtype = torch.bfloat16,
                            num_splits: Sequence[int] = (1, 4, 16), seed: int = 0) -> dict[str, float]:
    """Milliseconds of one decode step's attention on a CUDA GPU (``triton.testing.do_bench``, median).

    Contiguous cache ``(B, H_kv, S, d)``: torch's SDPA (``enable_gqa``) and the split-K kernel for each
    of ``num_splits`` and for ``num_splits=None`` (``choose_num_splits``). Paged cache (the same keys,
    shuffled blocks of ``block_size``): the paged kernel with 1 split and with the automatic count, and
    ``gather_then_attend`` (which validates the table: a few waits for the GPU, part of its cost as
    written). Also ``max_error``: the largest difference of any kernel from SDPA.
    Needs CUDA and a compiled (not interpreted) ``attn_course.triton_decode``.
    """
    import triton.testing

    import attn_course.triton_decode as td

    if not torch.cuda.is_available() or td.INTERPRETED:
        raise RuntimeError("time_decode_kernels_gpu needs a CUDA GPU and TRITON_INTERPRET unset")
    g = torch.Generator(device="cuda").manual_seed(seed)
    dev = "cuda"
    q = torch.randn(batch, heads, 1, head_dim, device=dev, dtype=dtype, generator=g)
    k = torch.randn(batch, kv_heads, num_keys, head_dim, device=dev, dtype=dtype, generator=g)
    v = torch.randn(batch, kv_heads, num_keys, head_dim, device=dev, dtype=dtype, generator=g)
    P = block_size
    T = math.ceil(num_keys / P)
    perm = torch.randperm(batch * T, device=dev, generator=g)
    table = perm.view(batch, T)  # (B, T): every block of every sequence somewhere in the pool
    k_pad = torch.nn.functional.pad(k, (0, 0, 0, T * P - num_keys))  # (B, H_kv, T P, d)
    v_pad = torch.nn.functional.pad(v, (0, 0, 0, T * P - num_keys))
    k_pool = torch.empty(batch * T, P, kv_heads, head_dim, device=dev, dtype=dtype)
    v_pool = torch.empty_like(k_pool)
    k_pool[table.reshape(-1)] = k_pad.transpose(1, 2).reshape(batch * T, P, kv_heads, head_dim)
    v_pool[table.reshape(-1)] = v_pad.transpose(1, 2).reshape(batch * T, P, kv_heads, head_dim)
    lens = torch.full((batch,), num_keys, device=dev)
    auto = choose_num_splits(batch * kv_heads, num_keys, torch.cuda.get_device_properties(0).multi_processor_count)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    runs = {"sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)}
    for n in num_splits:
        runs[f"split_k n={n}"] = lambda n=n: td.split_k_decode_triton(q, k, v, num_splits=n)
    runs[f"split_k n=auto ({auto})"] = lambda: td.split_k_decode_triton(q, k, v)
    # the table is trusted here: skip check_paged's value checks, each a wait for the GPU
    runs["paged n=1"] = lambda: td.paged_decode_triton(q, k_pool, v_pool, table, lens, check_values=False)
    runs[f"paged n={auto}"] = lambda: td.paged_decode_triton(q, k_pool, v_pool, table, lens, num_splits=auto,
                                                             check_values=False)
    runs["gather_then_attend"] = lambda: gather_then_attend(q, k_pool, v_pool, table, lens)
    out, worst = {}, 0.0
    for name, fn in runs.items():
        worst = max(worst, (fn().float() - ref.float()).abs().max().item())
        out[name] = float(triton.testing.do_bench(fn))
    out["max_error"] = worst
    return out


# --------------------------------------------------------------------------- diagrams

_SPLIT_COLORS = [COLORS["key"], COLORS["value"], COLORS["weights"], COLORS["ffn"]]


def draw_split_k(num_splits: int = 4, keys_per_split: int = 4) -> Figure:
    """Split-K: the keys cut into chunks, one program per chunk, partials merged by one reduce."""
    n = require_int(num_splits, "num_splits", 1, 4)
    per = require_int(keys_per_split, "keys_per_split", 1, 6)
    fig, ax = canvas(10.0, 4.6, ALT["draw_split_k"])
    cell = 0.36
    total = n * per
    x0 = (10.0 - total * cell - (n - 1) * 0.15) / 2
    box(ax, 5.0, 4.2, 2.6, 0.42, "query q (one new token)", COLORS["query"], size=9.5)
    label(ax, 0.2, 4.2, f"the cache: S = {total} keys and values,\n{n} splits of {per}, one program each", size=9,
          color=INK, ha="left")
    centres = []
    for i in range(n):
        c = _SPLIT_COLORS[i % len(_SPLIT_COLORS)]
        xs = x0 + i * (per * cell + 0.15)
        for j in range(per):
            rect(ax, xs + j * cell, 3.1, cell * 0.92, 0.38, c, amount=0.55)
            label(ax, xs + j * cell + cell * 0.46, 3.29, str(i * per + j), size=7.5, color=INK)
        cx = xs + per * cell / 2
        centres.append(cx)
        arrow(ax, (5.0, 3.99), (cx, 3.5), COLORS["query"], lw=0.8, mutation_scale=8)
        arrow(ax, (cx, 3.08), (cx, 2.45), c, lw=1.1)
        box(ax, cx, 2.05, min(1.45, per * cell + 0.05), 0.78, f"program {i}\nm{i}, l{i}, acc{i}", c, size=8.5)
        arrow(ax, (cx, 1.66), (5.0, 1.02), c, lw=1.1)
    box(ax, 5.0, 0.7, 5.6, 0.62, "reduce: M = max m_i;  out = Σ e^(m_i − M) acc_i / Σ e^(m_i − M) l_i",
        COLORS["context"], size=9)
    label(ax, 5.0, 0.18, "the merge of chapter 21 (merge_partials), exact in any order; "
          "an empty split (m = −inf) weighs 0", size=8.5)
    return fig


def draw_block_table(block_size: int = 4, table: tuple[int, ...] = (7, 2, 9, 4), length: int = 14,
                     num_blocks: int = 10) -> Figure:
    """Paged attention's indirection: logical blocks -> block table -> physical blocks of the pool."""
    P = require_int(block_size, "block_size", 1, 4)
    require_int(length, "length")
    if math.ceil(length / P) != len(table) or any(not 0 <= t < num_blocks for t in table):
        raise ValueError(f"table must hold ceil(length / block_size) = {math.ceil(length / P)} ids in "
                         f"[0, {num_blocks}), got {table}")
    fig, ax = canvas(10.0, 5.0, ALT["draw_block_table"])
    slot = 0.3
    colours = {t: _SPLIT_COLORS[j % len(_SPLIT_COLORS)] for j, t in enumerate(table)}
    label(ax, 1.25, 4.75, "one sequence (logical view)", size=9.5, color=INK, weight="bold")
    label(ax, 4.4, 4.75, "block table", size=9.5, color=INK, weight="bold")
    label(ax, 7.7, 4.75, f"the pool: {num_blocks} physical blocks of {P}", size=9.5, color=INK, weight="bold")
    pool_y = {b: 4.3 - b * 0.4 for b in range(num_blocks)}
    others = {0: MUTED, 3: MUTED, 5: MUTED, 8: MUTED}  # blocks of other sequences
    fill = {t: min(P, length - j * P) for j, t in enumerate(table)}  # our last block is partly filled
    for b, y in pool_y.items():
        c = colours.get(b, others.get(b))
        for s in range(P):
            used = c is not None and s < fill.get(b, P)
            rect(ax, 6.9 + s * slot, y - 0.15, slot * 0.92, 0.3, c or "#bbbbbb", amount=0.55 if used else 0.9)
        who = "ours" if b in colours else ("another sequence" if b in others else "free")
        label(ax, 6.75, y, f"#{b}", size=8, color=INK, ha="right")
        label(ax, 6.95 + P * slot, y, who, size=7.5, ha="left")
    for j, t in enumerate(table):
        c = colours[t]
        y = 4.2 - j * 0.75
        filled = min(P, length - j * P)
        for s in range(P):
            pos = j * P + s
            rect(ax, 0.3 + s * slot, y - 0.15, slot * 0.92, 0.3, c, amount=0.55 if s < filled else 0.93)
            if s < filled:
                label(ax, 0.3 + s * slot + slot * 0.46, y, str(pos), size=7, color=INK)
        label(ax, 0.25, y, f"{j}", size=8, color=INK, ha="right")
        box(ax, 4.4, y, 0.55, 0.36, str(t), c, size=9.5)
        arrow(ax, (0.3 + P * slot + 0.05, y), (4.12, y), c, lw=1.0, mutation_scale=9)
        arrow(ax, (4.68, y), (6.85 - 0.35, pool_y[t]), c, lw=1.0, mutation_scale=9)
    label(ax, 0.3, 1.05, "gather-then-attend: copy the blocks first", size=9, color=INK, ha="left")
    for j, t in enumerate(table):
        for s in range(P):
            rect(ax, 0.3 + (j * P + s) * slot * 0.8, 0.45, slot * 0.74, 0.3, colours[t], amount=0.55)
    label(ax, 0.3, 0.18, "a contiguous (S, d) buffer: written once, then read again", size=8, ha="left")
    label(ax, 5.15, 0.6, "paged decode: step j loads\nblock table[j] where it lies;\nnothing is copied",
          size=9, color=INK)
    return fig
