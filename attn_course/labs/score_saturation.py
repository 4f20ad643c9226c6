"""Why the Transformer divides by sqrt(d_k): measurements of what happens without it.

Draw queries and keys with independent standard-normal entries, as a freshly initialised
layer roughly produces, and measure, as the width ``d_k`` grows:

* ``dot_product_variance``  the variance of ``q . k``: it grows like ``d_k`` (1 when scaled);
* ``softmax_saturation``    how peaked the softmax over ``S`` keys gets (mean largest weight,
                            mean entropy) and how small the gradient through it becomes, at
                            the scores and at the query and keys that computed them;
* ``saturation_sweep``      both, for a list of widths, scaled and unscaled on the same samples;
* ``time_scores``           wall-clock time of the four score functions (informational only).

Dimension glossary (see ``attn_course`` for the full one)::

    n    number of independent samples (query rows)
    S    number of keys each query is scored against
    d_k  query/key width

Everything is computed in float64, so that a tiny gradient is a measured number, not an
underflow to zero. The score functions and the softmax are the package's own
(``scoring.dot_score``, ``scoring.scaled_dot_score``, ``masking.masked_softmax``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from matplotlib.axes import Axes
from tqdm.auto import tqdm

from attn_course._validation import require_int
from attn_course.masking import masked_softmax
from attn_course.plotting import check_curves, finish_axes, new_axes
from attn_course.scoring import AdditiveScore, GeneralScore, dot_score, scaled_dot_score

__all__ = [
    "SATURATION_METRICS",
    "dot_product_variance",
    "softmax_saturation",
    "SaturationSweep",
    "saturation_sweep",
    "time_scores",
    "plot_vs_dk",
]

# Per-call memory cap: samples are drawn in chunks of at most this many numbers (8 MB in float64).
_CHUNK_NUMBERS = 1 << 20
_DTYPE = torch.float64

SATURATION_METRICS = ("max_weight", "entropy", "grad_norm", "grad_norm_mean", "grad_q_norm", "grad_k_norm")


# --------------------------------------------------------------------------- validation


def _check_generator(generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _chunks(n: int, numbers_per_row: int) -> Iterator[int]:
    """Split ``n`` rows into chunk sizes so that a chunk holds at most ``_CHUNK_NUMBERS`` numbers."""
    rows = max(1, _CHUNK_NUMBERS // numbers_per_row)
    for start in range(0, n, rows):
        yield min(rows, n - start)


def _score(q: torch.Tensor, k: torch.Tensor, scaled: bool) -> torch.Tensor:
    return scaled_dot_score(q, k) if scaled else dot_score(q, k)


# --------------------------------------------------------------------------- measurements


def dot_product_variance(
    d_k: int, n: int = 10_000, generator: torch.Generator | None = None, scaled: bool = False
) -> float:
    """Sample variance of ``q . k`` (or ``q . k / sqrt(d_k)``) over ``n`` independent pairs.

    ``q`` and ``k`` have ``d_k`` independent N(0, 1) entries, so ``q . k`` is a sum of ``d_k``
    independent products of variance 1: its variance is ``d_k``, and 1 after scaling.

    Args:
        d_k: the width of ``q`` and ``k``.
        n: number of independent (q, k) pairs.
        generator: random source (default: torch's global one).
        scaled: use ``scaled_dot_score`` instead of ``dot_score``.

    Returns:
        the unbiased sample variance, a float.
    """
    require_int(d_k, "d_k")
    require_int(n, "n")
    if n < 2:
        raise ValueError(f"n must be at least 2 to estimate a variance, got {n}")
    _check_generator(generator)
    parts = []
    for rows in _chunks(n, 2 * d_k):
        q = torch.randn(rows, 1, d_k, generator=generator, dtype=_DTYPE)  # (rows, 1, d_k): one query per pair
        k = torch.randn(rows, 1, d_k, generator=generator, dtype=_DTYPE)  # (rows, 1, d_k): one key per pair
        parts.append(_score(q, k, scaled).flatten())  # (rows, 1, 1) -> (rows,)
    return torch.cat(parts).var().item()  # (n,) -> scalar


def softmax_saturation(
    d_k: int,
    S: int = 16,
    n: int = 2_000,
    generator: torch.Generator | None = None,
    scaled: bool = False,
) -> dict[str, float]:
    """How saturated is the softmax over ``S`` random keys, at width ``d_k``?

    For each of ``n`` queries, score it against ``S`` fresh keys (N(0, 1) entries), take the
    softmax (``masked_softmax``) and measure:

    * ``max_weight``: the largest of the ``S`` weights, averaged over queries. ``1 / S`` for a
      uniform softmax; 1 for a one-hot ("saturated") one.
    * ``entropy``: ``-sum_j w_j log w_j`` in nats, averaged. ``log S`` when uniform, 0 when one-hot.
    * ``grad_norm``: the median over queries of ``||d loss / d logits||_2``, where ``logits`` is
      what the softmax sees (the scaled scores when ``scaled=True``) and ``loss = sum_j w_j u_j``
      for a random upstream gradient ``u`` with N(0, 1) entries. In attention the weights feed a
      weighted sum of values, so ``u_j`` stands for ``v_j . d loss / d output``. By the chain rule
      the gradient is ``J^T u`` with the softmax Jacobian ``J = diag(w) - w w^T``, which tends to 0
      as ``w`` becomes one-hot.
    * ``grad_norm_mean``: the same norm averaged over queries. The mean is dominated by the few
      queries whose two best keys happen to score almost equally (still unsaturated), so it falls
      far more slowly than the median, the typical query.
    * ``grad_q_norm``, ``grad_k_norm``: the median over queries of ``||d loss / d q||_2`` and of
      ``||d loss / d K||_2`` (the query's ``S`` keys together, a Frobenius norm): what reaches the
      vectors that computed the scores, and through them the layers that produced ``q`` and ``k``.
      The score is ``scale * q . k`` with ``scale = 1 / sqrt(d_k)`` when ``scaled`` (else 1), so
      ``d loss / d q = scale * sum_j g_j k_j`` for the gradient ``g`` at the scores: the backward
      pass is multiplied by the same ``scale`` as the forward one, and the unscaled path gains a
      factor ``sqrt(d_k)`` there relative to the scaled one.

    Args:
        d_k: the query/key width.  S: keys per query.  n: number of queries.
        generator: random source (default: torch's global one). Two calls with generators in the
            same state see the same samples, whatever ``scaled`` is.
        scaled: score with ``q . k / sqrt(d_k)`` instead of ``q . k``.

    Returns:
        ``{"max_weight", "entropy", "grad_norm", "grad_norm_mean", "grad_q_norm", "grad_k_norm"}``,
        each a float.
    """
    require_int(d_k, "d_k")
    require_int(S, "S")
    require_int(n, "n")
    _check_generator(generator)
    max_w, ent, grads, grads_q, grads_k = [], [], [], [], []
    for rows in _chunks(n, (S + 1) * d_k):
        q = torch.randn(rows, 1, d_k, generator=generator, dtype=_DTYPE)  # (rows, 1, d_k): one query per row
        k = torch.randn(rows, S, d_k, generator=generator, dtype=_DTYPE)  # (rows, S, d_k): its own S keys
        u = torch.randn(rows, 1, S, generator=generator, dtype=_DTYPE)  # (rows, 1, S): upstream gradient
        q.requires_grad_(True)
        k.requires_grad_(True)
        logits = _score(q, k, scaled)  # (rows, 1, S): what the softmax sees
        w = masked_softmax(logits)  # (rows, 1, S)
        # d/d(logits) = J^T u row by row; d/dq and d/dk: the same, carried back through the score
        grad, grad_q, grad_k = torch.autograd.grad((w * u).sum(), (logits, q, k))
        grads_q.append(grad_q.norm(dim=-1).flatten())  # (rows, 1, d_k) -> (rows,)
        grads_k.append(grad_k.flatten(1).norm(dim=-1))  # (rows, S, d_k) -> (rows,)
        w = w.detach()
        max_w.append(w.amax(dim=-1).flatten())  # (rows,)
        ent.append(-torch.xlogy(w, w).sum(dim=-1).flatten())  # (rows,); xlogy: 0 log 0 = 0
        grads.append(grad.norm(dim=-1).flatten())  # (rows,)
    grad_norms = torch.cat(grads)  # (n,)
    return {
        "max_weight": torch.cat(max_w).mean().item(),
        "entropy": torch.cat(ent).mean().item(),
        "grad_norm": grad_norms.median().item(),
        "grad_norm_mean": grad_norms.mean().item(),
        "grad_q_norm": torch.cat(grads_q).median().item(),
        "grad_k_norm": torch.cat(grads_k).median().item(),
    }


@dataclass
class SaturationSweep:
    """Result of :func:`saturation_sweep`: for each mode, metric name -> one value per ``d_k``.

    ``unscaled["max_weight"][i]`` is the mean largest weight at width ``d_ks[i]`` without
    scaling. Metrics: ``"variance"`` and those of :func:`softmax_saturation`.
    """

    d_ks: list[int]
    S: int
    unscaled: dict[str, list[float]] = field(default_factory=dict)
    scaled: dict[str, list[float]] = field(default_factory=dict)

    def curves(self, metric: str) -> dict[str, list[float]]:
        """``{"q . k": [...], "q . k / sqrt(d_k)": [...]}`` for one metric, ready to plot."""
        if metric not in self.unscaled:
            raise ValueError(f"metric must be one of {sorted(self.unscaled)}, got {metric!r}")
        return {"q . k (unscaled)": self.unscaled[metric], "q . k / sqrt(d_k) (scaled)": self.scaled[metric]}


def saturation_sweep(
    d_ks: Sequence[int],
    S: int = 16,
    n: int = 2_000,
    n_variance: int = 10_000,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> SaturationSweep:
    """Run :func:`dot_product_variance` and :func:`softmax_saturation` for every width in ``d_ks``.

    Scaled and unscaled runs of one width use the same random samples (the generator's state is
    rewound between them), so the two curves differ only by the scaling.

    Args:
        d_ks: the widths, e.g. ``[4, 8, ..., 1024]``.
        S, n: as in :func:`softmax_saturation`.  n_variance: ``n`` of :func:`dot_product_variance`.
        generator: random source; default a new one seeded with 0 (the global RNG cannot be rewound).
        progress: show a tqdm bar.

    Returns:
        a :class:`SaturationSweep`.
    """
    d_ks = [require_int(d, "d_ks entry") for d in d_ks]
    require_int(S, "S")
    require_int(n, "n")
    if not d_ks:
        raise ValueError("d_ks must name at least one width")
    generator = _check_generator(generator) or torch.Generator().manual_seed(0)
    sweep = SaturationSweep(d_ks=d_ks, S=S)
    for d_k in tqdm(d_ks, desc="d_k", disable=not progress):
        state = generator.get_state()
        for scaled, out in ((False, sweep.unscaled), (True, sweep.scaled)):
            generator.set_state(state)  # same samples for both modes
            values = {"variance": dot_product_variance(d_k, n_variance, generator, scaled)}
            values.update(softmax_saturation(d_k, S, n, generator, scaled))
            for metric, value in values.items():
                out.setdefault(metric, []).append(value)
    return sweep


# --------------------------------------------------------------------------- timing


def time_scores(
    L: int,
    S: int,
    d: int,
    hidden: int,
    batch: int = 8,
    repeats: int = 20,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Fastest wall-clock seconds (of ``repeats`` runs) of one CPU forward pass of each score.

    Informational only: times depend on the machine and its load; compare ratios, not values.
    Queries ``(batch, L, d)`` and keys ``(batch, S, d)`` in float32; ``GeneralScore(d, d)`` and
    ``AdditiveScore(d, d, hidden)`` with their default initialisation; no gradient.

    Returns:
        ``{"dot": s, "scaled_dot": s, "general": s, "additive": s}`` (the kinds of ``score_cost``).
    """
    for value, name in (
        (L, "L"),
        (S, "S"),
        (d, "d"),
        (hidden, "hidden"),
        (batch, "batch"),
        (repeats, "repeats"),
    ):
        require_int(value, name)
    _check_generator(generator)
    q = torch.randn(batch, L, d, generator=generator)  # (B, L, d)
    k = torch.randn(batch, S, d, generator=generator)  # (B, S, d)
    functions = {
        "dot": dot_score,
        "scaled_dot": scaled_dot_score,
        "general": GeneralScore(d, d),
        "additive": AdditiveScore(d, d, hidden),
    }
    times = {}
    with torch.no_grad():
        for kind, fn in functions.items():
            fn(q, k)  # warm-up
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn(q, k)  # (B, L, S)
                samples.append(time.perf_counter() - start)
            times[kind] = min(samples)  # the least disturbed run: others only add noise
    return times


def plot_vs_dk(
    d_ks: Sequence[int],
    curves: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    *,
    ylabel: str,
    title: str,
    logy: bool = False,
    reference: Sequence[float] | None = None,
    reference_label: str = "expected",
) -> Axes:
    """A metric against the query/key width ``d_k`` (log2 x-axis), one line per curve.

    ``curves = {"unscaled": [value at d_ks[0], ...], "scaled": [...]}``; ``reference`` adds a
    dashed line (e.g. the theoretical variance ``d_k``).
    """
    check_curves(curves, "curves")
    ax = new_axes(ax)
    for label, values in curves.items():
        ax.plot(list(d_ks), list(values), marker="o", markersize=4, label=label)
    if reference is not None:
        ax.plot(list(d_ks), list(reference), color="0.4", linestyle="--", linewidth=1, label=reference_label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(d_ks), [str(d) for d in d_ks])
    if logy:
        ax.set_yscale("log")
    return finish_axes(ax, xlabel="query/key width $d_k$ (log scale)", ylabel=ylabel, title=title)
