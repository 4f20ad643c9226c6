"""Decoding: turning a ``GPT`` into text, one token per step, with or without a KV cache.

Dimension glossary (see ``attn_course`` for the full one)::

    B  batch size     T  prompt tokens     V  vocabulary size     D  n_embd     N  n_layer

* ``generate``                 greedy / temperature / top-k / top-p decoding, with a cache
                               (``cache="dynamic"`` etc., see ``attn_course.gpt.CACHE_KINDS``) or
                               recomputing (``cache=None``), batched prompts of different lengths
                               via left padding.
* ``generate_shared_prompt``   several samples of one prompt sharing its KV blocks (``PagedCache``).
* ``top_k_filter``, ``top_p_filter``, ``sampling_distribution``   what each method samples from.
* ``sample_next``              one token per row from the logits.
* ``generation_macs``          multiply-adds to produce one token, with and without a cache.

The loop of ``generate`` is the whole idea: the prompt is the first feed; then each step feeds
what the model has not seen yet (with a cache, only the newest token) and samples one token.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from attn_course._validation import require_int, require_tensor, shape_error
from attn_course.gpt import CACHE_KINDS, GPT, GPTConfig
from attn_course.kv_cache import KVCache, PagedCache

__all__ = [
    "generate",
    "generate_shared_prompt",
    "top_k_filter",
    "top_p_filter",
    "sampling_distribution",
    "sample_next",
    "generation_macs",
]


# --------------------------------------------------------------------------- sampling


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None:
        require_int(top_k, "top_k")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (ties at the k-th value kept too); the rest -> -inf.

    ``logits (..., V)``; returns a new tensor.
    """
    _check_sampling(1.0, k, None)
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1): the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability sums to at least ``p``; the rest -> -inf. The most likely token is always kept.

    ``logits (..., V)``; returns a new tensor.
    """
    _check_sampling(1.0, None, p)
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
    drop_sorted = mass_before >= p  # the set already reached p without this token
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sampling_distribution(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                          top_p: float | None = None) -> torch.Tensor:
    """The probabilities ``(..., V)`` a sampler draws the next token from.

    Order: divide by ``temperature``, keep the ``top_k``, then the nucleus ``top_p``, softmax.
    ``temperature = 0`` is greedy: all the mass on the arg-max.
    """
    _check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    return logits.softmax(dim=-1)


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids ``(B,)`` from ``logits (B, V)``: arg-max when ``temperature == 0``, else a draw."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = sampling_distribution(logits, temperature, top_k, top_p)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


# --------------------------------------------------------------------------- generation


def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    attention_mask: torch.Tensor | None = None,
    cache: str | KVCache | None = "dynamic",
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Append ``max_new_tokens`` tokens to each row of ``idx (B, T)``.

    Each step runs the model on what it has not seen yet and samples one token. With a cache
    that is the whole prompt once (prefill), then only the newest token (decode), attending over
    the cached keys and values; with ``cache=None`` it is the whole sequence every step (``O(t)``
    work for token ``t``), which gives the same tokens.

    Args:
        model: a ``GPT``.  idx: prompt ids ``(B, T)``, left-padded when rows differ in length.
        temperature: 0 = greedy (arg-max); > 0 samples from ``sampling_distribution``.
        top_k, top_p: filters for sampling (see ``top_k_filter``, ``top_p_filter``).
        seed: seeds the sampler (a private ``torch.Generator``; global RNG untouched).
        attention_mask: ``(B, T)``, 1 for real tokens, 0 for left padding.
        cache: a kind in ``CACHE_KINDS`` (``"dynamic"``, ``"static"``, ``"sliding"``, ``"paged"``),
            an empty ``KVCache`` built for this model and batch, or ``None`` to recompute.
        return_logits: also return the logits each step chose from.

    Returns:
        tokens ``(B, T + max_new_tokens)``, and with ``return_logits`` the logits
        ``(B, max_new_tokens, V)``.
    """
    B, T = _check_prompt(model, idx, max_new_tokens, "idx")
    _check_sampling(temperature, top_k, top_p)
    total = T + max_new_tokens
    cache = _decoding_cache(model, cache, B, total)
    mask = _padding_mask(attention_mask, B, T, total)  # (B, T + new) or None: no padding
    generator = _generator(seed, temperature, idx.device)

    out = torch.empty(B, total, dtype=torch.long, device=idx.device)  # (B, T + new): no per-step cat
    out[:, :T] = idx
    step_logits = []
    start = 0  # the first position the model has not seen: the prompt is the first feed
    with torch.no_grad(), _eval_mode(model):
        for t in range(T, total):
            feed_mask = None if mask is None else mask[:, :t]  # (B, t): covers the cached positions too
            logits = model(out[:, start:t], cache, attention_mask=feed_mask, last_only=True)[:, -1]  # (B, V)
            out[:, t] = sample_next(logits, temperature, top_k, top_p, generator)
            step_logits.append(logits)
            if cache is not None:
                start = t  # the cache now holds positions < t: feed only the new token
    if return_logits:
        return out, torch.stack(step_logits, dim=1)  # (B, T + new), (B, new, V)
    return out


def _check_prompt(model: GPT, idx: torch.Tensor, max_new_tokens: int, name: str) -> tuple[int, int]:
    """Raise unless ``idx`` is ``(B, T)`` token ids and ``T + max_new_tokens`` fits the context; return ``(B, T)``."""
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    require_tensor(idx, name)
    if idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32):
        raise shape_error(name, idx, "(B, T) integer token ids")
    B, T = idx.shape
    if T == 0:
        raise shape_error(name, idx, "(B, T) with T >= 1: at least one prompt token (e.g. a <bos>)")
    require_int(max_new_tokens, "max_new_tokens")
    context = model.config.context_length
    if T > context:
        raise ValueError(f"{name} has {T} tokens, longer than the model's context_length = {context}")
    if T + max_new_tokens > context:
        raise ValueError(f"max_new_tokens = {max_new_tokens} after a {T}-token prompt needs {T + max_new_tokens} "
                         f"positions; context_length = {context}")
    return B, T


def _decoding_cache(model: GPT, cache: str | KVCache | None, batch: int, total: int) -> KVCache | None:
    """The empty cache ``generate`` decodes with: built from a kind, or a given one checked for this run."""
    if cache is None:
        return None
    if isinstance(cache, str):
        return model.new_cache(cache, batch_size=batch, max_len=total)
    if not isinstance(cache, KVCache):
        raise TypeError(f"cache must be None, a kind in {CACHE_KINDS} or a KVCache, got {type(cache).__name__}")
    cfg = model.config
    cache.check_compatible(cfg.n_layer, cfg.n_kv_head, cfg.head_dim)
    if cache.capacity is not None and cache.capacity < total:
        raise ValueError(f"cache has capacity = {cache.capacity}; this generation needs {total} positions")
    if cache.batch_size is not None and cache.batch_size != batch:
        raise ValueError(f"cache was built for batch_size = {cache.batch_size}; idx has {batch} rows")
    if cache.seq_len:
        raise ValueError(f"cache already holds {cache.seq_len} positions; pass an empty one (cache.reset())")
    return cache


def _padding_mask(attention_mask: torch.Tensor | None, B: int, T: int, total: int) -> torch.Tensor | None:
    """The prompt's left-padding mask extended over the ``total`` positions (new tokens are real), or
    ``None`` when nothing is padded."""
    if attention_mask is None:
        return None
    require_tensor(attention_mask, "attention_mask")
    if attention_mask.shape != (B, T):
        raise shape_error("attention_mask", attention_mask, f"({B}, {T}) = idx's shape")
    m = attention_mask.bool()
    if not bool(m.any(-1).all()):
        raise ValueError("attention_mask has a row with no real token")
    if bool((m[:, :-1] & ~m[:, 1:]).any()):
        raise ValueError("attention_mask must be left-padded: each row 0 .. 0 then 1 .. 1")
    if bool(m.all()):
        return None
    full = torch.ones(B, total, dtype=torch.bool, device=m.device)  # (B, T + new)
    full[:, :T] = m
    return full


def _generator(seed: int | None, temperature: float, device: torch.device) -> torch.Generator | None:
    """A private generator for sampling (the global RNG stays untouched); none for greedy decoding."""
    if seed is None or temperature == 0:
        return None
    return torch.Generator(device=device).manual_seed(seed)


@contextmanager
def _eval_mode(model: nn.Module):
    """Run with dropout off, then restore the model's mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def generate_shared_prompt(
    model: GPT,
    prompt: torch.Tensor,
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    block_size: int = 16,
) -> tuple[torch.Tensor, PagedCache]:
    """``num_samples`` continuations of one prompt whose KV blocks they all share (prefix sharing).

    The prompt ``(1, T)`` is run once into a ``PagedCache``; the sequence is forked
    ``num_samples - 1`` times (its blocks' reference counts go up, nothing is copied), and the
    samples decode side by side, copying a shared block only when they first write into it.

    Returns:
        tokens ``(num_samples, T + max_new_tokens)`` and the cache, whose ``blocks_in_use`` and
        ``copies_on_write`` say what sharing saved (without it: ``num_samples`` x the prompt's blocks).
    """
    _, T = _check_prompt(model, prompt, max_new_tokens, "prompt")
    if prompt.shape[0] != 1:
        raise shape_error("prompt", prompt, "(1, T): one prompt")
    require_int(num_samples, "num_samples")
    _check_sampling(temperature, top_k, top_p)
    total = T + max_new_tokens
    cache = model.new_cache("paged", batch_size=1, max_len=total, block_size=block_size,
                            num_blocks=num_samples * math.ceil(total / block_size))
    generator = _generator(seed, temperature, prompt.device)
    out = torch.empty(num_samples, total, dtype=torch.long, device=prompt.device)  # (N, T + new)
    out[:, :T] = prompt
    with _eval_mode(model):
        logits = model(prompt, cache, last_only=True)[:, -1]  # prefill once: (1, V)
        for _ in range(num_samples - 1):
            cache.fork(0)  # share the prompt's blocks: reference counts, no copies
        logits = logits.expand(num_samples, -1)  # (N, V): every sample starts from the same distribution
        for t in range(T, total):
            if t > T:
                logits = model(out[:, t - 1:t], cache, last_only=True)[:, -1]  # (N, V): decode the newest token
            out[:, t] = sample_next(logits, temperature, top_k, top_p, generator)
    return out, cache


# --------------------------------------------------------------------------- work


def generation_macs(t: int, config: GPTConfig, cached: bool = True) -> int:
    """Multiply-adds to produce the token that follows a context of ``t`` tokens (FLOPs ~ 2x).

    Per layer and per token: the projections ``D (H + 2 H_kv) d + D^2`` and the MLP ``8 D^2``;
    attention over ``s`` keys costs ``2 s D`` (scores and weighted sum). The output layer
    ``V D`` is paid once (only the last position's logits are needed).

    * with a cache: one token, attending over ``t`` keys:
      ``N (proj + 2 t D) + V D``  -- grows linearly in ``t`` only through attention;
    * without: all ``t`` tokens again, token ``s`` attending over ``s`` keys:
      ``N (t proj + 2 D t (t + 1) / 2) + V D``  -- quadratic in ``t``.
    """
    require_int(t, "t")
    D, d, N = config.n_embd, config.head_dim, config.n_layer
    proj = D * (config.n_head + 2 * config.n_kv_head) * d + D * D + 8 * D * D  # per token, per layer
    head = config.vocab_size * D
    if cached:
        return N * (proj + 2 * t * D) + head
    return N * (t * proj + D * t * (t + 1)) + head

