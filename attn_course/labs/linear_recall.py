"""Chapter 20's experiments: what linear attention gains (decoding cost flat in the context) and
what it loses (recall of many stored key-value pairs).

The mechanisms are in :mod:`attn_course.linear`. This lab measures:

* ``decode_step_seconds``  one decoding step at a context of N tokens: softmax attention over a
  KV cache of N keys (``softmax_decode_step``) vs ``linear_attention_step`` on its fixed state;
* ``recall_accuracy``      associative recall without training: store ``n`` random key-value
  pairs, query with each key, and check that the nearest stored value comes back. Softmax
  attention keeps every pair; linear attention squeezes them into a ``D x d_v`` state; the
  decayed variant (``decay``, RetNet-style) stores them in order and lets the old ones fade.
  ``recall_by_age`` splits the hits by when each pair was stored.
* ``quadratic_feature_map``  ``phi(x) = x (x) x`` (``D = d^2``): ``phi(q).phi(k) = (q.k)^2``, a
  wider state for the same keys.

Dimension glossary: B batch, H heads, N context length, d key width, d_v value width,
D feature width of phi, n stored pairs.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from matplotlib.axes import Axes

from attn_course.attention import scaled_dot_product_attention
from attn_course.linear import (
    EPS,
    LinearAttentionState,
    causal_linear_attention_chunkwise,
    elu_feature_map,
    linear_attention,
    linear_attention_step,
)
from attn_course.plotting import UNIT_YLIM, finish_axes, new_axes
from attn_course.utils import num_threads

__all__ = [
    "softmax_decode_step",
    "median_seconds",
    "decode_step_seconds",
    "quadratic_feature_map",
    "random_pairs",
    "recall_accuracy",
    "recall_by_age",
    "recall_table",
    "plot_recall",
    "plot_decode",
    "METHODS",
]


# --------------------------------------------------------------------------- decoding cost


def softmax_decode_step(k_cache: torch.Tensor, v_cache: torch.Tensor, length: int, q_t: torch.Tensor,
                        k_t: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """Write token ``length``'s key and value into a preallocated cache ``(B, H, max_len, d)`` and
    attend with its query over the ``length + 1`` cached keys; returns ``(B, H, d_v)``."""
    k_cache[:, :, length] = k_t  # in place, as a static KV cache does
    v_cache[:, :, length] = v_t
    keys, values = k_cache[:, :, : length + 1], v_cache[:, :, : length + 1]  # (B, H, S, d) views
    return scaled_dot_product_attention(q_t.unsqueeze(2), keys, values)[0].squeeze(2)  # (B, H, d_v)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up (robust to a busy machine)."""
    fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def decode_step_seconds(contexts: Sequence[int], B: int = 1, H: int = 4, d: int = 64, repeats: int = 30,
                        seed: int = 0) -> list[dict]:
    """Median seconds of one decoding step after ``N`` tokens, for each ``N`` in ``contexts``.

    Returns rows ``N, softmax_s, linear_s, cache_bytes`` (the KV cache after N + 1 tokens),
    ``state_bytes`` (the linear-attention state, any N). One thread.
    """
    g = torch.Generator().manual_seed(seed)
    rows = []
    with num_threads(1), torch.no_grad():
        for N in contexts:
            k_cache = torch.randn(B, H, N + 1, d, generator=g)  # (B, H, max_len, d): N tokens already cached
            v_cache = torch.randn(B, H, N + 1, d, generator=g)
            state = LinearAttentionState(torch.rand(B, H, d, d, generator=g) * N, torch.rand(B, H, d, generator=g) * N)
            q_t, k_t, v_t = (torch.randn(B, H, d, generator=g) for _ in range(3))  # (B, H, d)
            soft = median_seconds(
                lambda kc=k_cache, vc=v_cache, n=N, q=q_t, k=k_t, v=v_t: softmax_decode_step(kc, vc, n, q, k, v), repeats)
            lin = median_seconds(lambda s=state, q=q_t, k=k_t, v=v_t: linear_attention_step(s, q, k, v), repeats)
            rows.append(dict(N=N, softmax_s=soft, linear_s=lin,
                             cache_bytes=2 * B * H * (N + 1) * d * 4, state_bytes=state.nbytes()))
    return rows


def plot_decode(rows: Sequence[dict], ax: Axes | None = None, *, title: str) -> Axes:
    """Seconds per decoding step against the context length, log-log."""
    ax = new_axes(ax)
    Ns = [r["N"] for r in rows]
    ax.plot(Ns, [r["softmax_s"] * 1e3 for r in rows], marker="o", label="softmax attention + KV cache")
    ax.plot(Ns, [r["linear_s"] * 1e3 for r in rows], marker="s", label="linear attention, recurrent state")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    return finish_axes(ax, xlabel="context length N (log scale)", ylabel="ms per generated token (log scale)",
                       title=title, grid_which="both")


# --------------------------------------------------------------------------- recall


def quadratic_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``(..., d) -> (..., d * d)``, all products ``x_a x_b``: ``phi(q) . phi(k) = (q . k)^2 >= 0``."""
    return (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)  # (..., d, d) -> (..., d^2)


def random_pairs(n: int, d: int, d_v: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random unit keys ``(1, 1, n, d)`` and random sign values ``(1, 1, n, d_v)``."""
    keys = torch.randn(1, 1, n, d, generator=generator)
    keys = keys / keys.norm(dim=-1, keepdim=True)
    values = torch.randint(0, 2, (1, 1, n, d_v), generator=generator).float() * 2 - 1  # entries +-1
    return keys, values


METHODS = ("softmax", "linear, elu+1", "linear, (q.k)^2", "linear, (q.k)^2 + decay")


def _retrieve(method: str, keys: torch.Tensor, values: torch.Tensor, sharpness: float, decay: float) -> torch.Tensor:
    """Store ``keys (1, 1, n, d)`` -> ``values (1, 1, n, d_v)`` in ``method``'s memory, read it
    with every key: ``(1, 1, n, d_v)``."""
    if method == "softmax":  # a KV cache: every pair kept apart; scores sharpness * q.k
        return scaled_dot_product_attention(keys, keys, values, scale=sharpness)[0]
    if method == "linear, elu+1":  # inputs scaled by sqrt(sharpness): larger features, not a temperature
        x = keys * math.sqrt(sharpness)
        return linear_attention(x, x, values, feature_map=elu_feature_map)
    if method == "linear, (q.k)^2":  # no scale: it would multiply every similarity alike and cancel
        return linear_attention(keys, keys, values, feature_map=quadratic_feature_map)
    if method == "linear, (q.k)^2 + decay":  # stored in order, each older pair faded by decay once more
        _, state = causal_linear_attention_chunkwise(keys, keys, values, chunk_size=64,
                                                     feature_map=quadratic_feature_map, decay=decay)
        phi_q = quadratic_feature_map(keys)  # (1, 1, n, D): read the final state with every key
        return (phi_q @ state.kv) / (phi_q @ state.z.unsqueeze(-1) + EPS)  # (1, 1, n, d_v)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _recall_hits(method: str, n: int, d: int, d_v: int, sharpness: float, trials: int, seed: int,
                 decay: float) -> torch.Tensor:
    """``(trials, n)`` bool: was pair ``j`` (stored ``j``-th) recalled, in each trial."""
    g = torch.Generator().manual_seed(seed)
    hits = []
    with torch.no_grad():
        for _ in range(trials):
            keys, values = random_pairs(n, d, d_v, g)
            out = _retrieve(method, keys, values, sharpness, decay)  # (1, 1, n, d_v): one read per key
            decoded = (out @ values.transpose(-2, -1)).argmax(-1)  # (1, 1, n): nearest stored value
            hits.append(decoded[0, 0] == torch.arange(n))
    return torch.stack(hits)


def recall_accuracy(method: str, n: int, d: int = 16, d_v: int = 32, sharpness: float = 30.0, trials: int = 4,
                    seed: int = 0, decay: float = 0.9) -> float:
    """Store ``n`` pairs, query with every stored key, decode the output to the nearest stored
    value (largest dot product); the fraction decoded to the right one, averaged over ``trials``.

    The keys are unit vectors; each memory reads them its own way:

    * softmax's scores are ``sharpness * (q . k)``: an inverse temperature, as a trained model
      learns one, that lets the matching key (``q . k = 1``) dominate;
    * elu+1 gets its inputs scaled by ``sqrt(sharpness)``. That enlarges the features and makes
      the weights less flat, but it is NOT the same sharpening: ``phi(c q) . phi(c k)`` is not
      ``exp(c^2 q . k)``, nor any function of ``q . k`` alone;
    * ``(q . k)^2`` is used as it is: scaling ``q`` and ``k`` would multiply every similarity by
      the same factor, which the normaliser cancels;
    * ``(q . k)^2 + decay`` stores the pairs one after the other with ``decay`` (``gamma``): pair
      ``j`` of ``n`` counts ``gamma^(n - 1 - j)`` when the keys are read.
    """
    return float(_recall_hits(method, n, d, d_v, sharpness, trials, seed, decay).float().mean())


def recall_by_age(method: str, n: int, d: int = 16, d_v: int = 32, sharpness: float = 30.0, trials: int = 4,
                  seed: int = 0, decay: float = 0.9) -> torch.Tensor:
    """``(n,)``: how often pair ``j`` was recalled, ``j = 0`` the first (oldest) stored; same
    trials as ``recall_accuracy``, whose result is this tensor's mean."""
    return _recall_hits(method, n, d, d_v, sharpness, trials, seed, decay).float().mean(dim=0)


def recall_table(pair_counts: Sequence[int], methods: Sequence[str] = METHODS, **kwargs) -> dict[str, dict[int, float]]:
    """``{method: {n: accuracy}}``."""
    return {m: {n: recall_accuracy(m, n, **kwargs) for n in pair_counts} for m in methods}


def plot_recall(table: Mapping[str, Mapping[int, float]], ax: Axes | None = None, *, title: str) -> Axes:
    """Recall accuracy against the number of stored pairs, one line per memory (legend beside the axes:
    the curves fill the plot's corners)."""
    ax = new_axes(ax)
    for name, acc in table.items():
        ax.plot(list(acc), list(acc.values()), marker="o", label=name)
    ax.set_xscale("log", base=2)
    finish_axes(ax, xlabel="stored key-value pairs n (log scale)", ylabel="recall accuracy", title=title,
                ylim=UNIT_YLIM)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return ax
