"""Queries, keys and values as a lookup: from a hard dictionary to a soft one.

A dictionary returns the value whose key *equals* the query. Attention returns a weighted
average of *all* values, with weights that say how well each key matches the query. The bridge
between the two is Nadaraya-Watson kernel regression (Nadaraya 1964, Watson 1964):

    weights[i, j] = softmax_j( -||query_i - key_j||^2 / (2 h^2) )     # gaussian_kernel_weights
    output[i]     = sum_j weights[i, j] * value_j                      # nadaraya_watson

i.e. attention whose score is a negative squared distance scaled by the bandwidth ``h``.
A tiny ``h`` gives (almost) a hard nearest-key lookup; a huge ``h`` gives every value the same
weight, and the output is the mean of the values.

Dimension glossary (see ``attn_course`` for the full one)::

    ...  any leading batch dimensions; they broadcast
    L    number of queries            S    number of keys (= number of values)
    d_k  query/key width              d_v  value width

Shapes: ``queries (..., L, d_k)``, ``keys (..., S, d_k)``, ``values (..., S, d_v)`` ->
``outputs (..., L, d_v)`` and ``weights (..., L, S)``. One-dimensional data (a scalar ``x`` per
point) is ``(L, 1)`` / ``(S, 1)``: ``x[:, None]`` turns ``(S,)`` into ``(S, 1)``.

* ``hard_lookup``               exact key match, as one-hot weights: a Python ``dict`` in tensors.
* ``gaussian_scores``           the score ``-||q - k||^2 / (2 h^2)`` for every query/key pair.
* ``gaussian_kernel_weights``   ``masked_softmax`` of those scores.
* ``nadaraya_watson``           the weighted average of the values: kernel regression.
* ``nadaraya_watson_loop``      the textbook twin: one query at a time, kernel ``exp(-u^2/2)/sqrt(2 pi)``.
* ``gaussian_as_dot_product``   queries and keys rewritten so that a *dot product* gives the same weights.
* ``make_regression_data``, ``true_function``, ``bandwidth_sweep``, ``effective_number_of_keys``,
  ``local_weight_mass``: the chapter's synthetic 1-D regression problem and its measurements.
"""

from __future__ import annotations

import math

import torch

from attn_course._validation import (
    batch_shape,
    check_query_key,
    check_value,
    require_floating,
    require_ndim,
    require_positive_number,
)
from attn_course.attention import context_vector
from attn_course.masking import masked_softmax

__all__ = [
    "hard_lookup",
    "gaussian_scores",
    "gaussian_kernel_weights",
    "nadaraya_watson",
    "nadaraya_watson_loop",
    "gaussian_as_dot_product",
    "effective_number_of_keys",
]


# --------------------------------------------------------------------------- validation


def _check_values(values: object, keys: torch.Tensor, queries: torch.Tensor) -> None:
    """``values (..., S, d_v)``: same S as ``keys``, same dtype, batch dims that broadcast."""
    check_value(values, keys, queries, names=("values", "keys", "queries"))


# --------------------------------------------------------------------------- the hard lookup


def hard_lookup(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A dictionary lookup in tensors: each query returns the value whose key equals it exactly.

    Written as attention with one-hot weights: ``weights[..., i, j] = 1`` if ``keys[..., j, :]``
    equals ``queries[..., i, :]`` in every coordinate, else 0; ``output = weights @ values``.

    Args:
        queries: ``(..., L, d_k)``.  keys: ``(..., S, d_k)``, unique rows.  values: ``(..., S, d_v)``.

    Returns:
        ``(outputs, weights)``: ``(..., L, d_v)`` (exact copies of values) and one-hot ``(..., L, S)``.

    Raises:
        KeyError: a query equals no key (a dict would raise ``KeyError`` too).
        ValueError: a query equals several keys (keys must be unique), or shapes that do not fit.
    """
    check_query_key(queries, keys, "queries", "keys")
    _check_values(values, keys, queries)
    # Exact equality in every coordinate: (..., L, 1, d_k) == (..., 1, S, d_k) -> (..., L, S, d_k)
    match = (queries.unsqueeze(-2) == keys.unsqueeze(-3)).all(dim=-1)  # (..., L, S)
    hits = match.sum(dim=-1)  # (..., L): how many keys each query matches
    if bool((hits == 0).any()):
        i = tuple(int(v) for v in (hits == 0).nonzero()[0])
        raise KeyError(f"query at index {i} matches no key exactly; a hard lookup needs an exact match")
    if bool((hits > 1).any()):
        i = tuple(int(v) for v in (hits > 1).nonzero()[0])
        raise ValueError(f"query at index {i} matches {int(hits[i])} keys; keys must be unique")
    weights = match.to(queries.dtype)  # (..., L, S): one 1 per row
    return context_vector(weights, values), weights  # (..., L, d_v): copies of the matched values


# --------------------------------------------------------------------------- the soft lookup


def gaussian_scores(queries: torch.Tensor, keys: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Gaussian-kernel scores ``-||query_i - key_j||^2 / (2 h^2)`` for every pair.

    The squared distance is computed from the differences (not ``q^2 - 2 q.k + k^2``), so it is
    exact even for nearly equal points: exactly 0 when a query equals a key.

    Args:
        queries: ``(..., L, d_k)``.  keys: ``(..., S, d_k)``; leading dims broadcast.
        bandwidth: ``h > 0``, the kernel's width in the units of the keys.

    Returns:
        scores ``(..., L, S)``, all ``<= 0``.
    """
    check_query_key(queries, keys, "queries", "keys")
    h = require_positive_number(bandwidth, "bandwidth")
    diff = queries.unsqueeze(-2) - keys.unsqueeze(
        -3
    )  # (..., L, 1, d_k) - (..., 1, S, d_k) -> (..., L, S, d_k)
    sq_dist = (diff * diff).sum(dim=-1)  # (..., L, S)
    return -sq_dist / (2.0 * h * h)  # (..., L, S)


def gaussian_kernel_weights(queries: torch.Tensor, keys: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Nadaraya-Watson weights with a Gaussian kernel: ``masked_softmax(gaussian_scores(...))``.

    Equal to ``K((q - k_j) / h) / sum_l K((q - k_l) / h)`` with ``K(u) = exp(-||u||^2 / 2)``: the
    kernel's normalising constant cancels, and what is left is a softmax. Stable for any
    bandwidth: as ``h -> 0`` the nearest key takes all the weight, as ``h -> inf`` the weights
    become uniform ``1 / S``.

    Args:
        queries: ``(..., L, d_k)``.  keys: ``(..., S, d_k)``.  bandwidth: ``h > 0``.

    Returns:
        weights ``(..., L, S)``; each row sums to 1.
    """
    scores = gaussian_scores(queries, keys, bandwidth)  # (..., L, S); validates the inputs
    return masked_softmax(scores, dim=-1)  # (..., L, S): normalise over the keys


def nadaraya_watson(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bandwidth: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nadaraya-Watson kernel regression: a Gaussian-weighted average of the values.

    ``outputs[..., i, :] = sum_j weights[..., i, j] * values[..., j, :]`` with
    ``weights = gaussian_kernel_weights(queries, keys, bandwidth)``. This is attention with the
    score ``-||q - k||^2 / (2 h^2)`` and no learned parameters.

    Args:
        queries: ``(..., L, d_k)``.  keys: ``(..., S, d_k)``.  values: ``(..., S, d_v)``.
        bandwidth: ``h > 0``.

    Returns:
        ``(outputs, weights)``: ``(..., L, d_v)`` and ``(..., L, S)``.
    """
    check_query_key(queries, keys, "queries", "keys")
    _check_values(values, keys, queries)
    weights = gaussian_kernel_weights(queries, keys, bandwidth)  # (..., L, S)
    return context_vector(weights, values), weights  # (..., L, d_v), (..., L, S)


def nadaraya_watson_loop(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bandwidth: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook estimator, one query at a time: the readable twin of ``nadaraya_watson``.

    ``f(x) = sum_j K((x - x_j) / h) y_j / sum_l K((x - x_l) / h)`` with the Gaussian density
    ``K(u) = exp(-||u||^2 / 2) / (2 pi)^(d_k / 2)``. No softmax and no max subtraction, so it
    underflows: when a query is farther than about ``14 h`` (float32; ``38 h`` in float64) from
    every key, every kernel value is 0 and the row is ``0 / 0 = nan``. The softmax version
    does not have this problem. Slow (a Python loop); for reading and testing.

    Args/Returns: as ``nadaraya_watson``.
    """
    check_query_key(queries, keys, "queries", "keys")
    _check_values(values, keys, queries)
    h = require_positive_number(bandwidth, "bandwidth")
    batch = batch_shape(queries, "queries", keys, "keys", "(..., S, d_k)")
    batch = torch.broadcast_shapes(batch, values.shape[:-2])
    d_k = queries.shape[-1]
    norm = (2.0 * math.pi) ** (d_k / 2)  # the Gaussian density's constant; it cancels below
    queries = queries.expand(*batch, *queries.shape[-2:])  # a view: lets us pick query i below
    outputs, weight_rows = [], []
    for i in range(queries.shape[-2]):
        u = (queries[..., i, :].unsqueeze(-2) - keys) / h  # (..., 1, d_k) - (..., S, d_k) -> (..., S, d_k)
        kernel = torch.exp(-0.5 * (u * u).sum(dim=-1)) / norm  # (..., S): K((x - x_j) / h)
        w_i = kernel / kernel.sum(dim=-1, keepdim=True)  # (..., S)
        outputs.append((w_i.unsqueeze(-1) * values).sum(dim=-2))  # (..., S, 1) * (..., S, d_v) -> (..., d_v)
        weight_rows.append(w_i)
    return torch.stack(outputs, dim=-2), torch.stack(weight_rows, dim=-2)  # (..., L, d_v), (..., L, S)


def gaussian_as_dot_product(
    queries: torch.Tensor, keys: torch.Tensor, bandwidth: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewrite the Gaussian score as a dot product, so that dot-product attention reproduces it.

    ``-||q - k||^2 / (2 h^2) = q.k / h^2 - ||k||^2 / (2 h^2) - ||q||^2 / (2 h^2)``. The last term
    is the same for every key of a query, and a softmax ignores a constant added to a row. So with

        q' = [q / h, 1]        k' = [k / h, -||k||^2 / (2 h^2)]

    ``softmax(q' . k')`` equals ``gaussian_kernel_weights(q, k, h)``: pass ``q'``, ``k'`` to
    ``attention_weights`` or ``scaled_dot_product_attention`` with ``scale=1.0``. (Expanding the
    square loses precision when ``||k|| / h`` is large; ``gaussian_scores`` does not.)

    Args:
        queries: ``(..., L, d_k)``.  keys: ``(..., S, d_k)``.  bandwidth: ``h > 0``.

    Returns:
        ``(queries', keys')``: ``(..., L, d_k + 1)`` and ``(..., S, d_k + 1)``.
    """
    check_query_key(queries, keys, "queries", "keys")
    h = require_positive_number(bandwidth, "bandwidth")
    ones = torch.ones_like(queries[..., :1])  # (..., L, 1)
    q_aug = torch.cat([queries / h, ones], dim=-1)  # (..., L, d_k + 1)
    k_sq = (keys * keys).sum(dim=-1, keepdim=True)  # (..., S, 1)
    k_aug = torch.cat([keys / h, -k_sq / (2.0 * h * h)], dim=-1)  # (..., S, d_k + 1)
    return q_aug, k_aug


# --------------------------------------------------------------------------- the chapter's data


def effective_number_of_keys(weights: torch.Tensor) -> torch.Tensor:
    """``1 / sum_j w_j^2`` per row: 1 for a one-hot (hard) lookup, ``S`` for uniform weights.

    Args:
        weights: ``(..., L, S)``, rows summing to 1.

    Returns:
        ``(..., L)``.
    """
    require_floating(weights, "weights")
    require_ndim(weights, "weights", 1, "(..., S)")
    return 1.0 / (weights * weights).sum(dim=-1)  # (..., L)
