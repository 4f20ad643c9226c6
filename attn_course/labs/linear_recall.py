"""Chapter 20's experiments: what linear attention gains (decoding cost flat in the context) and
what it loses (recall of many stored key-value pairs).

The mechanisms are in :mod:`attn_course.linear`. This lab measures:

* ``decode_step_seconds``  one decoding step at a context of N tokens: softmax attention over a
  KV cache of N keys (``softmax_decode_step``) vs ``linear_attention_step`` on its fixed state;
* ``recall_accuracy``      associative recall without training: store ``n`` random key-value
  pairs, query with each key, and check that the nearest stored value comes back. Softmax
  attention keeps every pair; linear attention squeezes them into a ``D x d_v`` state.
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
from attn_course.linear import LinearAttentionState, elu_feature_map, linear_attention, linear_attention_step
from attn_course.plotting import UNIT_YLIM, finish_axes, new_axes
from attn_course.utils import num_threads

__all__ = [
    "softmax_decode_step",
    "median_seconds",
    "decode_step_seconds",
    "quadratic_feature_map",
    "random_pairs",
    "recall_accuracy",
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


def _retrieve(method: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sharpness: float) -> torch.Tensor:
    if method == "softmax":
        return scaled_dot_product_attention(q, k, v, scale=sharpness)[0]
    if method == "linear, elu+1":
        return linear_attention(q * math.sqrt(sharpness), k * math.sqrt(sharpness), v, feature_map=elu_feature_map)
    if method == "linear, (q.k)^2":
        return linear_attention(q, k, v, feature_map=quadratic_feature_map)
    raise ValueError(f"method must be 'softmax', 'linear, elu+1' or 'linear, (q.k)^2', got {method!r}")


METHODS = ("softmax", "linear, elu+1", "linear, (q.k)^2")


def recall_accuracy(method: str, n: int, d: int = 16, d_v: int = 32, sharpness: float = 30.0, trials: int = 4,
                    seed: int = 0) -> float:
    """Store ``n`` pairs, query with every stored key, decode the output to the nearest stored
    value (largest dot product); the fraction decoded to the right one, averaged over ``trials``.

    ``sharpness`` multiplies the scores (``q.k`` of unit keys) for softmax and scales the
    inputs of elu+1 by its square root, so both see the same sharpened scores.
    """
    g = torch.Generator().manual_seed(seed)
    hits = 0
    with torch.no_grad():
        for _ in range(trials):
            keys, values = random_pairs(n, d, d_v, g)
            out = _retrieve(method, keys, keys, values, sharpness)  # (1, 1, n, d_v): one read per key
            decoded = (out @ values.transpose(-2, -1)).argmax(-1)  # (1, 1, n): nearest stored value
            hits += int((decoded == torch.arange(n)).sum())
    return hits / (n * trials)


def recall_table(pair_counts: Sequence[int], methods: Sequence[str] = METHODS, **kwargs) -> dict[str, dict[int, float]]:
    """``{method: {n: accuracy}}``."""
    return {m: {n: recall_accuracy(m, n, **kwargs) for n in pair_counts} for m in methods}


def plot_recall(table: Mapping[str, Mapping[int, float]], ax: Axes | None = None, *, title: str) -> Axes:
    ax = new_axes(ax)
    for name, acc in table.items():
        ax.plot(list(acc), list(acc.values()), marker="o", label=name)
    ax.set_xscale("log", base=2)
    return finish_axes(ax, xlabel="stored key-value pairs n (log scale)", ylabel="recall accuracy", title=title,
                       ylim=UNIT_YLIM)
