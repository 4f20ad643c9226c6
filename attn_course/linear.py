"""Linear attention (Katharopoulos et al. 2020): replace ``exp(q . k)`` by ``phi(q) . phi(k)``.

Dimension glossary (see ``attn_course`` for the full one)::

    B    batch size            H    number of heads
    L    number of queries     S    number of keys (= values); N when L == S (causal)
    d    query/key width       d_v  value width
    D    feature width of phi  (= d for ``elu_feature_map``)

Shapes: ``q (B, H, L, d)``, ``k (B, H, S, d)``, ``v (B, H, S, d_v)`` -> ``out (B, H, L, d_v)``.

With a feature map ``phi >= 0`` the attention output of query ``i`` is::

    out_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j)
          = phi(q_i) (sum_j phi(k_j)^T v_j) / phi(q_i) (sum_j phi(k_j))      # associativity

The right-hand side never forms the ``(L, S)`` matrix: ``KV = phi(K)^T V`` is ``(D, d_v)`` and
``z = sum_j phi(k_j)`` is ``(D,)``, so the cost is O(N D d_v) instead of O(N^2 d). Causal
attention keeps running sums ``KV_t``, ``z_t``: a recurrent network with a constant-size state
(``LinearAttentionState``), one token at a time, like an RNN when decoding.

* ``linear_attention_quadratic``   the naive twin: ``phi(Q) phi(K)^T`` (masked), normalised.
* ``linear_attention``             non-causal, ``phi(Q) (phi(K)^T V)``.
* ``causal_linear_attention``      causal, parallel: cumulative sums over positions.
* ``LinearAttentionState`` + ``linear_attention_step``, ``causal_linear_attention_recurrent``:
  causal, recurrent: one token per step.

All four agree to rounding (same ``eps`` in the normaliser).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attn_course._validation import require_floating, shape_error
from attn_course.flash import check_qkv

__all__ = [
    "elu_feature_map",
    "relu_feature_map",
    "FEATURE_MAPS",
    "linear_attention_quadratic",
    "linear_attention",
    "causal_linear_attention",
    "LinearAttentionState",
    "linear_attention_step",
    "causal_linear_attention_recurrent",
]

FeatureMap = Callable[[torch.Tensor], torch.Tensor]
EPS = 1e-6  # keeps the normaliser away from 0 (phi(q).z is > 0 for elu+1, may be 0 for relu)


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1``: positive everywhere, ~``x + 1`` for ``x > 0``, ~``exp(x)`` for ``x < 0``."""
    return F.elu(x) + 1


def relu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``relu(x)``: non-negative but can be all zero for a row (then the output is 0)."""
    return F.relu(x)


FEATURE_MAPS: dict[str, FeatureMap] = {"elu+1": elu_feature_map, "relu": relu_feature_map}


def _phi(feature_map: FeatureMap | str) -> FeatureMap:
    if isinstance(feature_map, str):
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {sorted(FEATURE_MAPS)} or a callable, got {feature_map!r}")
        return FEATURE_MAPS[feature_map]
    if not callable(feature_map):
        raise TypeError(f"feature_map must be a callable or a name, got {type(feature_map).__name__}")
    return feature_map


def _check_causal_lengths(q: torch.Tensor, k: torch.Tensor) -> None:
    if q.shape[2] != k.shape[2]:
        raise shape_error("k", k, f"(B, H, {q.shape[2]}, d): causal attention needs as many keys as queries")


def linear_attention_quadratic(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    feature_map: FeatureMap | str = elu_feature_map,
    eps: float = EPS,
) -> torch.Tensor:
    """The naive twin, O(L S): ``A = phi(Q) phi(K)^T`` (lower triangle if causal), ``A V / rowsum(A)``."""
    check_qkv(q, k, v)
    if causal:
        _check_causal_lengths(q, k)
    phi = _phi(feature_map)
    A = phi(q) @ phi(k).transpose(-2, -1)  # (B, H, L, S): similarities, all >= 0
    if causal:
        A = A.tril()  # key j only for queries i >= j
    return (A @ v) / (A.sum(dim=-1, keepdim=True) + eps)  # (B, H, L, d_v)


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_map: FeatureMap | str = elu_feature_map,
    eps: float = EPS,
) -> torch.Tensor:
    """Non-causal linear attention ``phi(Q) (phi(K)^T V) / phi(Q) (phi(K)^T 1)``, O(N D d_v)."""
    check_qkv(q, k, v)
    phi = _phi(feature_map)
    phi_q, phi_k = phi(q), phi(k)  # (B, H, L, D), (B, H, S, D)
    kv = phi_k.transpose(-2, -1) @ v  # (B, H, D, d_v): every key-value pair summed once
    z = phi_k.sum(dim=-2)  # (B, H, D): the normaliser's sum
    num = phi_q @ kv  # (B, H, L, d_v)
    den = (phi_q @ z.unsqueeze(-1)) + eps  # (B, H, L, 1)
    return num / den


def causal_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_map: FeatureMap | str = elu_feature_map,
    eps: float = EPS,
) -> torch.Tensor:
    """Causal linear attention, parallel over positions: prefix sums of ``phi(k_j)^T v_j`` and ``phi(k_j)``.

    Holds all ``N`` prefix states ``(B, H, N, D, d_v)`` at once: simple and parallel, but
    memory ``N D d_v`` (chunked versions keep one state per chunk instead).
    """
    check_qkv(q, k, v)
    _check_causal_lengths(q, k)
    phi = _phi(feature_map)
    phi_q, phi_k = phi(q), phi(k)  # (B, H, N, D)
    kv = torch.cumsum(phi_k.unsqueeze(-1) * v.unsqueeze(-2), dim=2)  # (B, H, N, D, d_v): KV_t for every t
    z = torch.cumsum(phi_k, dim=2)  # (B, H, N, D): z_t for every t
    num = (phi_q.unsqueeze(-2) @ kv).squeeze(-2)  # (B, H, N, 1, D) @ (B, H, N, D, d_v) -> (B, H, N, d_v)
    den = (phi_q * z).sum(dim=-1, keepdim=True) + eps  # (B, H, N, 1)
    return num / den


@dataclass
class LinearAttentionState:
    """The whole memory of causal linear attention after ``t`` tokens: its size does not grow with ``t``.

    kv: ``(B, H, D, d_v)``, ``sum_{j<=t} phi(k_j)^T v_j``.
    z:  ``(B, H, D)``, ``sum_{j<=t} phi(k_j)``.
    """

    kv: torch.Tensor
    z: torch.Tensor

    @classmethod
    def zeros(cls, B: int, H: int, D: int, d_v: int, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> LinearAttentionState:
        """The state before the first token."""
        return cls(torch.zeros(B, H, D, d_v, dtype=dtype, device=device), torch.zeros(B, H, D, dtype=dtype, device=device))

    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size() + self.z.numel() * self.z.element_size()


def linear_attention_step(
    state: LinearAttentionState,
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    feature_map: FeatureMap | str = elu_feature_map,
    eps: float = EPS,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """One decoding step: add token ``t``'s key and value to the state, then read it with ``q_t``.

    Args:
        state: after tokens ``0..t-1`` (``LinearAttentionState.zeros`` before the first).
        q_t, k_t: ``(B, H, d)``.  v_t: ``(B, H, d_v)``.

    Returns:
        ``(out_t (B, H, d_v), new_state)``; ``state`` is not modified.
    """
    for x, name, pattern in ((q_t, "q_t", "(B, H, d)"), (k_t, "k_t", "(B, H, d)"), (v_t, "v_t", "(B, H, d_v)")):
        require_floating(x, name)
        if x.dim() != 3:
            raise shape_error(name, x, pattern)
    if k_t.shape != q_t.shape or v_t.shape[:2] != q_t.shape[:2]:
        raise shape_error("k_t" if k_t.shape != q_t.shape else "v_t", k_t if k_t.shape != q_t.shape else v_t,
                          f"the B, H (and d) of q_t {tuple(q_t.shape)}")
    phi = _phi(feature_map)
    phi_q, phi_k = phi(q_t), phi(k_t)  # (B, H, D)
    if state.kv.shape != (*phi_k.shape, v_t.shape[-1]):
        raise shape_error("state.kv", state.kv, f"{(*phi_k.shape, v_t.shape[-1])}: (B, H, D, d_v) of these tokens")
    kv = state.kv + phi_k.unsqueeze(-1) * v_t.unsqueeze(-2)  # (B, H, D, d_v): add phi(k_t)^T v_t
    z = state.z + phi_k  # (B, H, D)
    num = (phi_q.unsqueeze(-2) @ kv).squeeze(-2)  # (B, H, 1, D) @ (B, H, D, d_v) -> (B, H, d_v)
    den = (phi_q * z).sum(dim=-1, keepdim=True) + eps  # (B, H, 1)
    return num / den, LinearAttentionState(kv, z)


def causal_linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_map: FeatureMap | str = elu_feature_map,
    eps: float = EPS,
    state: LinearAttentionState | None = None,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """Causal linear attention as a recurrence: ``linear_attention_step`` for ``t = 0 .. N-1``.

    ``state`` continues from earlier tokens (default: empty). Returns ``(out (B, H, N, d_v), final_state)``.
    """
    check_qkv(q, k, v)
    _check_causal_lengths(q, k)
    B, H, N, _ = q.shape
    if state is None:
        D = _phi(feature_map)(k[:, :, :1]).shape[-1]  # feature width (a map may change it)
        state = LinearAttentionState.zeros(B, H, D, v.shape[-1], dtype=q.dtype, device=q.device)
    outs = []
    for t in range(N):
        out_t, state = linear_attention_step(state, q[:, :, t], k[:, :, t], v[:, :, t], feature_map, eps)
        outs.append(out_t)
    return torch.stack(outs, dim=2), state  # (B, H, N, d_v)
