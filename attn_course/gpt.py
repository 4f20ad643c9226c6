"""A GPT-2-architecture decoder with a KV cache, and a GPT-2 weight loader.

Architecture (Radford et al. 2019; the layout of nanoGPT's ``model.py``): token embedding +
learned position embedding, ``n_layer`` pre-norm blocks ``x + attn(ln_1(x))``,
``x + mlp(ln_2(x))`` with a tanh-approximated GELU MLP of width ``4 D``, a final LayerNorm and
an output layer tied to the token embedding. Attention is ``attn_course.gqa.GroupedQueryAttention``
(GPT-2 itself has ``n_kv_head = n_head``), through torch's fused SDPA or, with
``GPTConfig(attention="naive")``, through the package's own ``scaled_dot_product_attention``.

Dimension glossary (see ``attn_course`` for the full one)::

    B  batch size     T  tokens in this call     P  tokens before it (in the cache)
    S  keys attended  V  vocabulary size         D  n_embd      H  n_head   H_kv  n_kv_head
    d  head_dim = D // H                         N  n_layer

* ``GPTConfig``, ``GPT``       ``GPT(config)(idx, cache=None, attention_mask=None, position_ids=None)``
                               -> ``logits (B, T, V)``; a ``cache`` is updated in place.
* ``load_gpt2_state_dict``     a Hugging Face ``GPT2LMHeadModel`` state dict -> ``GPT`` (exact).
* ``make_cache``, ``CACHE_KINDS``   an empty ``attn_course.kv_cache`` cache shaped for a config.

Decoding with it (``generate``, the sampling filters, prefix sharing, the work per token) is
``attn_course.decoding``.

Left padding: row ``b`` of a batch is ``[pad .. pad, t_1 .. t_n]`` with ``attention_mask[b]``
``[0 .. 0, 1 .. 1]``. Pad positions are never attended (except each pad by itself, so that no
row is fully masked), and position ids count real tokens only, so each row computes exactly
what it would alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from attn_course._validation import require_int, require_tensor, shape_error
from attn_course.gqa import GroupedQueryAttention, check_heads
from attn_course.kv_cache import DynamicCache, KVCache, PagedCache, SlidingWindowCache, StaticCache

__all__ = [
    "GPTConfig",
    "GPT",
    "CACHE_KINDS",
    "make_cache",
    "load_gpt2_state_dict",
    "config_from_hf",
]

CACHE_KINDS = ("dynamic", "static", "sliding", "paged")


# --------------------------------------------------------------------------- config


@dataclass
class GPTConfig:
    """Hyper-parameters; the defaults are GPT-2 small (124M)."""

    vocab_size: int = 50257  # GPT-2's BPE vocabulary
    context_length: int = 1024  # learned positions (Hugging Face: n_positions)
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # key/value heads; None = n_head (MHA), 1 = MQA
    n_embd: int = 768
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    bias: bool = True  # GPT-2 has biases in every Linear and LayerNorm
    layer_norm_eps: float = 1e-5
    sliding_window: int | None = None  # None: full causal attention; W: each query sees W keys
    attention: str = "sdpa"  # "sdpa" (torch's fused kernel) or "naive" (the package's reference)

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        for name in ("vocab_size", "context_length", "n_layer"):
            require_int(getattr(self, name), name)
        check_heads(self.n_head, self.n_kv_head, self.n_embd, names=("n_head", "n_kv_head", "n_embd"))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.sliding_window is not None:
            require_int(self.sliding_window, "sliding_window")
        if self.attention not in ("sdpa", "naive"):
            raise ValueError(f"attention must be 'sdpa' or 'naive', got {self.attention!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# --------------------------------------------------------------------------- model


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, D) -> (B, T, 4D) -> (B, T, D)


class Block(nn.Module):
    """Pre-norm decoder block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = GroupedQueryAttention(config.n_embd, config.n_head, config.n_kv_head, bias=config.bias,
                                          dropout=config.dropout, naive=config.attention == "naive")
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """``x (B, T, D)`` -> ``(B, T, D)``; ``mask``, ``is_causal``, ``cache``, ``layer`` go to the attention."""
        a = self.attn(self.ln_1(x), mask=mask, is_causal=is_causal, cache=cache, layer=layer)
        x = x + self.drop(a)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2-style decoder: ``forward(idx, cache=None, attention_mask=None, position_ids=None)``.

    Args (forward):
        idx: token ids ``(B, T)``.
        cache: a ``KVCache`` holding ``P`` earlier positions (or ``None``: no past); it is updated.
        attention_mask: ``(B, P + T)``, 1/True for real tokens, 0/False for (left) padding;
            covers the cached positions too. ``None``: no padding.
        position_ids: ``(B, T)``; default: count real tokens, ``P .. P + T - 1`` without padding.
        last_only: compute logits for the last position only (what generation needs).

    Returns:
        logits ``(B, T, V)`` (``(B, 1, V)`` with ``last_only``); the cache now holds ``P + T`` positions.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.context_length, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2N)
            if name.endswith(("attn.out.weight", "c_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    def new_cache(self, kind: str = "dynamic", batch_size: int = 1, max_len: int | None = None,
                  **kwargs) -> KVCache:
        """``make_cache`` for this model's shape, dtype and device."""
        return make_cache(self.config, kind, batch_size, max_len, dtype=self.wte.weight.dtype,
                          device=self.wte.weight.device, **kwargs)

    # --- masks
    def _attention_mask(self, B: int, T: int, past: int, cache: KVCache | None,
                        attention_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, bool]:
        """The boolean ``(B or 1, 1, T, S)`` mask, or ``None`` plus ``is_causal`` when none is needed."""
        window = self.config.sliding_window
        if cache is not None and cache.window is not None:  # the cache forgets older keys: mask them too
            window = cache.window if window is None else min(window, cache.window)
        S = cache.num_keys(T) if cache is not None else T
        end = past + T
        # Does any returned key fall outside some query's window?  The keys are positions end-S .. end-1.
        window_binds = window is not None and (end - 1) - (end - S) >= window
        if attention_mask is None and not window_binds:
            if T == 1:
                return None, False  # one query, the newest position: it may see every key
            if S == T:
                return None, True  # no past: plain causal (upper-left = lower-right here)
        device = self.wte.weight.device
        k_pos = cache.key_positions(T) if cache is not None else torch.arange(T, device=device)  # (S,)
        q_pos = torch.arange(past, end, device=device)  # (T,)
        diff = q_pos[:, None] - k_pos[None, :]  # (T, S): how far back each key is
        allowed = diff >= 0
        if window is not None:
            allowed = allowed & (diff < window)
        allowed = allowed[None, None]  # (1, 1, T, S)
        if attention_mask is not None:
            real_key = attention_mask[:, k_pos]  # (B, S)
            allowed = allowed & real_key[:, None, None, :]  # (B, 1, T, S)
            allowed = allowed | (diff == 0)[None, None]  # a pad query sees itself: no empty rows
        return allowed, False

    # --- forward
    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        cfg = self.config
        require_tensor(idx, "idx")
        if idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32, torch.int64):
            raise shape_error("idx", idx, "(B, T) integer token ids")
        B, T = idx.shape
        past = 0
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise TypeError(f"cache must be a KVCache or None, got {type(cache).__name__}")
            cache.check_compatible(cfg.n_layer, cfg.n_kv_head, cfg.head_dim)
            past = cache.seq_len
        if attention_mask is not None:
            require_tensor(attention_mask, "attention_mask")
            if attention_mask.shape != (B, past + T):
                raise shape_error("attention_mask", attention_mask,
                                  f"({B}, {past + T}) = (B, cached + new tokens)")
            attention_mask = attention_mask.bool()
        if position_ids is None:
            if attention_mask is None:
                if past + T > cfg.context_length:
                    raise ValueError(f"idx has {T} tokens after {past} cached ones: {past + T} positions, "
                                     f"more than context_length = {cfg.context_length}")
                position_ids = torch.arange(past, past + T, device=idx.device)[None]  # (1, T)
            else:
                # Count real tokens: a left-padded row starts at position 0 at its first real token.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, past:]  # (B, T)
        elif position_ids.shape[-1] != T:
            raise shape_error("position_ids", position_ids, f"(B, {T}) = (B, T)")
        if past + T > cfg.context_length and int(position_ids.max()) >= cfg.context_length:
            raise ValueError(f"position ids reach {int(position_ids.max())}; context_length = {cfg.context_length}")

        mask, is_causal = self._attention_mask(B, T, past, cache, attention_mask)
        x = self.drop(self.wte(idx) + self.wpe(position_ids))  # (B, T, D)
        for layer, block in enumerate(self.h):
            x = block(x, mask=mask, is_causal=is_causal, cache=cache, layer=layer)  # (B, T, D)
        if last_only:
            x = x[:, -1:]  # (B, 1, D): only the next token's logits are needed
        return self.lm_head(self.ln_f(x))  # (B, T, V)


def make_cache(config: GPTConfig, kind: str = "dynamic", batch_size: int = 1, max_len: int | None = None,
               *, window: int | None = None, block_size: int = 16, num_blocks: int | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> KVCache:
    """A cache of ``kind`` (one of ``CACHE_KINDS``) shaped for ``config``.

    ``max_len`` (default ``context_length``) sizes the static cache and the paged pool;
    ``window`` (default ``config.sliding_window``) the sliding one.
    """
    shape = (config.n_layer, config.n_kv_head, config.head_dim)
    max_len = config.context_length if max_len is None else max_len
    if kind == "dynamic":
        return DynamicCache(*shape)
    if kind == "static":
        return StaticCache(*shape, batch_size=batch_size, max_len=max_len, dtype=dtype, device=device)
    if kind == "sliding":
        window = config.sliding_window if window is None else window
        if window is None:
            raise ValueError("cache='sliding' needs a window: set GPTConfig.sliding_window or pass window=")
        return SlidingWindowCache(*shape, batch_size=batch_size, window=window, dtype=dtype, device=device)
    if kind == "paged":
        if num_blocks is None:
            num_blocks = batch_size * math.ceil(max_len / block_size)
        return PagedCache(*shape, batch_size=batch_size, block_size=block_size, num_blocks=num_blocks,
                          dtype=dtype, device=device)
    raise ValueError(f"cache kind must be one of {CACHE_KINDS}, got {kind!r}")


# --------------------------------------------------------------------------- GPT-2 weights


def config_from_hf(hf_config) -> GPTConfig:
    """A ``GPTConfig`` from a Hugging Face ``GPT2Config`` (read by attribute; no import needed)."""
    act = getattr(hf_config, "activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"hf_config.activation_function = {act!r}; only GPT-2's tanh GELU is supported")
    return GPTConfig(
        vocab_size=hf_config.vocab_size,
        context_length=hf_config.n_positions,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        n_embd=hf_config.n_embd,
        layer_norm_eps=hf_config.layer_norm_epsilon,
    )


_BLOCK_KEYS = {  # Hugging Face name -> ours; Conv1D weights are stored (in, out) and get transposed
    "ln_1.weight": "ln_1.weight", "ln_1.bias": "ln_1.bias",
    "attn.c_attn.weight": "attn.qkv.weight", "attn.c_attn.bias": "attn.qkv.bias",
    "attn.c_proj.weight": "attn.out.weight", "attn.c_proj.bias": "attn.out.bias",
    "ln_2.weight": "ln_2.weight", "ln_2.bias": "ln_2.bias",
    "mlp.c_fc.weight": "mlp.c_fc.weight", "mlp.c_fc.bias": "mlp.c_fc.bias",
    "mlp.c_proj.weight": "mlp.c_proj.weight", "mlp.c_proj.bias": "mlp.c_proj.bias",
}
_CONV1D = {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"}


def load_gpt2_state_dict(state_dict: dict[str, torch.Tensor], config: GPTConfig | None = None) -> GPT:
    """Build a ``GPT`` holding the weights of a Hugging Face ``GPT2LMHeadModel`` (or ``GPT2Model``).

    Keys: ``transformer.wte.weight``, ``transformer.wpe.weight``, ``transformer.h.{i}.ln_1.*``,
    ``.attn.c_attn.*``, ``.attn.c_proj.*``, ``.ln_2.*``, ``.mlp.c_fc.*``, ``.mlp.c_proj.*``,
    ``transformer.ln_f.*``, ``lm_head.weight`` (tied; checked, not copied). Hugging Face's
    ``Conv1D`` stores weights ``(in, out)``; ``nn.Linear`` wants ``(out, in)``, hence a transpose.
    The causal-mask buffers ``attn.bias`` / ``attn.masked_bias`` of older versions are ignored.

    ``config``: a ``GPTConfig``, a Hugging Face ``GPT2Config``, or ``None`` to infer it from the
    shapes (the head count is not in the weights: GPT-2 models all use head_dim 64, so
    ``n_head = n_embd // 64``; pass a config for anything else).
    """
    sd = {(k[len("transformer."):] if k.startswith("transformer.") else k): v for k, v in state_dict.items()}
    for key in ("wte.weight", "wpe.weight", "ln_f.weight"):
        if key not in sd:
            raise ValueError(f"state_dict has no '{key}' (nor 'transformer.{key}'): not a GPT-2 state dict")
    V, D = sd["wte.weight"].shape
    n_layer = sum(1 for k in sd if k.startswith("h.") and k.endswith(".ln_1.weight"))
    if config is None:
        config = GPTConfig(vocab_size=V, context_length=sd["wpe.weight"].shape[0], n_layer=n_layer,
                           n_head=max(1, D // 64), n_embd=D, bias="ln_f.bias" in sd)
    elif not isinstance(config, GPTConfig):
        config = config_from_hf(config)
    expected = (config.vocab_size, config.n_embd, config.n_layer)
    if expected != (V, D, n_layer):
        raise ValueError(f"config has (vocab_size, n_embd, n_layer) = {expected}; the state dict has {(V, D, n_layer)}")
    ours: dict[str, torch.Tensor] = {"wte.weight": sd.pop("wte.weight"), "wpe.weight": sd.pop("wpe.weight")}
    for name in ("ln_f.weight", "ln_f.bias"):
        if name in sd:
            ours[name] = sd.pop(name)
    lm_head = sd.pop("lm_head.weight", None)
    if lm_head is not None and not torch.equal(lm_head, ours["wte.weight"]):
        raise ValueError("state_dict's lm_head.weight differs from wte.weight; GPT ties them")
    for i in range(n_layer):
        for theirs, mine in _BLOCK_KEYS.items():
            key = f"h.{i}.{theirs}"
            if key not in sd:
                if theirs.endswith("bias") and not config.bias:
                    continue
                raise ValueError(f"state_dict has no '{key}'")
            w = sd.pop(key)
            ours[f"h.{i}.{mine}"] = w.t() if theirs in _CONV1D else w  # (in, out) -> (out, in)
        sd.pop(f"h.{i}.attn.bias", None)  # causal-mask buffer, not a parameter
        sd.pop(f"h.{i}.attn.masked_bias", None)
    if sd:
        raise ValueError(f"state_dict has keys this loader does not know: {sorted(sd)[:5]}")
    model = GPT(config)
    ours["lm_head.weight"] = ours["wte.weight"]
    model.load_state_dict(ours, strict=True)
    return model
