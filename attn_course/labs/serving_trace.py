"""Chapter 24's experiment: a synthetic serving trace under static batching, continuous batching
and continuous batching with chunked prefill.

* ``make_trace``            seeded requests: Poisson arrivals, prompt and output lengths spread
                            log-uniformly (many short, a few long), random token ids.
* ``tiny_model``            the chapter's small GPT (float64, so "identical outputs" is exact).
* ``gpt2_cost``             the model clock of GPT-2 small on an H100 (``StepCost.for_model``).
* ``run_policies``          one trace under the three policies (``attn_course.scheduler.serve``).
* ``outputs_alone``         every request generated alone with ``decoding.generate`` (greedy).
* ``sweep``                 the policies' metrics as one knob moves (arrival rate, token budget).
* ``serving_comparison``    the headline measurement as a dict (for ``benchmarks/serving.py``).
* ``plot_metrics``, ``draw_iteration_schedule``, ``draw_sweep_frame``: the chapter's figures
  (``ALT`` holds their alt text).

Time is measured two ways: on the model clock (deterministic: ``StepCost`` units, one unit =
one read of the weights) and in wall-clock seconds of the forward passes on this machine.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from attn_course._validation import require_int
from attn_course.decoding import generate
from attn_course.diagrams import COLORS, INK, MUTED
from attn_course.gpt import GPT, GPTConfig
from attn_course.kv_cache import PUBLISHED_SHAPES
from attn_course.scheduler import POLICIES, Request, ServeResult, StepCost, serve

__all__ = [
    "ALT",
    "POLICY_NAMES",
    "make_trace",
    "tiny_model",
    "gpt2_cost",
    "run_policies",
    "outputs_alone",
    "sweep",
    "serving_comparison",
    "plot_metrics",
    "draw_iteration_schedule",
    "draw_sweep_frame",
]

POLICY_NAMES = {"static": "static batching", "continuous": "continuous batching",
                "chunked": "continuous + chunked prefill"}
_POLICY_COLORS = {"static": COLORS["state"], "continuous": COLORS["query"], "chunked": COLORS["context"]}
_KIND_COLORS = {"prefill": COLORS["query"], "decode": COLORS["value"], "recompute": COLORS["key"],
                "wasted": "#d62728"}

ALT = {
    "draw_iteration_schedule": (
        "Gantt charts of the same requests over model steps, one row per request, one panel per policy. "
        "A thin grey line runs from a request's arrival to its first step; blue cells are prompt (prefill) "
        "steps, green cells decode steps that each produce one token, red cells tokens that static batching "
        "computes after a request is already done. Under static batching a batch runs until its longest "
        "request ends and newcomers wait; under continuous batching a request joins at the next step after "
        "it arrives and leaves as soon as it is done, so the rows pack tightly; with chunked prefill a long "
        "prompt spreads over several steps next to the decodes."
    ),
    "plot_metrics": (
        "Bar charts comparing static batching, continuous batching and continuous batching with chunked "
        "prefill on one trace: output tokens per unit of model time, time to first token (median and 99th "
        "percentile) and time per output token (median and 99th percentile)."
    ),
    "draw_sweep_frame": (
        "For one value of the slider's knob: output tokens per unit of model time and 99th-percentile time "
        "to first token and time per output token for the three policies, as bars, with the values of the "
        "whole sweep as faint lines."
    ),
}


# --------------------------------------------------------------------------- the trace


def _log_uniform(g: torch.Generator, n: int, lo: int, hi: int) -> list[int]:
    u = torch.rand(n, generator=g, dtype=torch.float64)
    return [int(round(math.exp(math.log(lo) + float(x) * (math.log(hi) - math.log(lo))))) for x in u]


def make_trace(num_requests: int = 48, rate: float = 1.0, prompt_lengths: tuple[int, int] = (8, 96),
               output_lengths: tuple[int, int] = (4, 128), vocab_size: int = 64, seed: int = 0) -> list[Request]:
    """Seeded requests: arrivals a Poisson process of ``rate`` per unit of model time (the first at 0),
    prompt and output lengths log-uniform in the given inclusive ranges, prompt tokens uniform."""
    require_int(num_requests, "num_requests")
    require_int(vocab_size, "vocab_size")
    if not isinstance(rate, (int, float)) or not rate > 0:
        raise ValueError(f"rate must be > 0 (requests per unit of model time), got {rate!r}")
    for name, (lo, hi) in (("prompt_lengths", prompt_lengths), ("output_lengths", output_lengths)):
        require_int(lo, f"{name}[0]")
        require_int(hi, f"{name}[1]", minimum=lo)
    g = torch.Generator().manual_seed(seed)
    gaps = -torch.log1p(-torch.rand(num_requests, generator=g, dtype=torch.float64)) / rate  # exponential
    arrivals = (torch.cumsum(gaps, 0) - gaps[0]).tolist()
    prompts = _log_uniform(g, num_requests, *prompt_lengths)
    outputs = _log_uniform(g, num_requests, *output_lengths)
    return [Request(i, tuple(torch.randint(0, vocab_size, (prompts[i],), generator=g).tolist()), outputs[i],
                    float(arrivals[i])) for i in range(num_requests)]


def tiny_model(seed: int = 0, vocab_size: int = 64, context_length: int = 256,
               dtype: torch.dtype = torch.float64) -> GPT:
    """The chapter's GPT: 2 layers, 4 query heads sharing 2 key/value heads, 32 dimensions, random
    weights (scheduling does not care what the model says), in float64 by default so that two
    different batchings of the same arithmetic give the same arg-max at every step."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab_size, context_length=context_length, n_layer=2, n_head=4, n_kv_head=2,
                    n_embd=32)
    return GPT(cfg).to(dtype).eval()


def gpt2_cost() -> StepCost:
    """The model clock of GPT-2 small (124M parameters, 36 KiB of float16 cache per token) on an H100."""
    shape = PUBLISHED_SHAPES["gpt2"]
    return StepCost.for_model(shape.params, shape.kv_bytes_per_token())


def _settings(requests: list[Request], chunk_budget: int) -> dict[str, dict]:
    """Each policy's knobs: without chunking a step must hold a whole prompt (and a recomputation)."""
    whole = max(r.max_positions for r in requests)
    return {"static": {}, "continuous": {"token_budget": whole}, "chunked": {"token_budget": chunk_budget}}


def run_policies(requests: list[Request], model: GPT | None = None, *, chunk_budget: int = 32,
                 policies: tuple[str, ...] = POLICIES, cost: StepCost | None = None, **kwargs) -> dict[str, ServeResult]:
    """``serve`` the same requests under each policy. Continuous batching without chunks gets a token
    budget of the longest request (it must prefill any prompt whole); ``chunk_budget`` is the chunked
    policy's. ``kwargs`` (``num_blocks``, ``block_size``, ``max_num_seqs``) go to every run."""
    settings = _settings(requests, chunk_budget)
    cost = gpt2_cost() if cost is None else cost
    return {p: serve(requests, p, model, cost=cost, **settings[p], **kwargs) for p in policies}


def outputs_alone(model: GPT, requests: list[Request]) -> dict[int, tuple[int, ...]]:
    """Each request run by itself with ``decoding.generate`` (greedy, a dynamic cache)."""
    device = model.wte.weight.device
    out = {}
    for r in requests:
        tokens = generate(model, torch.tensor([r.prompt], device=device), r.max_new_tokens)  # (1, T + new)
        out[r.rid] = tuple(tokens[0, len(r.prompt):].tolist())
    return out


def sweep(knob: str, values, *, trace_kwargs: dict | None = None, chunk_budget: int = 32,
          **kwargs) -> dict[float, dict[str, dict]]:
    """Metrics of the three policies (simulated: no model) as ``knob`` moves.

    ``knob = "rate"``: the trace's arrival rate; ``"token_budget"``: the chunked policy's budget.
    Returns ``{value: {policy: metrics}}``.
    """
    if knob not in ("rate", "token_budget"):
        raise ValueError(f"knob must be 'rate' or 'token_budget', got {knob!r}")
    trace_kwargs = dict(trace_kwargs or {})
    out = {}
    for v in values:
        tk = dict(trace_kwargs, rate=v) if knob == "rate" else trace_kwargs
        budget = int(v) if knob == "token_budget" else chunk_budget
        results = run_policies(make_trace(**tk), None, chunk_budget=budget, **kwargs)
        out[v] = {p: r.metrics for p, r in results.items()}
    return out


# --------------------------------------------------------------------------- the benchmark's number


def serving_comparison(shape: str = "tiny", num_requests: int = 48, rate: float = 4.0, device: str = "cpu",
                       dtype: torch.dtype | None = None, max_num_seqs: int = 16, chunk_budget: int = 64,
                       check_alone: int = 4, seed: int = 0, prompt_lengths: tuple[int, int] | None = None,
                       output_lengths: tuple[int, int] | None = None) -> dict:
    """Static vs continuous vs chunked on one trace with a real GPT; the headline as a dict.

    ``shape``: ``"tiny"`` (``tiny_model``, float64) or ``"gpt2"`` (GPT-2 small's shape, random
    weights, float32 unless ``dtype``; context 1024, prompts 16..512, outputs 8..256 tokens).
    Returns each policy's metrics (model clock and wall clock), the ratios of continuous (and
    chunked) to static in output tokens per model-time unit and per second, whether the three
    policies gave every request the same tokens, and how many of the first ``check_alone``
    requests equal ``generate`` run alone. ``prompt_lengths``, ``output_lengths``: override the
    shape's ranges (e.g. a short smoke test of the ``"gpt2"`` shape on a CPU).

    Random weights give near-uniform logits; in float32 two batchings of the same arithmetic can
    then flip a near-tie, so ``mismatched_requests`` may be a few where float64 gives 0.
    """
    if shape == "tiny":
        model = tiny_model(seed).to(device)
        trace = make_trace(num_requests, rate, prompt_lengths or (8, 96), output_lengths or (4, 128), seed=seed)
        blocks = 160
    elif shape == "gpt2":
        torch.manual_seed(seed)
        model = GPT(GPTConfig()).to(device=device, dtype=dtype or torch.float32).eval()
        trace = make_trace(num_requests, rate, prompt_lengths or (16, 512), output_lengths or (8, 256),
                           vocab_size=model.config.vocab_size, seed=seed)
        blocks = 1024
    else:
        raise ValueError(f"shape must be 'tiny' or 'gpt2', got {shape!r}")
    if dtype is not None:
        model = model.to(dtype)
    results = run_policies(trace, model, chunk_budget=chunk_budget, num_blocks=blocks, max_num_seqs=max_num_seqs)
    outputs = {p: r.outputs() for p, r in results.items()}
    alone = outputs_alone(model, trace[:check_alone]) if check_alone else {}
    m = {p: r.metrics for p, r in results.items()}
    return {
        "shape": shape, "device": str(device), "dtype": str(model.wte.weight.dtype), "requests": num_requests,
        "metrics": m,
        "continuous_vs_static_tokens_per_unit": m["continuous"]["tokens_per_unit"] / m["static"]["tokens_per_unit"],
        "chunked_vs_static_tokens_per_unit": m["chunked"]["tokens_per_unit"] / m["static"]["tokens_per_unit"],
        "continuous_vs_static_tokens_per_s": m["continuous"]["tokens_per_s"] / m["static"]["tokens_per_s"],
        "chunked_vs_static_tokens_per_s": m["chunked"]["tokens_per_s"] / m["static"]["tokens_per_s"],
        "outputs_identical": outputs["static"] == outputs["continuous"] == outputs["chunked"],
        "mismatched_requests": sum(outputs["static"][i] != outputs[p][i] for p in ("continuous", "chunked")
                                   for i in outputs["static"]),
        "alone_checked": len(alone),
        "alone_equal": sum(alone[i] == outputs["continuous"][i] for i in alone),
    }


# --------------------------------------------------------------------------- figures


def plot_metrics(results: dict[str, dict]) -> Figure:
    """Bars of throughput, TTFT and TPOT (p50 and p99) per policy; ``results``: ``{policy: metrics}``."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), layout="constrained")
    fig.set_label(ALT["plot_metrics"])
    names = list(results)
    xs = range(len(names))
    colors = [_POLICY_COLORS[p] for p in names]
    axes[0].bar(xs, [results[p]["tokens_per_unit"] for p in names], color=colors)
    axes[0].set_title("throughput (higher is better)")
    axes[0].set_ylabel("output tokens per unit of model time")
    for ax, key, title in ((axes[1], "ttft", "time to first token"), (axes[2], "tpot", "time per output token")):
        for j, p in enumerate(names):
            ax.bar(j - 0.2, results[p][f"{key}_p50"], 0.4, color=colors[j], alpha=0.55,
                   label="p50" if j == 0 else None)
            ax.bar(j + 0.2, results[p][f"{key}_p99"], 0.4, color=colors[j], label="p99" if j == 0 else None,
                   hatch="//", edgecolor="white")
        ax.set_title(f"{title} (lower is better)")
        ax.set_ylabel("model time units")
        ax.legend(frameon=False, fontsize=8)
    for ax in axes:
        labels = [POLICY_NAMES[p].replace(" batching", "\nbatching").replace(" + ", "\n+ ") for p in names]
        ax.set_xticks(list(xs), labels, fontsize=8)
    return fig


def _cells(result: ServeResult) -> dict[int, list[tuple[int, str]]]:
    """For each request, ``(step, kind)`` of every step it took part in (kind ``wasted`` past its end)."""
    emitted: dict[int, int] = {}
    out: dict[int, list[tuple[int, str]]] = {rid: [] for rid in result.requests}
    for s in result.steps:
        for c in s.chunks:
            done = emitted.get(c.rid, 0) >= len(result.requests[c.rid].output)
            out[c.rid].append((s.index, "wasted" if done else c.kind))
            if c.emits:
                emitted[c.rid] = emitted.get(c.rid, 0) + 1
    return out


def draw_iteration_schedule(results: dict[str, ServeResult], fig: Figure | None = None) -> Figure:
    """Gantt charts over model steps (one row per request, one panel per policy): arrival to first
    step in grey, prefill blue, decode green, recompute orange, static batching's wasted rows red."""
    from matplotlib.patches import Patch

    names = list(results)
    n_req = max(len(r.requests) for r in results.values())
    if fig is None:
        fig = plt.figure(figsize=(11, 1.2 + 0.95 * len(names) * max(2.0, 0.22 * n_req)), layout="constrained")
    fig.set_label(ALT["draw_iteration_schedule"])
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    horizon = max(len(r.steps) for r in results.values())
    for ax, p in zip(axes, names):
        res = results[p]
        for rid, cells in _cells(res).items():
            y = rid
            if cells:
                arrive_step = next((s.index for s in res.steps if s.start + s.cost > res.requests[rid].arrival), 0)
                ax.plot([arrive_step - 0.5, cells[0][0] - 0.5], [y, y], color=MUTED, lw=1, alpha=0.7)
                ax.plot(arrive_step - 0.5, y, marker="|", color=INK, ms=6)
            for step, kind in cells:
                ax.add_patch(plt.Rectangle((step - 0.5, y - 0.38), 1, 0.76, color=_KIND_COLORS[kind], lw=0))
        ax.set_xlim(-1, horizon + 1)
        ax.set_ylim(n_req - 0.5, -0.5)
        ax.set_ylabel("request")
        m = res.metrics
        ax.set_title(f"{POLICY_NAMES[p]}: {m['steps']} steps, {m['output_tokens']} tokens delivered, "
                     f"{m['extra_tokens']} wasted, {m['preemptions']} preemptions", fontsize=10, loc="left")
    axes[-1].set_xlabel("step (one forward pass of the model)")
    handles = [Patch(color=c, label=k) for k, c in _KIND_COLORS.items()]
    handles.append(Patch(color=MUTED, alpha=0.7, label="waiting since arrival (|)"))
    axes[0].legend(handles=handles, ncol=5, fontsize=8, frameon=False, loc="lower right",
                   bbox_to_anchor=(1.0, 1.12))
    return fig


def draw_sweep_frame(fig: Figure, value: float, swept: dict[float, dict[str, dict]], knob: str = "rate") -> None:
    """One slider frame: the three policies' throughput, TTFT p99 and TPOT p99 at ``value``, the
    sweep as faint lines behind (``swept``: from ``sweep``)."""
    fig.set_label(ALT["draw_sweep_frame"])
    axes = fig.subplots(1, 3)
    values = sorted(swept)
    keys = (("tokens_per_unit", "tokens per time unit"), ("ttft_p99", "TTFT p99"), ("tpot_p99", "TPOT p99"))
    for ax, (key, title) in zip(axes, keys):
        for p, name in POLICY_NAMES.items():
            ys = [swept[v][p][key] for v in values]
            ax.plot(values, ys, color=_POLICY_COLORS[p], alpha=0.35, lw=1.5)
            ax.plot([value], [swept[value][p][key]], "o", color=_POLICY_COLORS[p], ms=8,
                    label=name if key == "tokens_per_unit" else None)
        ax.axvline(value, color=MUTED, lw=0.8, ls=":")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("arrival rate (requests per time unit)" if knob == "rate" else "token budget per step",
                      fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xticks(values, [f"{v:g}" for v in values], fontsize=8)
        ax.minorticks_off()  # (log axes' minor labels make every frame slow to lay out)
        ax.set_ylim(0, None)
    axes[0].legend(fontsize=7, frameon=False, loc="upper left")
