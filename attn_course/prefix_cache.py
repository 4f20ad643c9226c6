"""Prefix caching across requests: a radix tree of cached token prefixes (SGLang's RadixAttention).

Requests to a server share prefixes: every conversation with an assistant starts with the same
system prompt, and each turn of a conversation repeats all the turns before it. Keys and values
of a position depend only on the tokens up to it (causal attention), so a prefix computed for
one request can be reused, unchanged, by any later request that starts with the same tokens.

SGLang (Zheng et al. 2024) keeps every finished request's keys and values in a *radix tree*
(a compressed trie) keyed by token ids: each edge holds a run of tokens and their payload (here
a tensor with one row per token), the children of a node start with different tokens, and
a path from the root spells a cached prefix. A new request walks down the tree as far as its
tokens match (``match_prefix``), prefills only the rest, and when done inserts its whole
sequence (``insert``), which adds one leaf or extends one. Memory is bounded: when the tree
holds more than ``capacity`` tokens, the least recently used *leaves* that no in-flight
request holds (reference count 0; ``lock`` / ``unlock``) are evicted, and a parent whose last
child went becomes a leaf in turn.

Dimension glossary (see ``attn_course`` for the full one)::

    T  tokens of a prefix    N  layers    H_kv  key/value heads    d  head_dim

* ``RadixCache``        the tree: ``match_prefix``, ``insert``, ``lock``, ``unlock``, ``evict``.
* ``kv_rows``, ``cache_from_rows``   a ``DynamicCache``'s keys and values as one row per token
                        ``(T, N, 2, H_kv, d)`` and back: the payload the tree stores.
* ``generate_with_prefix_cache``     greedy generation that takes the longest cached prefix,
                        prefills the rest and inserts its sequence; its output equals
                        ``decoding.generate`` from scratch.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from attn_course._validation import require_int, require_tensor, shape_error
from attn_course.gpt import GPT
from attn_course.kv_cache import DynamicCache

__all__ = ["RadixNode", "PrefixMatch", "RadixCache", "kv_rows", "cache_from_rows", "PrefixStats",
           "generate_with_prefix_cache"]


@dataclass(eq=False)
class RadixNode:
    """A node of the tree: the edge from its parent (``key`` tokens and their ``value`` rows)."""

    key: tuple[int, ...]
    value: torch.Tensor | None  # (len(key), ...) one payload row per token, or None
    parent: RadixNode | None
    children: dict[int, RadixNode] = field(default_factory=dict)  # first token of the edge -> child
    ref_count: int = 0  # in-flight requests using this node (as part of their prefix)
    last_access: int = 0  # the tree's logical clock when the node was last matched or inserted

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass(frozen=True)
class PrefixMatch:
    """The longest cached prefix of a query: its ``length``, the ``node`` where it ends, the
    payload rows ``(length, ...)`` along the path (``None`` without payloads or a miss)."""

    length: int
    node: RadixNode
    value: torch.Tensor | None


def _check_tokens(tokens: Sequence[int], name: str = "tokens") -> tuple[int, ...]:
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 1:
            raise shape_error(name, tokens, "(T,) token ids")
        tokens = tokens.tolist()
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise TypeError(f"{name} must be a sequence of token ids, got {type(tokens).__name__}")
    out = tuple(tokens)
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in out):
        raise ValueError(f"{name} must hold token ids (integers >= 0), got {out[:8]!r}...")
    return out


def _common(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the common prefix of ``a`` and ``b``."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class RadixCache:
    """A radix tree of token prefixes with payload rows, LRU eviction of unreferenced leaves.

    Args:
        capacity: the most tokens the tree keeps (``None``: no limit). ``insert`` evicts down to it;
            prefixes locked by in-flight requests are never evicted, so while they exceed it the
            tree may hold more.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = None if capacity is None else require_int(capacity, "capacity")
        self.root = RadixNode((), None, None)
        self.root.ref_count = 1  # the root is never evicted
        self.size = 0  # tokens stored (the sum of the edges' lengths)
        self.evicted = 0  # tokens evicted so far
        self._clock = itertools.count(1)

    # --- structure
    def _touch(self, node: RadixNode) -> None:
        node.last_access = next(self._clock)

    def _split(self, child: RadixNode, at: int) -> RadixNode:
        """Cut ``child``'s edge after ``at`` tokens: a new node for the first part; returns it."""
        parent = child.parent
        head = RadixNode(child.key[:at], None if child.value is None else child.value[:at], parent,
                         ref_count=child.ref_count, last_access=child.last_access)
        parent.children[head.key[0]] = head
        child.key = child.key[at:]
        child.value = None if child.value is None else child.value[at:]
        child.parent = head
        head.children[child.key[0]] = child
        return head

    def match_prefix(self, tokens: Sequence[int]) -> PrefixMatch:
        """The longest cached prefix of ``tokens``; an edge matched part-way is split, so the match
        ends on a node (which ``lock`` can then hold). Marks the path as used now."""
        tokens = _check_tokens(tokens)
        node, i, values = self.root, 0, []
        while i < len(tokens) and tokens[i] in node.children:
            child = node.children[tokens[i]]
            n = _common(child.key, tokens[i:])
            if n < len(child.key):
                child = self._split(child, n)
            node, i = child, i + n
            self._touch(node)
            if node.value is not None:
                values.append(node.value)
        value = torch.cat(values) if values and len(values) == self._depth(node) else None
        return PrefixMatch(i, node, value)

    def _depth(self, node: RadixNode) -> int:
        d = 0
        while node.parent is not None:
            node, d = node.parent, d + 1
        return d

    def insert(self, tokens: Sequence[int], value: torch.Tensor | None = None) -> int:
        """Store ``tokens`` (and ``value``, one row per token); return how many tokens were new.

        The part already in the tree is kept as it is (the same tokens have the same keys and
        values); the rest becomes one new leaf. Then evicts down to ``capacity``.
        """
        tokens = _check_tokens(tokens)
        if value is not None:
            require_tensor(value, "value")
            if value.dim() < 1 or value.shape[0] != len(tokens):
                raise shape_error("value", value, f"({len(tokens)}, ...): one row per token")
        node, i = self.root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                leaf = RadixNode(tokens[i:], None if value is None else value[i:], node)
                node.children[tokens[i]] = leaf
                self._touch(leaf)
                self.size += len(leaf.key)
                break
            n = _common(child.key, tokens[i:])
            if n < len(child.key):
                child = self._split(child, n)
            node, i = child, i + n
            self._touch(node)
        else:
            leaf = None
        new = 0 if leaf is None else len(leaf.key)
        if self.capacity is not None and self.size > self.capacity:
            self.evict(self.size - self.capacity)
        return new

    # --- references
    def lock(self, node: RadixNode) -> None:
        """An in-flight request uses the prefix ending at ``node``: it and its ancestors stay."""
        while node is not None and node is not self.root:
            node.ref_count += 1
            node = node.parent

    def unlock(self, node: RadixNode) -> None:
        """The request holding ``node`` (``lock``) is done with it."""
        path = []
        while node is not None and node is not self.root:
            if node.ref_count <= 0:
                raise ValueError("unlock without a matching lock: a node's reference count would go below 0")
            path.append(node)
            node = node.parent
        for n in path:
            n.ref_count -= 1

    # --- eviction
    def evict(self, num_tokens: int) -> int:
        """Evict least recently used unreferenced leaves until ``num_tokens`` tokens are gone (or
        nothing more can go); returns the tokens evicted."""
        require_int(num_tokens, "num_tokens", minimum=0)
        heap = [(n.last_access, id(n), n) for n in self.nodes() if n.is_leaf and n.ref_count == 0]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            freed += len(leaf.key)
            if parent is not self.root and parent.is_leaf and parent.ref_count == 0:
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        self.size -= freed
        self.evicted += freed
        return freed

    # --- inspection
    def nodes(self) -> list[RadixNode]:
        """Every node but the root, parents before children (depth first, children by first token)."""
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            if node is not self.root:
                out.append(node)
            stack.extend(node.children[k] for k in sorted(node.children, reverse=True))
        return out

    def prefixes(self) -> list[tuple[int, ...]]:
        """The token sequences the leaves spell (every cached sequence that is not a prefix of another)."""
        out = []

        def walk(node: RadixNode, prefix: tuple[int, ...]) -> None:
            prefix = prefix + node.key
            if node.is_leaf and node is not self.root:
                out.append(prefix)
            for k in sorted(node.children):
                walk(node.children[k], prefix)

        walk(self.root, ())
        return out

    def __repr__(self) -> str:
        return f"RadixCache(size={self.size}, capacity={self.capacity}, nodes={len(self.nodes())})"


# --------------------------------------------------------------------------- with a model


def kv_rows(cache: DynamicCache) -> torch.Tensor:
    """A batch-1 ``DynamicCache``'s keys and values as one row per position: ``(T, N, 2, H_kv, d)``."""
    if not isinstance(cache, DynamicCache):
        raise TypeError(f"cache must be a DynamicCache, got {type(cache).__name__}")
    if cache.seq_len == 0 or cache.keys[0].shape[0] != 1:
        raise ValueError("cache must hold at least one position of one sequence (batch 1)")
    per_layer = [torch.stack([k[0], v[0]]) for k, v in zip(cache.keys, cache.values)]  # (2, H_kv, T, d) each
    return torch.stack(per_layer).permute(3, 0, 1, 2, 4).contiguous()  # (N, 2, H_kv, T, d) -> (T, N, 2, H_kv, d)


def cache_from_rows(rows: torch.Tensor, model: GPT) -> DynamicCache:
    """A ``DynamicCache`` holding the positions ``rows (T, N, 2, H_kv, d)`` (from ``kv_rows``) for ``model``."""
    cfg = model.config
    require_tensor(rows, "rows")
    if rows.dim() != 5 or rows.shape[1:] != (cfg.n_layer, 2, cfg.n_kv_head, cfg.head_dim):
        raise shape_error("rows", rows, f"(T, {cfg.n_layer}, 2, {cfg.n_kv_head}, {cfg.head_dim}) = (T, N, 2, H_kv, d)")
    cache = DynamicCache(cfg.n_layer, cfg.n_kv_head, cfg.head_dim)
    kv = rows.permute(1, 2, 3, 0, 4)  # (N, 2, H_kv, T, d)
    for layer in range(cfg.n_layer):
        cache.update(layer, kv[layer, 0][None], kv[layer, 1][None])  # (1, H_kv, T, d) each
    return cache


@dataclass(frozen=True)
class PrefixStats:
    """What one request took from the tree: prompt tokens ``matched`` and ``computed`` (prefilled)."""

    prompt_tokens: int
    matched: int
    computed: int
    inserted: int  # tokens the request added to the tree


@torch.no_grad()
def generate_with_prefix_cache(model: GPT, tree: RadixCache, prompt: Sequence[int],
                               max_new_tokens: int) -> tuple[tuple[int, ...], PrefixStats]:
    """Greedy generation that reuses the longest cached prefix of ``prompt``; returns the new tokens.

    The match stops one token short of the prompt (the last prompt token must be fed to get the
    next token's logits); the prefix is locked while the request runs; at the end the whole
    sequence that went through the model (prompt and every generated token but the last) is
    inserted with its keys and values.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    if not isinstance(tree, RadixCache):
        raise TypeError(f"tree must be a RadixCache, got {type(tree).__name__}")
    prompt = _check_tokens(prompt, "prompt")
    if not prompt:
        raise ValueError("prompt must have at least one token")
    require_int(max_new_tokens, "max_new_tokens")
    cfg = model.config
    if max(prompt) >= cfg.vocab_size:
        raise ValueError(f"prompt has a token id >= vocab_size = {cfg.vocab_size}")
    if len(prompt) + max_new_tokens > cfg.context_length:
        raise ValueError(f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceeds context_length = "
                         f"{cfg.context_length}")
    device = model.wte.weight.device
    match = tree.match_prefix(prompt[:-1])
    if match.length and match.value is None:
        raise ValueError("the tree's prefixes carry no keys and values (insert them with value=kv_rows(...))")
    tree.lock(match.node)
    was_training = model.training
    model.eval()
    try:
        cache = (cache_from_rows(match.value.to(device), model) if match.length
                 else DynamicCache(cfg.n_layer, cfg.n_kv_head, cfg.head_dim))
        seq = list(prompt)
        feed = torch.tensor([prompt[match.length:]], device=device)  # (1, T - matched): what is not cached
        for _ in range(max_new_tokens):
            logits = model(feed, cache, last_only=True)[:, -1]  # (1, V)
            seq.append(int(logits.argmax(-1)))
            feed = torch.tensor([[seq[-1]]], device=device)
    finally:
        model.train(was_training)
        tree.unlock(match.node)
    inserted = tree.insert(seq[:cache.seq_len], kv_rows(cache).cpu())
    stats = PrefixStats(len(prompt), match.length, len(prompt) - match.length, inserted)
    return tuple(seq[len(prompt):]), stats
