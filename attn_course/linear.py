"""Linear attention (Katharopoulos et al. 2020): replace ``exp(q . k)`` by ``phi(q) . phi(k)``.

Dimension glossary (see ``attn_course`` for the full one)::

    B    batch size            H    number of heads
    L    number of queries     S    number of keys (= values); N when L == S (causal)
    d    query/key width       d_v  value width
    D    feature width of phi  (= d for ``elu_feature_map``)
    C    chunk size of the chunkwise form

Shapes: ``q (B, H, L, d)``, ``k (B, H, S, d)``, ``v (B, H, S, d_v)`` -> ``out (B, H, L, d_v)``.

With a feature map ``phi >= 0`` the attention output of query ``i`` is::

    out_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j)
          = phi(q_i) (sum_j phi(k_j)^T v_j) / phi(q_i) (sum_j phi(k_j))      # associativity

The right-hand side never forms the ``(L, S)`` matrix: ``KV = phi(K)^T V`` is ``(D, d_v)`` and
``z = sum_j phi(k_j)`` is ``(D,)``, so the cost is O(N D d_v) instead of O(N^2 d). Causal
attention keeps running sums ``KV_t``, ``z_t``: a recurrent network with a constant-size state
(``LinearAttentionState``), one token at a time, like an RNN when decoding.

Causal linear attention in four forms, equal to rounding (same ``eps`` in the normaliser):

* ``linear_attention_quadratic``   the naive twin: ``phi(Q) phi(K)^T`` (masked), normalised,
  O(N^2 D); ``linear_attention_weights`` returns its normalised ``(L, S)`` matrix.
* ``causal_linear_attention``      parallel over positions with cumulative sums: simple, but it
  holds every prefix state at once, ``(B, H, N, D, d_v)``.
* ``LinearAttentionState`` + ``linear_attention_step``, ``causal_linear_attention_recurrent``:
  one token per step, O(N D d_v) work, sequential (decoding).
* ``causal_linear_attention_chunkwise``  what training kernels run (Hua et al. 2022; Yang et al.
  2024): chunks of ``C`` tokens, quadratic causal attention inside a chunk and the recurrent
  state between chunks, O(N C D + N D d_v) work, ``N / C`` sequential steps, one state in memory.

``linear_attention`` is the non-causal form, ``phi(Q) (phi(K)^T V)``.

A decayed variant (RetNet's fixed decay, Sun et al. 2023): ``decay = gamma < 1`` multiplies the
state by ``gamma`` before each token is added, so key ``j`` counts ``gamma^(i - j)`` times for
query ``i`` (``causal_decay_matrix``): old tokens fade. ``gamma = 1`` is plain linear attention.
The quadratic, recurrent and chunkwise forms take it (the cumulative-sum form does not: it would
divide by ``gamma^t``, which overflows). RetNet itself also drops the normaliser for a group
norm; here the normaliser stays, so the weights of each query still sum to 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attn_course._validation import require_floating, require_int, shape_error
from attn_course.flash import check_qkv

__all__ = [
    "elu_feature_map",
    "relu_feature_map",
    "FEATURE_MAPS",
    "causal_decay_matrix",
    "linear_attention_weights",
    "linear_attention_quadratic",
    "linear_attention",
    "causal_linear_attention",
    "LinearAttentionState",
    "linear_attention_step",
    "causal_linear_attention_recurrent",
    "causal_linear_attention_chunkwise",
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


def _check_decay(decay: object) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
        raise ValueError(f"decay must be a number in (0, 1] (1: no decay), got {decay!r}")
    return float(decay)


def _powers(gamma: float, exponents: torch.Tensor) -> torch.Tensor:
    """``gamma ** exponents`` elementwise (a tensor of the exponents' dtype and device)."""
    return torch.full_like(exponents, gamma).pow(exponents)


def causal_decay_matrix(N: int, decay: float, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``(N, N)``: ``decay^(i - j)`` for keys ``j <= i``, 0 above the diagonal (the causal mask, faded).

    With ``decay = 1`` it is the causal mask as 0/1 numbers.
    """
    require_int(N, "N")
    gamma = _check_decay(decay)
    pos = torch.arange(N, dtype=dtype, device=device)
    age = pos.unsqueeze(1) - pos.unsqueeze(0)  # (N, N): i - j, how far back key j is for query i
    return torch.where(age >= 0, _powers(gamma, age.clamp(min=0)), torch.zeros((), dtype=dtype, device=device))


def _similarities(q: torch.Tensor, k: torch.Tensor, causal: bool, feature_map: FeatureMap | str,
                  decay: float) -> torch.Tensor:
    """``phi(Q) phi(K)^T`` ``(B, H, L, S)``, times ``causal_decay_matrix`` if causal."""
    gamma = _check_decay(decay)
    if causal:
        _check_causal_lengths(q, k)
    elif gamma != 1.0:
        raise ValueError("decay needs causal=True: it fades keys by how far back they are")
    phi = _phi(feature_map)
    A = phi(q) @ phi(k).transpose(-2, -1)  # (B, H, L, S): similarities, all >= 0
    if causal:
        A = A * causal_decay_matrix(q.shape[2], gamma, dtype=A.dtype, device=A.device)  # key j only for i >= j
    return A


def linear_attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    causal: bool = False,
    feature_map: FeatureMap | str = elu_feature_map,
    eps: float = EPS,
    decay: float = 1.0,
) -> torch.Tensor:
    """The ``(B, H, L, S)`` weights linear attention gives each key: ``A / rowsum(A)`` with
    ``A = phi(Q) phi(K)^T`` (times ``decay^(i - j)`` below the diagonal if causal).

    Only for looking at (it is the matrix the fast forms never build): ``weights @ v`` is the
    output of ``linear_attention_quadratic``, up to rounding.
    """
    check_qkv(q, k, k)
    A = _similarities(q, k, causal, feature_map, decay)
    return A / (A.sum(dim=-1, keepdim=True) + eps)  # (B, H, L, S)


def linear_attention_quadratic(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    feature_map: FeatureMap | str = elu_feature_map,
    eps: float = EPS,
    decay: float = 1.0,
) -> torch.Tensor:
    """The naive twin, O(L S): ``A = phi(Q) phi(K)^T`` (lower triangle if causal, times
    ``decay^(i - j)``), ``A V / rowsum(A)``."""
    check_qkv(q, k, v)
    A = _similarities(q, k, causal, feature_map, decay)  # (B, H, L, S)
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

    Holds all ``N`` prefix states ``(B, H, N, D, d_v)`` at once: parallel and short to write,
    but its memory grows as ``N D d_v``, ``D`` times the output's. Training kernels use
    ``causal_linear_attention_chunkwise`` instead, which keeps one state.
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
    decay: float = 1.0,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """One decoding step: add token ``t``'s key and value to the state, then read it with ``q_t``.

    Args:
        state: after tokens ``0..t-1`` (``LinearAttentionState.zeros`` before the first).
        q_t, k_t: ``(B, H, d)``.  v_t: ``(B, H, d_v)``.
        decay: ``gamma`` in ``(0, 1]``: the old state is multiplied by it first (1: no decay).

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
    gamma = _check_decay(decay)
    phi = _phi(feature_map)
    phi_q, phi_k = phi(q_t), phi(k_t)  # (B, H, D)
    if state.kv.shape != (*phi_k.shape, v_t.shape[-1]):
        raise shape_error("state.kv", state.kv, f"{(*phi_k.shape, v_t.shape[-1])}: (B, H, D, d_v) of these tokens")
    kv = gamma * state.kv + phi_k.unsqueeze(-1) * v_t.unsqueeze(-2)  # (B, H, D, d_v): add phi(k_t)^T v_t
    z = gamma * state.z + phi_k  # (B, H, D)
    num = (phi_q.unsqueeze(-2) @ kv).squeeze(-2)  # (B, H, 1, D) @ (B, H, D, d_v) -> (B, H, d_v)
    den = (phi_q * z).sum(dim=-1, keepdim=True) + eps  # (B, H, 1)
    return num / den, LinearAttentionState(kv, z)


def _empty_state(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, feature_map: FeatureMap | str
                 ) -> LinearAttentionState:
    B, H = q.shape[:2]
    D = _phi(feature_map)(k[:, :, :1]).shape[-1]  # feature width (a map may change it)
    return LinearAttentionState.zeros(B, H, D, v.shape[-1], dtype=q.dtype, device=q.device)


def causal_linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_map: FeatureMap | str = elu_feature_map,
    eps: float = EPS,
    state: LinearAttentionState | None = None,
    decay: float = 1.0,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """Causal linear attention as a recurrence: ``linear_attention_step`` for ``t = 0 .. N-1``.

    ``state`` continues from earlier tokens (default: empty). Returns ``(out (B, H, N, d_v), final_state)``.
    """
    check_qkv(q, k, v)
    _check_causal_lengths(q, k)
    N = q.shape[2]
    if state is None:
        state = _empty_state(q, k, v, feature_map)
    outs = []
    for t in range(N):
        out_t, state = linear_attention_step(state, q[:, :, t], k[:, :, t], v[:, :, t], feature_map, eps, decay)
        outs.append(out_t)
    return torch.stack(outs, dim=2), state  # (B, H, N, d_v)


def causal_linear_attention_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    chunk_size: int = 64,
    feature_map: FeatureMap | str = elu_feature_map,
    eps: float = EPS,
    decay: float = 1.0,
    state: LinearAttentionState | None = None,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """Causal linear attention in chunks of ``C`` tokens: the form training uses.

    Inside a chunk, the quadratic form with a causal mask (a ``C x C`` block: dense matrix
    products, which accelerators do well); before the chunk, everything is in the recurrent
    state, which each query reads once and which is carried past the chunk once. Work
    ``O(N C D + N D d_v)``, ``N / C`` sequential steps, one ``(D, d_v)`` state in memory.
    ``C = 1`` is the recurrence, ``C = N`` the quadratic form.

    Args:
        q, k: ``(B, H, N, d)``.  v: ``(B, H, N, d_v)``.
        chunk_size: ``C`` (the last chunk may be shorter).
        decay: ``gamma`` in ``(0, 1]``: key ``j`` counts ``gamma^(i - j)`` for query ``i``.
        state: continue from earlier tokens (default: empty), e.g. prefill here, then decode
            with ``linear_attention_step``.

    Returns:
        ``(out (B, H, N, d_v), final_state)``, equal to ``causal_linear_attention_recurrent``.
    """
    check_qkv(q, k, v)
    _check_causal_lengths(q, k)
    C = require_int(chunk_size, "chunk_size")
    gamma = _check_decay(decay)
    phi = _phi(feature_map)
    state = _empty_state(q, k, v, feature_map) if state is None else state
    kv, z = state.kv, state.z  # (B, H, D, d_v), (B, H, D): every token before the chunk
    if kv.shape[:2] != q.shape[:2] or kv.shape[-1] != v.shape[-1]:
        raise shape_error("state.kv", kv, f"({q.shape[0]}, {q.shape[1]}, D, {v.shape[-1]}): (B, H, D, d_v)")
    phi_q, phi_k = phi(q), phi(k)  # (B, H, N, D)
    outs = []
    for t0 in range(0, q.shape[2], C):
        qc, kc, vc = phi_q[:, :, t0:t0 + C], phi_k[:, :, t0:t0 + C], v[:, :, t0:t0 + C]  # (B, H, c, D), (B, H, c, d_v)
        c = qc.shape[2]
        r = torch.arange(c, dtype=q.dtype, device=q.device)  # (c,): offsets inside the chunk
        # inside the chunk: quadratic and causal, key s counts gamma^(r - s) for query r
        A = (qc @ kc.transpose(-2, -1)) * causal_decay_matrix(c, gamma, q.dtype, q.device)  # (B, H, c, c)
        # before the chunk: the state has faded by gamma^(r + 1) when query r reads it
        q_read = qc * _powers(gamma, r + 1).unsqueeze(-1)  # (B, H, c, D)
        num = A @ vc + q_read @ kv  # (B, H, c, d_v)
        den = A.sum(dim=-1, keepdim=True) + q_read @ z.unsqueeze(-1) + eps  # (B, H, c, 1)
        outs.append(num / den)
        # carry the state past the chunk: it fades by gamma^c, key s by gamma^(c - 1 - s)
        k_add = kc * _powers(gamma, c - 1 - r).unsqueeze(-1)  # (B, H, c, D)
        kv = gamma**c * kv + k_add.transpose(-2, -1) @ vc  # (B, H, D, d_v)
        z = gamma**c * z + k_add.sum(dim=-2)  # (B, H, D)
    return torch.cat(outs, dim=2), LinearAttentionState(kv, z)
