"""Multi-head attention, batch-first: project, split into heads, attend, merge, project.

    q, k, v = W_Q x_q, W_K x_k, W_V x_v                      # (B, L, D), (B, S, D), (B, S, D)
    head_h  = attention(q_h, k_h, v_h)   for h = 1 .. H      # q_h: columns h*d .. (h+1)*d - 1
    output  = W_O concat(head_1, ..., head_H)                # (B, L, D)

Dimension glossary (see ``attn_course`` for the full one)::

    B  batch size          H  number of heads
    L  query length        S  key/value length (L == S for self-attention)
    D  embed_dim           d = D // H, the width of one head
    E_k, E_v  the widths of the key and value *inputs* (``kdim``, ``vdim``; default D)

* ``split_heads`` / ``merge_heads``  ``(B, T, D) <-> (B, H, T, d)``: a reshape, no arithmetic.
* ``MultiHeadAttention``             the compact version: one big projection per Q/K/V, then
                                     every head at once with the package's attention
                                     (``attention_weights``, then ``@ v``) on ``(B, H, L, d)``.
* ``MultiHeadAttentionLoop``         its naive twin, same parameters: each head projects with
                                     its own slice of the weights and attends on its own, in a
                                     Python loop; the heads' outputs are concatenated.
* ``to_torch_masks`` / ``from_torch_key_padding_mask`` / ``from_torch_attn_mask``  convert
                                     between our masks and ``torch.nn.MultiheadAttention``'s.

Mask conventions
----------------
Ours, everywhere in the package: a boolean mask is ``True`` where a query **may attend**.

==========================  ===========================  ======================================
argument                    ours (``True`` means)        ``torch.nn.MultiheadAttention``
==========================  ===========================  ======================================
``key_padding_mask (B, S)`` real token: may be attended  ``True`` = padding, **ignore** (opposite)
bool ``attn_mask``          may attend                   ``True`` = **not** allowed (opposite);
                                                         shape ``(L, S)`` or ``(B * H, L, S)``
float ``attn_mask``         not accepted                 added to the scores (``-inf`` = masked)
``is_causal=True``          applies ``causal_mask(L, S)`` only a *hint* that ``attn_mask`` already
                                                         is causal; it needs ``attn_mask``
==========================  ===========================  ======================================

(``torch.nn.functional.scaled_dot_product_attention``'s boolean ``attn_mask`` uses our
convention, ``True`` = may attend; it is ``nn.MultiheadAttention`` that flips it.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attn_course._validation import require_floating, require_int, require_tensor, shape_error
from attn_course.attention import attention_weights_unchecked
from attn_course.masking import causal_mask

__all__ = [
    "split_heads",
    "merge_heads",
    "MultiHeadAttention",
    "MultiHeadAttentionLoop",
    "to_torch_masks",
    "from_torch_key_padding_mask",
    "from_torch_attn_mask",
]


# --------------------------------------------------------------------------- validation


def _check_head_config(embed_dim: object, num_heads: object) -> int:
    """Validate ``embed_dim`` and ``num_heads``; return the head width ``d = embed_dim // num_heads``."""
    require_int(embed_dim, "embed_dim")
    require_int(num_heads, "num_heads")
    if embed_dim % num_heads:
        raise ValueError(
            f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}): each of the "
            f"{num_heads} heads gets d = embed_dim / num_heads features, and {embed_dim} / {num_heads} "
            f"is not an integer; try num_heads in {[h for h in range(1, embed_dim + 1) if embed_dim % h == 0]}"
        )
    return embed_dim // num_heads


def _check_bool_mask(mask: object, name: str) -> torch.Tensor:
    require_tensor(mask, name)
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be a boolean tensor (True = may attend), got dtype {mask.dtype}; "
            "for torch-style masks use from_torch_key_padding_mask / from_torch_attn_mask"
        )
    return mask


# --------------------------------------------------------------------------- split and merge


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, T, D) -> (B, H, T, d)`` with ``d = D // H``: head ``h`` gets features ``h*d .. (h+1)*d - 1``.

    Only a reshape and a transpose (a view, no copy): the ``D`` features of every token are cut
    into ``H`` consecutive chunks of ``d``, and the head axis is moved in front of the tokens so
    that attention can treat ``(B, H)`` as batch dimensions.
    """
    require_tensor(x, "x")
    require_int(num_heads, "num_heads")
    if x.dim() != 3:
        raise shape_error("x", x, "(B, T, D)")
    B, T, D = x.shape
    if D % num_heads:
        raise shape_error("x", x, f"(B, T, D) with D divisible by num_heads = {num_heads}")
    d = D // num_heads
    x = x.reshape(B, T, num_heads, d)  # (B, T, H, d): cut each token's D features into H chunks
    return x.transpose(1, 2)  # (B, H, T, d)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, T, d) -> (B, T, H * d)``: the inverse of ``split_heads`` (concatenate the heads).

    Token ``t``'s output is head 0's ``d`` features, then head 1's, ..., as in
    ``torch.cat([x[:, h] for h in range(H)], dim=-1)``.
    """
    require_tensor(x, "x")
    if x.dim() != 4:
        raise shape_error("x", x, "(B, H, T, d)")
    B, H, T, d = x.shape
    x = x.transpose(1, 2)  # (B, T, H, d)
    return x.reshape(B, T, H * d)  # (B, T, D): a copy, since the transpose is not contiguous


# --------------------------------------------------------------------------- the module


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al., 2017), batch-first, with our mask convention.

    ``MultiHeadAttention(D, H)`` has the parameters of ``torch.nn.MultiheadAttention(D, H,
    batch_first=True)``: ``q_proj (D <- D)``, ``k_proj (D <- kdim)``, ``v_proj (D <- vdim)`` and
    ``out_proj (D <- D)``, with biases when ``bias=True``. The number of parameters does not
    depend on ``H``: more heads means narrower heads (``d = D // H``), not more weights.

    Masks (``True`` = may attend, the package rule; **torch's module uses the opposite** for
    ``key_padding_mask`` and boolean ``attn_mask``, see the module docstring and
    ``to_torch_masks``):

    * ``key_padding_mask`` bool ``(B, S)``: ``True`` = a real token, ``False`` = padding.
    * ``attn_mask`` bool ``(L, S)`` (the same for every sequence and head) or 4-D, broadcastable
      to ``(B, H, L, S)`` (e.g. ``(B, 1, L, S)`` per sequence). A 3-D mask is refused: torch's
      ``(B * H, L, S)`` layout would silently broadcast wrongly (use ``from_torch_attn_mask``).
    * ``is_causal=True`` applies ``causal_mask(L, S)`` (upper-left aligned). In torch's module
      it is only a hint that ``attn_mask`` already is causal.

    All given masks are combined with AND. A query row with no allowed key gets all-zero
    weights and a zero attention result (torch gives NaN there), so its output is
    ``out_proj.bias`` (zero when ``bias=False``).

    Dropout (``dropout > 0``, training mode only) is applied once, to the attention weights
    between the softmax and ``@ v``, as in torch; the returned weights are those *before*
    dropout (rows sum to 1), the output is computed from the dropped ones.

    Args:
        embed_dim: ``D``, the width of queries and of the output.
        num_heads: ``H``; must divide ``embed_dim``.
        bias: add biases to the four projections.
        kdim, vdim: widths of the key and value inputs (default ``embed_dim``).
        dropout: dropout probability on the attention weights.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.head_dim = _check_head_config(embed_dim, num_heads)
        self.kdim = embed_dim if kdim is None else require_int(kdim, "kdim")
        self.vdim = embed_dim if vdim is None else require_int(vdim, "vdim")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, float(dropout)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)  # W_Q: (D, D)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)  # W_K: (D, E_k)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)  # W_V: (D, E_v)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)  # W_O: (D, D)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Torch's initialisation: Xavier-uniform input projections, zero biases."""
        if self.kdim == self.vdim == self.embed_dim:
            # torch initialises the packed (3D, D) matrix at once; the same bound for each third
            bound = math.sqrt(6.0 / (self.embed_dim + 3 * self.embed_dim))
            for proj in (self.q_proj, self.k_proj, self.v_proj):
                nn.init.uniform_(proj.weight, -bound, bound)
        else:
            for proj in (self.q_proj, self.k_proj, self.v_proj):
                nn.init.xavier_uniform_(proj.weight)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    def extra_repr(self) -> str:
        extra = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"
        if (self.kdim, self.vdim) != (self.embed_dim, self.embed_dim):
            extra += f", kdim={self.kdim}, vdim={self.vdim}"
        return extra + (f", dropout={self.dropout}" if self.dropout else "")

    # ----------------------------------------------------------------------- inputs and masks

    def _check_inputs(
        self,
        query: object,
        key: object,
        value: object,
        key_padding_mask: object,
        attn_mask: object,
    ) -> torch.Tensor | None:
        """Validate everything; return the combined mask, ``None`` or ``(B | 1, H | 1, L, S)``/``(L, S)``."""
        for name, x in (("query", query), ("key", key), ("value", value)):
            require_floating(x, name)
        D, E_k, E_v = self.embed_dim, self.kdim, self.vdim
        if query.dim() != 3 or query.shape[-1] != D:
            raise shape_error("query", query, f"(B, L, {D}) (batch-first, embed_dim = {D})")
        B, L = query.shape[0], query.shape[1]
        if key.dim() != 3 or key.shape[0] != B or key.shape[-1] != E_k:
            raise shape_error("key", key, f"({B}, S, {E_k}) (B from query, kdim = {E_k})")
        S = key.shape[1]
        if value.dim() != 3 or value.shape[:2] != key.shape[:2] or value.shape[-1] != E_v:
            raise shape_error("value", value, f"({B}, {S}, {E_v}) (B and S from key, vdim = {E_v})")
        for name, x in (("key", key), ("value", value)):
            if x.dtype != query.dtype:
                raise TypeError(f"{name} has dtype {x.dtype}; expected query's dtype {query.dtype}")
        mask = None
        if key_padding_mask is not None:
            _check_bool_mask(key_padding_mask, "key_padding_mask")
            if tuple(key_padding_mask.shape) != (B, S):
                raise shape_error(
                    "key_padding_mask", key_padding_mask, f"({B}, {S}) = (B, S), True = real token"
                )
            mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, S): every head and query
        if attn_mask is not None:
            _check_bool_mask(attn_mask, "attn_mask")
            H = self.num_heads
            if attn_mask.dim() == 2:
                if tuple(attn_mask.shape) != (L, S):
                    raise shape_error("attn_mask", attn_mask, f"({L}, {S}) = (L, S), True = may attend")
            elif attn_mask.dim() == 4:
                ok = attn_mask.shape[-2:] == (L, S) and all(
                    n in (1, full) for n, full in zip(attn_mask.shape[:2], (B, H))
                )
                if not ok:
                    raise shape_error(
                        "attn_mask", attn_mask, f"(B or 1, H or 1, L, S) = ({B} or 1, {H} or 1, {L}, {S})"
                    )
            else:
                raise shape_error(
                    "attn_mask",
                    attn_mask,
                    f"({L}, {S}) = (L, S) or ({B} or 1, {H} or 1, {L}, {S}) = (B, H, L, S); "
                    "for a per-sequence (B, L, S) mask pass attn_mask[:, None]",
                )
            mask = attn_mask if mask is None else mask & attn_mask  # (B | 1, H | 1, L, S)
        return mask

    # ----------------------------------------------------------------------- forward

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``query (B, L, D)`` to ``key (B, S, kdim)`` / ``value (B, S, vdim)``.

        Returns:
            ``(output, weights)``: ``(B, L, D)`` and the per-head weights ``(B, H, L, S)``
            (``None`` when ``need_weights=False``). ``weights.mean(1)`` is what torch returns
            with its default ``average_attn_weights=True``.
        """
        mask = self._check_inputs(query, key, value, key_padding_mask, attn_mask)
        H = self.num_heads
        q = split_heads(self.q_proj(query), H)  # (B, L, D) -> (B, H, L, d)
        k = split_heads(self.k_proj(key), H)  # (B, S, D) -> (B, H, S, d)
        v = split_heads(self.v_proj(value), H)  # (B, S, D) -> (B, H, S, d)
        # every head at once: (B, H) are batch dimensions for the one attention of the package;
        # the inputs were checked above, so its unchecked core
        weights = attention_weights_unchecked(q, k, mask, is_causal=is_causal)  # (B, H, L, S)
        heads = self._dropout(weights) @ v  # (B, H, L, S) @ (B, H, S, d) -> (B, H, L, d)
        output = self.out_proj(merge_heads(heads))  # (B, H, L, d) -> (B, L, D) -> (B, L, D)
        return output, (weights if need_weights else None)

    def _dropout(self, weights: torch.Tensor) -> torch.Tensor:
        """Dropout on the weights, in training mode only: some keys of a row are dropped, the rest
        scaled by ``1 / (1 - p)`` (so the row sums to 1 on average, not exactly)."""
        return F.dropout(weights, self.dropout) if self.dropout and self.training else weights

    # ----------------------------------------------------------------------- torch interop

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> MultiHeadAttention:
        """A copy of ``torch.nn.MultiheadAttention`` ``module``'s weights in our module.

        Handles the packed ``in_proj_weight (3D, D)`` (when ``kdim == vdim == embed_dim``) and the
        separate ``q/k/v_proj_weight`` otherwise, ``in_proj_bias`` and ``out_proj``; ``bias=False``
        modules; dtype and device are kept. Outputs then agree with the module's, given the
        converted masks (``to_torch_masks``). The weights do not depend on ``batch_first``, but
        ours is always batch-first: a ``batch_first=False`` torch module takes ``(L, B, D)``.

        Not supported (``ValueError``): ``add_bias_kv=True`` and ``add_zero_attn=True``.
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"module must be a torch.nn.MultiheadAttention, got {type(module).__name__}")
        if module.bias_k is not None or module.bias_v is not None:
            raise ValueError("module has add_bias_kv=True, which MultiHeadAttention does not support")
        if module.add_zero_attn:
            raise ValueError("module has add_zero_attn=True, which MultiHeadAttention does not support")
        D = module.embed_dim
        bias = module.in_proj_bias is not None
        ours = cls(D, module.num_heads, bias=bias, kdim=module.kdim, vdim=module.vdim, dropout=module.dropout)
        if module._qkv_same_embed_dim:
            w_q, w_k, w_v = module.in_proj_weight.chunk(3, dim=0)  # (3D, D) -> 3 x (D, D)
        else:
            w_q, w_k, w_v = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
        ref = module.out_proj.weight
        ours = ours.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for proj, w in zip((ours.q_proj, ours.k_proj, ours.v_proj), (w_q, w_k, w_v)):
                proj.weight.copy_(w)
            ours.out_proj.weight.copy_(module.out_proj.weight)
            if bias:
                b_q, b_k, b_v = module.in_proj_bias.chunk(3)  # (3D,) -> 3 x (D,)
                for proj, b in zip((ours.q_proj, ours.k_proj, ours.v_proj), (b_q, b_k, b_v)):
                    proj.bias.copy_(b)
                ours.out_proj.bias.copy_(module.out_proj.bias)
        ours.train(module.training)
        return ours


class MultiHeadAttentionLoop(MultiHeadAttention):
    """The naive twin of ``MultiHeadAttention``: the same parameters, one head at a time.

    Head ``h`` owns rows ``h*d .. (h+1)*d - 1`` of ``W_Q``, ``W_K`` and ``W_V`` (and of their
    biases): its own small projections ``(d, D)``. The loop projects the inputs with them, runs
    the package's attention (``attention_weights``, then ``@ v``) on ``(B, L, d)`` queries,
    concatenates the ``H`` results along the features and applies ``W_O``. Load the compact module's weights with
    ``loop.load_state_dict(mha.state_dict())``: outputs agree to float rounding.
    """

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = self._check_inputs(query, key, value, key_padding_mask, attn_mask)
        if mask is not None and mask.dim() == 4:
            mask = mask.expand(mask.shape[0], self.num_heads, *mask.shape[2:])  # (B | 1, H, L, S)
        d = self.head_dim
        heads, head_weights = [], []
        for h in range(self.num_heads):
            rows = slice(h * d, (h + 1) * d)  # this head's rows of W_Q, W_K, W_V
            q_h = F.linear(query, *_rows(self.q_proj, rows))  # (B, L, D) -> (B, L, d)
            k_h = F.linear(key, *_rows(self.k_proj, rows))  # (B, S, E_k) -> (B, S, d)
            v_h = F.linear(value, *_rows(self.v_proj, rows))  # (B, S, E_v) -> (B, S, d)
            mask_h = None if mask is None else (mask if mask.dim() == 2 else mask[:, h])  # (B | 1, L, S)
            w_h = attention_weights_unchecked(q_h, k_h, mask_h, is_causal=is_causal)  # (B, L, S)
            heads.append(self._dropout(w_h) @ v_h)  # (B, L, S) @ (B, S, d) -> (B, L, d)
            head_weights.append(w_h)
        concat = torch.cat(heads, dim=-1)  # H x (B, L, d) -> (B, L, D)
        output = self.out_proj(concat)  # (B, L, D)
        weights = torch.stack(head_weights, dim=1)  # H x (B, L, S) -> (B, H, L, S)
        return output, (weights if need_weights else None)


def _rows(proj: nn.Linear, rows: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight rows (and bias entries) of ``proj`` that belong to one head."""
    return proj.weight[rows], (None if proj.bias is None else proj.bias[rows])  # (d, E), (d,)


# --------------------------------------------------------------------------- mask converters


def to_torch_masks(
    key_padding_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    *,
    is_causal: bool = False,
    num_heads: int | None = None,
    batch_size: int | None = None,
    L: int | None = None,
    S: int | None = None,
) -> dict[str, torch.Tensor | None]:
    """Our masks -> the keyword arguments ``torch.nn.MultiheadAttention`` wants for the same attention.

    Both conventions flip: torch's ``key_padding_mask`` is ``True`` at padding (ignore) and its
    boolean ``attn_mask`` is ``True`` where attention is **not** allowed. ``is_causal`` is folded
    into ``attn_mask`` (torch's module treats ``is_causal`` only as a hint), so pass the result
    as ``torch_mha(q, k, v, **to_torch_masks(...))`` without ``is_causal``.

    Args:
        key_padding_mask: ours, bool ``(B, S)``, ``True`` = real token.
        attn_mask: ours, bool ``(L, S)`` or ``(B | 1, H | 1, L, S)``, ``True`` = may attend.
        is_causal: also forbid keys after the query (``causal_mask(L, S)``).
        num_heads: ``H``; needed for a 4-D ``attn_mask`` (torch wants ``(B * H, L, S)``), unless
            it is ``(1, 1, L, S)``, which becomes ``(L, S)``.
        batch_size: ``B``; needed only for a 4-D ``attn_mask`` of batch dim 1 (e.g. per head,
            ``(1, H, L, S)``) without ``key_padding_mask``, which would otherwise tell it.
        L, S: query and key lengths; needed only for ``is_causal`` without ``attn_mask``
            (``S`` defaults to ``key_padding_mask``'s, ``L`` to ``S``).

    Returns:
        ``{"key_padding_mask": (B, S) or None, "attn_mask": (L, S) or (B * H, L, S) or None}``.
    """
    torch_kpm = None
    if key_padding_mask is not None:
        _check_bool_mask(key_padding_mask, "key_padding_mask")
        if key_padding_mask.dim() != 2:
            raise shape_error("key_padding_mask", key_padding_mask, "(B, S), True = real token")
        torch_kpm = ~key_padding_mask  # (B, S): torch's True = padding, ignore
        S = key_padding_mask.shape[1] if S is None else S
    mask = None
    if attn_mask is not None:
        _check_bool_mask(attn_mask, "attn_mask")
        if attn_mask.dim() not in (2, 4):
            raise shape_error("attn_mask", attn_mask, "(L, S) or (B | 1, H | 1, L, S), True = may attend")
        mask = attn_mask
        L, S = attn_mask.shape[-2:]
    if is_causal:
        if L is None and S is None:
            raise ValueError("is_causal without attn_mask needs the lengths: pass L and S (or key_padding_mask)")
        S = L if S is None else S
        L = S if L is None else L
        causal = causal_mask(int(L), int(S), device=None if mask is None else mask.device)  # (L, S)
        mask = causal if mask is None else mask & causal
    if mask is not None and mask.dim() == 4 and mask.shape[:2] == (1, 1):
        mask = mask[0, 0]  # (L, S): the same for every sequence and head
    if mask is not None and mask.dim() == 4:
        if num_heads is None:
            raise ValueError("a 4-D attn_mask needs num_heads: torch wants it as (B * H, L, S)")
        require_int(num_heads, "num_heads")
        if batch_size is not None:
            B = require_int(batch_size, "batch_size")
        elif key_padding_mask is not None:
            B = key_padding_mask.shape[0]
        elif mask.shape[0] > 1:
            B = mask.shape[0]
        else:
            raise ValueError(
                f"attn_mask has shape {tuple(mask.shape)}: pass batch_size, torch wants it as (B * H, L, S)"
            )
        if mask.shape[0] not in (1, B) or mask.shape[1] not in (1, num_heads):
            raise shape_error("attn_mask", attn_mask, f"({B} or 1, {num_heads} or 1, L, S)")
        mask = mask.expand(B, num_heads, *mask.shape[2:])  # (B, H, L, S)
        mask = mask.reshape(B * num_heads, *mask.shape[2:])  # (B * H, L, S): torch's layout, b-major
    return {"key_padding_mask": torch_kpm, "attn_mask": None if mask is None else ~mask}


def from_torch_key_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """torch's ``key_padding_mask`` (bool ``(B, S)``, ``True`` = padding) -> ours (``True`` = real token).

    A float torch mask (added to the scores) converts too: ``0`` -> ``True``, ``-inf`` -> ``False``.
    """
    require_tensor(mask, "mask")
    if mask.dim() != 2:
        raise shape_error("mask", mask, "(B, S)")
    return _allowed(mask)


def from_torch_attn_mask(mask: torch.Tensor, num_heads: int | None = None) -> torch.Tensor:
    """torch's ``attn_mask`` -> ours (``True`` = may attend), shaped for ``MultiHeadAttention``.

    Boolean: torch's ``True`` = not allowed, so it is negated. Float (added to the scores): only
    ``0`` (allowed) and ``-inf`` (masked) convert; other values are a bias that a boolean mask
    cannot express (``ValueError``). ``(L, S)`` stays ``(L, S)``; torch's ``(B * H, L, S)`` becomes
    ``(B, H, L, S)``, which needs ``num_heads``.
    """
    require_tensor(mask, "mask")
    if mask.dim() == 2:
        return _allowed(mask)  # (L, S)
    if mask.dim() != 3:
        raise shape_error("mask", mask, "(L, S) or (B * H, L, S)")
    if num_heads is None:
        raise ValueError("a 3-D torch attn_mask (B * H, L, S) needs num_heads to split B * H")
    require_int(num_heads, "num_heads")
    if mask.shape[0] % num_heads:
        raise shape_error("mask", mask, f"(B * H, L, S) with its first dim divisible by num_heads = {num_heads}")
    return _allowed(mask).reshape(-1, num_heads, *mask.shape[1:])  # (B * H, L, S) -> (B, H, L, S)


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    """A torch mask (bool: True = masked; float: additive) -> bool, True = may attend."""
    if mask.dtype == torch.bool:
        return ~mask
    if not mask.is_floating_point():
        raise TypeError(f"mask must be a boolean or floating tensor, got dtype {mask.dtype}")
    ninf = torch.isneginf(mask)
    if not torch.all(ninf | (mask == 0)):
        raise ValueError(
            "a float mask converts only if it holds 0 (allowed) and -inf (masked); "
            f"this one has other values, e.g. {mask[~(ninf | (mask == 0))].flatten()[0].item()!r} "
            "(an additive bias, which a boolean mask cannot express)"
        )
    return ~ninf
