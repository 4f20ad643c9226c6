"""Key/value caches for autoregressive decoding, and the arithmetic of their memory.

When a decoder generates token ``t`` it needs the keys and values of every earlier token in
every layer. They never change (causal attention: position ``j`` never sees later tokens), so
a cache keeps them and each step computes K and V for the *one* new token only.

Dimension glossary (see ``attn_course`` for the full one)::

    B      batch size (number of sequences)      N   number of layers
    H_kv   key/value heads (H_kv divides H; grouped-query attention, see ``attn_course.gqa``)
    T      new tokens in this call (the prompt at prefill, 1 when decoding)
    S      keys returned by ``update`` (what the new queries attend over)
    d      head_dim                               W   sliding window, P  block (page) size

Every cache has the same small interface, used by ``attn_course.gpt.GPT``::

    k_all, v_all = cache.update(layer, k, v)   # k, v (B, H_kv, T, d) -> (B, H_kv, S, d)
    cache.seq_len                              # positions stored so far (all layers)
    cache.key_positions(T)                     # (S,) absolute position of each returned key
    cache.reset()                              # forget everything, keep the memory
    cache.allocated_bytes()                    # bytes of K/V storage this object holds
    cache.window, cache.capacity               # what a model must respect (None: no limit)

A cache says what it needs through ``window`` (keys older than ``window`` positions are gone,
so the model must mask them too) and ``capacity`` (positions per sequence it can ever hold);
the model never asks which kind of cache it was given.

Layers are updated in order ``0 .. N-1`` once per forward pass; ``seq_len`` advances when the
last layer has been updated. The returned keys are always the *last* ``S`` positions
``seq_len - S .. seq_len - 1`` (after the update), but not always in that order: the ring
buffer returns them in slot order, so the model builds its mask from ``key_positions``.

* ``DynamicCache``        grows with ``torch.cat`` (simple; reallocates every step).
* ``StaticCache``         preallocated ``(B, H_kv, max_len, d)`` buffers written in place.
* ``SlidingWindowCache``  a ring buffer of the last ``W`` positions; equals a full cache plus a
                          sliding-window mask (the rolling buffer cache of Mistral 7B, Jiang et al.
                          2023; sliding-window attention itself is Longformer's, Beltagy et al. 2020).
                          ``W`` counts the keys a query sees, itself included.
* ``PagedCache``          fixed-size blocks from a shared pool and a block table per sequence,
                          as in vLLM (Kwon et al. 2023); ``fork`` shares a prompt's blocks
                          between sequences with reference counts, copy-on-write on append.

``kv_cache_bytes`` is the formula ``2 x layers x kv_heads x head_dim x tokens x batch x bytes``
(2 = one K and one V), and ``PUBLISHED_SHAPES`` has the shapes of real models to plug into it.
(What contiguous preallocation wastes against paging, on simulated requests, is chapter 16's
experiment: ``attn_course.labs.cache_shrinking.simulate_paging``.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from attn_course._validation import fmt_shape, require_floating, require_int, shape_error

__all__ = [
    "KVCache",
    "DynamicCache",
    "StaticCache",
    "SlidingWindowCache",
    "PagedCache",
    "kv_cache_bytes",
    "ModelShape",
    "PUBLISHED_SHAPES",
    "published_shapes",
]


# --------------------------------------------------------------------------- the formula


def kv_cache_bytes(
    num_layers: int, num_kv_heads: int, head_dim: int, tokens: int, batch: int = 1, dtype_bytes: int = 2
) -> int:
    """Bytes to cache keys and values: ``2 x layers x kv_heads x head_dim x tokens x batch x bytes``.

    The 2 is one key and one value vector per head, per layer, per token. ``dtype_bytes`` = 2
    for float16/bfloat16 (the usual serving dtype), 4 for float32.
    """
    for name, value in [("num_layers", num_layers), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim),
                        ("batch", batch), ("dtype_bytes", dtype_bytes)]:
        require_int(value, name)
    require_int(tokens, "tokens", minimum=0)
    return 2 * num_layers * num_kv_heads * head_dim * tokens * batch * dtype_bytes


@dataclass(frozen=True)
class ModelShape:
    """The shape of a published decoder, as far as its KV cache is concerned."""

    name: str
    num_layers: int
    num_heads: int
    num_kv_heads: int  # = num_heads without grouped-query attention
    head_dim: int
    d_model: int
    context_length: int
    params: float  # parameter count, for comparing cache and weight memory

    def kv_bytes(self, tokens: int, batch: int = 1, dtype_bytes: int = 2) -> int:
        """``kv_cache_bytes`` for this model."""
        return kv_cache_bytes(self.num_layers, self.num_kv_heads, self.head_dim, tokens, batch, dtype_bytes)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return self.kv_bytes(1, 1, dtype_bytes)


# Published configurations: GPT-2 small (Radford et al. 2019, the released config.json);
# Llama 3 8B and 70B (Meta's model cards / config.json: GQA with 8 KV heads).
PUBLISHED_SHAPES: dict[str, ModelShape] = {
    "gpt2": ModelShape("GPT-2 small", 12, 12, 12, 64, 768, 1024, 124e6),
    "llama3-8b": ModelShape("Llama-3-8B", 32, 32, 8, 128, 4096, 8192, 8.0e9),
    "llama3-70b": ModelShape("Llama-3-70B", 80, 64, 8, 128, 8192, 8192, 70.6e9),
}


def published_shapes() -> dict[str, ModelShape]:
    """A copy of ``PUBLISHED_SHAPES`` (GPT-2 small, Llama-3-8B, Llama-3-70B)."""
    return dict(PUBLISHED_SHAPES)


# --------------------------------------------------------------------------- the interface


class KVCache(ABC):
    """Keys and values of past tokens, for every layer. See the module docstring for the protocol.

    Args:
        num_layers: N.  num_kv_heads: H_kv.  head_dim: d.
        dtype, device: of the stored tensors (``DynamicCache`` takes them from the first update).
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.num_layers = require_int(num_layers, "num_layers")
        self.num_kv_heads = require_int(num_kv_heads, "num_kv_heads")
        self.head_dim = require_int(head_dim, "head_dim")
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self._lengths = [0] * self.num_layers  # positions stored per layer

    # --- what subclasses implement
    @abstractmethod
    def _store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v (B, H_kv, T, d)`` after ``self._lengths[layer]`` positions; return the keys to attend."""

    @abstractmethod
    def allocated_bytes(self) -> int:
        """Bytes of key/value storage this object holds right now (compare with ``kv_cache_bytes``)."""

    #: A sliding window the model must apply (the cache forgets older keys); None: keeps every key.
    window: int | None = None

    @property
    def capacity(self) -> int | None:
        """Positions per sequence this cache can hold; ``None``: it grows (or pages) as needed."""
        return None

    def num_keys(self, num_new: int) -> int:
        """How many keys ``update`` will return when ``num_new`` tokens are added."""
        return self.seq_len + num_new

    def key_positions(self, num_new: int) -> torch.Tensor:
        """Absolute positions ``(S,)`` of the keys ``update`` will return for ``num_new`` new tokens."""
        end = self.seq_len + num_new
        return torch.arange(end - self.num_keys(num_new), end, device=self.device)

    # --- shared behaviour
    @property
    def seq_len(self) -> int:
        """Positions stored (the length after the last completed forward pass)."""
        return self._lengths[-1]

    @property
    def batch_size(self) -> int | None:
        """The batch this cache was built for; ``None``: any (it takes it from the first update)."""
        return None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k, v (B, H_kv, T, d)`` for ``layer``; return all keys/values to attend, ``(B, H_kv, S, d)``."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be in [0, {self.num_layers}), got {layer!r}")
        require_floating(k, "k")
        require_floating(v, "v")
        if k.dim() != 4 or k.shape[1] != self.num_kv_heads or k.shape[3] != self.head_dim:
            raise shape_error("k", k, f"(B, {self.num_kv_heads}, T, {self.head_dim}) = (B, H_kv, T, d)")
        if v.shape != k.shape:
            raise shape_error("v", v, f"{fmt_shape(k.shape)}, the shape of k")
        if self.batch_size is not None and k.shape[0] != self.batch_size:
            raise shape_error("k", k, f"batch size {self.batch_size}, the batch this cache was built for")
        # Layer 0 starts a pass (every layer has the same length); layer i follows layer i - 1.
        expected = self._lengths[-1] if layer == 0 else self._lengths[layer - 1] - k.shape[2]
        if self._lengths[layer] != expected:
            raise ValueError(f"layers must be updated in order 0..{self.num_layers - 1} with the same "
                             f"number of new tokens; layer {layer} came out of turn")
        out = self._store(layer, k, v)
        self._lengths[layer] += k.shape[2]
        return out

    def reset(self) -> None:
        """Forget every position (storage is kept, so a static cache can be reused)."""
        self._lengths = [0] * self.num_layers

    def check_compatible(self, num_layers: int, num_kv_heads: int, head_dim: int, name: str = "cache") -> None:
        """Raise if this cache was built for another model shape."""
        got = (self.num_layers, self.num_kv_heads, self.head_dim)
        want = (num_layers, num_kv_heads, head_dim)
        if got != want:
            raise ValueError(
                f"{name} was built for (layers, kv heads, head_dim) = {got}; this model has {want}"
            )

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(layers={self.num_layers}, kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, seq_len={self.seq_len})")


# --------------------------------------------------------------------------- dynamic


class DynamicCache(KVCache):
    """Grows by concatenation: ``K = cat(K, k_new)``. Simple, but every step copies the whole cache."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__(num_layers, num_kv_heads, head_dim)
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def _store(self, layer, k, v):
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = k, v
            self.dtype, self.device = k.dtype, k.device
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)  # (B, H_kv, S, d)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]

    def reset(self) -> None:
        super().reset()
        self.keys = [None] * self.num_layers
        self.values = [None] * self.num_layers

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on (speculative decoding drops rejected drafts)."""
        require_int(length, "length", minimum=0, maximum=self.seq_len)
        for layer in range(self.num_layers):
            if self.keys[layer] is not None:
                self.keys[layer] = self.keys[layer][:, :, :length]  # (B, H_kv, length, d)
                self.values[layer] = self.values[layer][:, :, :length]
        self._lengths = [length] * self.num_layers

    def allocated_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


# --------------------------------------------------------------------------- static


class _BufferCache(KVCache):
    """Zeroed ``(B, H_kv, slots, d)`` key and value buffers per layer, allocated once (static and ring caches)."""

    def __init__(self, num_layers, num_kv_heads, head_dim, batch_size, slots, dtype, device) -> None:
        super().__init__(num_layers, num_kv_heads, head_dim, dtype, device)
        self._batch = require_int(batch_size, "batch_size")
        shape = (batch_size, num_kv_heads, slots, head_dim)  # (B, H_kv, slots, d)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @property
    def batch_size(self) -> int:
        return self._batch

    def allocated_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


class StaticCache(_BufferCache):
    """Preallocated ``(B, H_kv, max_len, d)`` buffers per layer, written in place.

    No allocation while decoding: step ``t`` copies one key and one value into slot ``t``
    and attends over the view ``buffer[:, :, :t + 1]``.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        batch_size: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        self.max_len = require_int(max_len, "max_len")
        super().__init__(num_layers, num_kv_heads, head_dim, batch_size, max_len, dtype, device)

    @property
    def capacity(self) -> int:
        return self.max_len

    def _store(self, layer, k, v):
        start, end = self._lengths[layer], self._lengths[layer] + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"StaticCache is full: {end} positions needed, max_len = {self.max_len}")
        self.keys[layer][:, :, start:end].copy_(k)  # in place: no new memory
        self.values[layer][:, :, start:end].copy_(v)
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]  # views (B, H_kv, S, d)


# --------------------------------------------------------------------------- sliding window


class SlidingWindowCache(_BufferCache):
    """A ring buffer holding the last ``window`` positions: position ``p`` lives in slot ``p % W``.

    Memory is ``O(W)`` however long the generation. Attending over it equals attending over a
    full cache with a sliding-window mask: ``W`` is the number of keys a query sees, itself
    included (query ``p`` sees keys ``p - W + 1 .. p``), as ``GPTConfig.sliding_window``. This is
    Mistral 7B's rolling buffer cache (Jiang et al. 2023).

    While decoding (one new token, ring full) ``update`` returns the whole ring in *slot* order;
    ``key_positions`` says which position each slot holds. A prompt longer than the free space
    is attended in full (older keys + the new ones, in order) and only its last ``W`` positions
    are kept.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        batch_size: int,
        window: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        self.window = require_int(window, "window")
        super().__init__(num_layers, num_kv_heads, head_dim, batch_size, window, dtype, device)

    def num_keys(self, num_new: int) -> int:
        past, W = self.seq_len, self.window
        if past + num_new <= W or num_new == 1:
            return min(past + num_new, W)
        return min(past, W) + num_new  # the old keys still in the ring, then every new one

    def key_positions(self, num_new: int) -> torch.Tensor:
        past, W = self.seq_len, self.window
        end = past + num_new
        if past + num_new > W and num_new == 1:
            slots = torch.arange(W, device=self.device)
            return end - 1 - (end - 1 - slots) % W  # (W,): the position held by each slot
        return torch.arange(end - self.num_keys(num_new), end, device=self.device)

    def _chronological(self, t: torch.Tensor, past: int) -> torch.Tensor:
        """The ring's valid slots oldest first: ``(B, H_kv, min(past, W), d)``."""
        W = self.window
        if past <= W:
            return t[:, :, :past]
        start = past % W  # the slot of the oldest kept position
        return torch.cat([t[:, :, start:], t[:, :, :start]], dim=2)

    def _store(self, layer, k, v):
        past, W, T = self._lengths[layer], self.window, k.shape[2]
        K, V = self.keys[layer], self.values[layer]
        if past + T <= W:  # still filling: plain in-place append
            K[:, :, past:past + T].copy_(k)
            V[:, :, past:past + T].copy_(v)
            return K[:, :, :past + T], V[:, :, :past + T]
        if T == 1:  # decoding with a full ring: overwrite the oldest slot
            K[:, :, past % W:past % W + 1].copy_(k)
            V[:, :, past % W:past % W + 1].copy_(v)
            return K, V  # (B, H_kv, W, d), slot order
        # A long chunk: its queries need the old keys and all new ones; keep the last W.
        k_all = torch.cat([self._chronological(K, past), k], dim=2)  # (B, H_kv, S, d), oldest first
        v_all = torch.cat([self._chronological(V, past), v], dim=2)
        end = past + T
        slots = torch.arange(end - W, end, device=K.device) % W  # where the last W positions go
        K[:, :, slots] = k_all[:, :, -W:]
        V[:, :, slots] = v_all[:, :, -W:]
        return k_all, v_all


# --------------------------------------------------------------------------- paged


class PagedCache(KVCache):
    """Fixed-size blocks from a shared pool, a block table per sequence (vLLM's PagedAttention).

    Storage per layer is a pool ``(num_blocks, P, H_kv, d)``. Sequence ``b``'s position ``p``
    lives in block ``block_tables[b][p // P]`` at offset ``p % P``; blocks are taken from a free
    list only when a sequence crosses into a new block, so at most ``P - 1`` slots per sequence
    are wasted (against up to ``max_len - length`` for a contiguous preallocation).

    Prefix sharing: ``fork(b)`` adds a sequence whose block table is a copy of ``b``'s; the
    blocks are shared and their reference counts go up. When a sequence appends into a shared,
    partly filled block, that block is copied first (copy-on-write); full shared blocks are
    never written again, so they stay shared.

    Block bookkeeping happens on layer 0's update; every layer uses the same block ids.
    (Attention here gathers each sequence's keys into a contiguous tensor -- the real
    PagedAttention kernel reads the blocks in place.)
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        batch_size: int = 1,
        block_size: int = 16,
        num_blocks: int = 64,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(num_layers, num_kv_heads, head_dim, dtype, device)
        self.block_size = require_int(block_size, "block_size")
        self.num_blocks = require_int(num_blocks, "num_blocks")
        require_int(batch_size, "batch_size")
        shape = (num_blocks, block_size, num_kv_heads, head_dim)  # (num_blocks, P, H_kv, d)
        self.key_pool = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.value_pool = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.ref_counts = [0] * num_blocks
        self.free_blocks = list(range(num_blocks - 1, -1, -1))  # a stack: pop() gives block 0 first
        self.initial_batch_size = batch_size
        self.block_tables: list[list[int]] = [[] for _ in range(batch_size)]
        self.copies_on_write = 0  # how many shared blocks were copied before an append

    @property
    def batch_size(self) -> int:
        return len(self.block_tables)  # grows with fork

    # --- block bookkeeping
    def _allocate(self) -> int:
        if not self.free_blocks:
            raise RuntimeError(f"PagedCache is out of blocks: all {self.num_blocks} are in use "
                               f"(raise num_blocks)")
        block = self.free_blocks.pop()
        self.ref_counts[block] = 1
        return block

    def _release(self, block: int) -> None:
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self.free_blocks.append(block)

    @property
    def blocks_in_use(self) -> int:
        return self.num_blocks - len(self.free_blocks)

    def fork(self, seq: int = 0) -> int:
        """Add a sequence that shares all of sequence ``seq``'s blocks (its prompt); return its index."""
        if not 0 <= seq < self.batch_size:
            raise ValueError(f"seq must be in [0, {self.batch_size}), got {seq!r}")
        table = list(self.block_tables[seq])
        for block in table:
            self.ref_counts[block] += 1
        self.block_tables.append(table)
        return self.batch_size - 1

    def _prepare_append(self, num_new: int) -> None:
        """Before writing ``num_new`` positions: copy shared partial blocks, allocate new ones."""
        P, start = self.block_size, self.seq_len
        for table in self.block_tables:
            if start % P and self.ref_counts[table[-1]] > 1:  # appending into a shared block
                old, new = table[-1], self._allocate()
                for pool in self.key_pool + self.value_pool:
                    pool[new].copy_(pool[old])
                self._release(old)
                table[-1] = new
                self.copies_on_write += 1
            while len(table) * P < start + num_new:
                table.append(self._allocate())

    def _slots(self, start: int, end: int) -> torch.Tensor:
        """Flat pool indices ``(B, end - start)`` of positions ``start .. end - 1`` of every sequence.

        Address translation, as an operating system's page table does it: position ``p`` of
        sequence ``b`` is offset ``p % P`` in the ``p // P``-th block of its table, and in the pool
        seen flat, ``(num_blocks * P, H_kv, d)``, that is row ``block_tables[b][p // P] * P + p % P``.
        """
        P = self.block_size
        pos = torch.arange(start, end)  # (T,) positions, the same for every sequence
        tables = torch.tensor(self.block_tables, dtype=torch.long)  # (B, blocks per sequence)
        # tables[:, pos // P] is (B, T): the physical block of each position; * P + offset -> flat row
        return (tables[:, pos // P] * P + pos % P).to(self.key_pool[0].device)  # (B, T)

    def _store(self, layer, k, v):
        B, _, T, _ = k.shape
        start = self._lengths[layer]
        if layer == 0:
            self._prepare_append(T)
        write = self._slots(start, start + T).reshape(-1)  # (B*T,)
        flat_k = self.key_pool[layer].view(-1, self.num_kv_heads, self.head_dim)  # (num_blocks*P, H_kv, d)
        flat_v = self.value_pool[layer].view(-1, self.num_kv_heads, self.head_dim)
        flat_k.index_copy_(0, write, k.transpose(1, 2).reshape(B * T, self.num_kv_heads, self.head_dim))
        flat_v.index_copy_(0, write, v.transpose(1, 2).reshape(B * T, self.num_kv_heads, self.head_dim))
        read = self._slots(0, start + T)  # (B, S)
        k_all = flat_k[read].transpose(1, 2)  # (B, S, H_kv, d) -> (B, H_kv, S, d)
        v_all = flat_v[read].transpose(1, 2)
        return k_all, v_all

    def reset(self) -> None:
        """Free every block and drop forked sequences: ``initial_batch_size`` empty sequences remain."""
        super().reset()
        self.block_tables = [[] for _ in range(self.initial_batch_size)]
        self.ref_counts = [0] * self.num_blocks
        self.free_blocks = list(range(self.num_blocks - 1, -1, -1))

    def allocated_bytes(self) -> int:
        """The whole pool (what was reserved); ``used_bytes`` counts the blocks in use."""
        return sum(t.numel() * t.element_size() for t in self.key_pool + self.value_pool)

    def used_bytes(self) -> int:
        per_block = 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim
        return self.blocks_in_use * per_block * self.key_pool[0].element_size()
