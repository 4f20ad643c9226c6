"""Chapter 16's experiment (shrinking the cache): cache sizes, fewer key/value heads, windows, paging.

Measurements the chapter makes, measured in the page that prints them:

* ``cache_table``            ``kv_cache_bytes`` for published model shapes.
* ``train_kv_head_variants`` the bracket GPT trained with several numbers of key/value heads.
* ``time_kv_head_decode``    decode tokens/s of MHA, GQA and MQA shapes over a long cache.
* ``influence_by_distance``  how much the last prediction moves when one earlier token changes:
                             how far back a sliding-window model can see.
* ``simulate_paging``, ``plot_paging``   slots reserved for simulated requests: contiguous, paged,
                             shared prefix.
* ``trace_ring_buffer``, ``trace_forked_paging``   step-by-step snapshots of a real
                             ``SlidingWindowCache`` / ``PagedCache`` (what the chapter's slider
                             figures draw).

Shapes: token batches ``(B, T)``; sizes in bytes unless a name says otherwise.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from attn_course._validation import require_int
from attn_course.gpt import GPT, GPTConfig
from attn_course.kv_cache import ModelShape, PagedCache, SlidingWindowCache, StaticCache, kv_cache_bytes
from attn_course.labs.bracket_language import (
    BracketTask,
    default_model_config,
    sample_sentences,
    train_bracket_model,
)
from attn_course.labs.kv_cache_costs import weight_bytes

__all__ = [
    "PagingStats",
    "simulate_paging",
    "cache_table",
    "train_kv_head_variants",
    "time_kv_head_decode",
    "influence_by_distance",
    "plot_paging",
    "RingStep",
    "trace_ring_buffer",
    "PagingStep",
    "trace_forked_paging",
]


# --------------------------------------------------------------------------- memory


def cache_table(shapes: dict[str, ModelShape], tokens: int, batch: int = 1, dtype_bytes: int = 2) -> list[dict]:
    """One row per model: bytes per token, the cache for ``tokens x batch``, and the weights' bytes."""
    rows = []
    for key, s in shapes.items():
        rows.append({
            "key": key, "name": s.name, "layers": s.num_layers, "heads": s.num_heads, "kv_heads": s.num_kv_heads,
            "head_dim": s.head_dim, "per_token": s.kv_bytes_per_token(dtype_bytes),
            "cache": s.kv_bytes(tokens, batch, dtype_bytes), "weights": int(s.params * dtype_bytes),
        })
    return rows


def train_kv_head_variants(task: BracketTask, kv_heads: Iterable[int], *, n_head: int = 4, steps: int = 600,
                           samples: int = 300, seed: int = 0, progress: bool = True) -> dict[int, dict]:
    """The bracket GPT with ``n_head`` query heads and each number of key/value heads in ``kv_heads``.

    Each model starts from the default shape (``default_model_config``) with ``n_head`` heads and
    ``n_kv_head = h``, trains for ``steps`` steps, and samples ``samples`` sentences at
    temperature 1. Returns ``{h: {"model", "loss" (mean of the last 50 steps), "valid",
    "kv_bytes_per_token", "parameters"}}``.
    """
    out = {}
    for h in kv_heads:
        base = default_model_config(task)
        config = GPTConfig(vocab_size=base.vocab_size, context_length=base.context_length, n_layer=base.n_layer,
                           n_head=n_head, n_kv_head=h, n_embd=base.n_embd)
        model, history = train_bracket_model(task, config, steps=steps, seed=seed, progress=progress)
        model.eval()
        report = sample_sentences(model, task, samples, temperature=1.0, seed=seed)
        out[h] = {"model": model, "loss": sum(history.losses[-50:]) / 50, "valid": report.valid_fraction,
                  "kv_bytes_per_token": kv_cache_bytes(config.n_layer, h, config.head_dim, 1, dtype_bytes=4),
                  "parameters": model.num_parameters()}
    return out


def time_kv_head_decode(kv_heads: Iterable[int], *, n_head: int = 8, n_embd: int = 256, n_layer: int = 1,
                        batch: int = 16, context: int = 1024, steps: int = 16, repeat: int = 3,
                        seed: int = 0) -> dict[int, dict]:
    """Decode speed of the same model shape with each number of key/value heads in ``kv_heads``.

    A decode step reads every weight once and every sequence's whole cache; with a long context
    and a batch the cache dominates, and it is ``H / H_kv`` times smaller with fewer KV heads.
    For each ``h``: an untrained ``GPT`` (speed does not depend on the weights' values) with
    ``n_kv_head = h``, a ``StaticCache`` filled with ``context`` random positions per sequence
    through its public ``update`` (no prefill to pay for), then ``steps`` decode steps of
    ``batch`` tokens, timed; best of ``repeat``, the variants interleaved so that a change in the
    machine's load hits them alike. Returns ``{h: {"tokens_per_s", "cache_bytes" (what a step
    reads from the cache, float32), "weight_bytes"}}``.
    """
    kv_heads = [require_int(h, "kv_heads") for h in kv_heads]
    for name, value in (("batch", batch), ("context", context), ("steps", steps), ("repeat", repeat)):
        require_int(value, name)
    gen = torch.Generator().manual_seed(seed)
    runs = {}
    for h in kv_heads:
        torch.manual_seed(seed)
        config = GPTConfig(vocab_size=64, context_length=context + steps, n_layer=n_layer, n_head=n_head,
                           n_kv_head=h, n_embd=n_embd)
        model = GPT(config).eval()
        cache = StaticCache(n_layer, h, config.head_dim, batch_size=batch, max_len=context + steps)
        past = [(torch.randn(batch, h, context, config.head_dim, generator=gen),  # (B, H_kv, context, d)
                 torch.randn(batch, h, context, config.head_dim, generator=gen)) for _ in range(n_layer)]
        runs[h] = (model, cache, past, config)
    tokens = torch.randint(0, 64, (batch, 1), generator=gen)  # (B, 1): the token each step feeds

    def decode(h: int) -> float:
        model, cache, past, _ = runs[h]
        cache.reset()
        for layer, (k, v) in enumerate(past):
            cache.update(layer, k, v)  # the context, as a prefill would have left it
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(steps):
                model(tokens, cache, last_only=True)  # one new token per sequence, over the whole cache
        return time.perf_counter() - start

    best = {h: float("inf") for h in kv_heads}
    for h in kv_heads:
        decode(h)  # warm-up
    for _ in range(repeat):
        for h in kv_heads:
            best[h] = min(best[h], decode(h))
    return {h: {"tokens_per_s": batch * steps / best[h],
                "cache_bytes": kv_cache_bytes(n_layer, h, runs[h][3].head_dim, context, batch, dtype_bytes=4),
                "weight_bytes": weight_bytes(runs[h][3])} for h in kv_heads}


def influence_by_distance(model: GPT, length: int, seed: int = 0) -> torch.Tensor:
    """How far back the last position's prediction can see: ``(length,)``, entry ``j`` is the largest
    change of the last position's logits when the token ``j`` positions back is replaced.

    One batch: row 0 is a random sequence of ``length`` tokens, row ``1 + q`` the same with token
    ``q`` changed. Entry 0 is the last token itself. With a sliding window ``W`` (keys ``p - W + 1
    .. p``) and ``N`` layers, entries beyond ``N (W - 1)`` are zero: nothing there can reach.
    """
    T = require_int(length, "length", 2, model.config.context_length)
    V = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, V, (1, T), generator=gen)  # (1, T)
    batch = idx.repeat(T + 1, 1)  # (1 + T, T)
    rows = torch.arange(T)
    batch[1 + rows, rows] = (idx[0] + 1) % V  # row 1 + q: token q replaced
    with torch.no_grad():
        last = model(batch, last_only=True)[:, -1]  # (1 + T, V)
    change = (last[1:] - last[:1]).abs().amax(dim=-1)  # (T,): by position q
    return change.flip(0)  # (T,): by distance back, T - 1 - q


def plot_paging(max_len: int = 2048, block_sizes: Sequence[int] = (8, 16, 32, 64, 128),
                num_requests: int = 200, seed: int = 0, ax=None):
    """Fraction of reserved KV memory that holds nothing: contiguous (max_len per request) vs paged.

    Returns ``(ax, {block_size: PagingStats})``.
    """
    from attn_course.plotting import finish_axes, new_axes

    stats = {b: simulate_paging(num_requests, max_len, b, seed=seed) for b in block_sizes}
    ax = new_axes(ax)
    xs = list(block_sizes)
    ax.plot(xs, [stats[b].paged_waste for b in xs], marker="o", label="paged: blocks of this size")
    ax.axhline(stats[xs[0]].contiguous_waste, color="C3", linestyle="--",
               label=f"contiguous: max_len = {max_len} reserved per request")
    ax.set_xscale("log", base=2)
    finish_axes(ax, xlabel="block size (tokens)", ylabel="fraction of reserved slots unused",
                title=f"{num_requests} requests, lengths uniform up to {max_len}", ylim=(0, 1))
    return ax, stats


@dataclass
class PagingStats:
    """Token slots reserved by each scheme for the same requests (multiply by bytes per token)."""

    tokens_needed: int  # sum over requests of prompt + generated tokens
    contiguous_slots: int  # every request reserves max_len
    paged_slots: int  # blocks of block_size, per request
    shared_slots: int  # paged, with the common prefix's full blocks stored once

    @property
    def contiguous_waste(self) -> float:
        """Fraction of reserved slots that hold nothing."""
        return 1 - self.tokens_needed / self.contiguous_slots

    @property
    def paged_waste(self) -> float:
        return 1 - self.tokens_needed / self.paged_slots

    @property
    def sharing_saving(self) -> float:
        """Fraction of paged memory saved by sharing the prefix."""
        return 1 - self.shared_slots / self.paged_slots


def simulate_paging(
    num_requests: int = 100,
    max_len: int = 2048,
    block_size: int = 16,
    shared_prefix: int = 0,
    min_len: int = 16,
    seed: int = 0,
) -> PagingStats:
    """Memory for ``num_requests`` requests of random total length, three ways.

    Each request has a common prefix of ``shared_prefix`` tokens (a system prompt) plus a
    private part; its total length is uniform in ``[max(min_len, shared_prefix + 1), max_len]``.
    Contiguous preallocation reserves ``max_len`` slots per request (the length is unknown in
    advance); paging reserves ``ceil(length / block_size)`` blocks; prefix sharing stores the
    prefix's ``shared_prefix // block_size`` full blocks once (a partly filled last prefix
    block is copied on write, so each request keeps its own copy of it).
    """
    require_int(num_requests, "num_requests")
    require_int(max_len, "max_len")
    require_int(block_size, "block_size")
    if require_int(shared_prefix, "shared_prefix", minimum=0) >= max_len:
        raise ValueError(f"shared_prefix must be an int in [0, max_len = {max_len}), got {shared_prefix!r}")
    rng = random.Random(seed)
    low = max(min_len, shared_prefix + 1)
    lengths = [rng.randint(min(low, max_len), max_len) for _ in range(num_requests)]
    blocks = [math.ceil(n / block_size) for n in lengths]
    shared_full = shared_prefix // block_size
    paged = sum(blocks) * block_size
    shared = (shared_full + sum(b - shared_full for b in blocks)) * block_size
    return PagingStats(sum(lengths), num_requests * max_len, paged, shared)


# --------------------------------------------------------------------------- step-by-step traces


@dataclass
class RingStep:
    """A ``SlidingWindowCache`` of ``window`` slots right after position ``position`` was decoded."""

    position: int
    window: int
    slots: list[int | None]  # the position each slot holds (None: not written yet)
    returned: list[int]  # the positions of the keys ``update`` returned, in the order returned


def trace_ring_buffer(window: int = 5, steps: int = 12) -> list[RingStep]:
    """Decode ``steps`` positions one at a time into a real ``SlidingWindowCache``; one ``RingStep`` each.

    The cache has one layer, one head and ``head_dim = 1``; the key stored for position ``p`` is
    the number ``p``, so the ring's contents and what ``update`` returns can be read back as
    positions.
    """
    W = require_int(window, "window")
    cache = SlidingWindowCache(1, 1, 1, batch_size=1, window=W)
    out = []
    for p in range(require_int(steps, "steps")):
        k = torch.full((1, 1, 1, 1), float(p))  # (B, H_kv, T, d): the key "is" its position
        k_all, _ = cache.update(0, k, k)
        held = cache.keys[0][0, 0, :, 0].long().tolist()  # (W,) slot contents
        slots = [held[s] if s <= p else None for s in range(W)]
        out.append(RingStep(p, W, slots, k_all[0, 0, :, 0].long().tolist()))
    return out


@dataclass
class PagingStep:
    """A ``PagedCache`` after one event of a forked generation (prefill, fork, a decode step)."""

    label: str
    seq_len: int
    block_size: int
    block_tables: list[list[int]]
    ref_counts: list[int]
    contents: list[list[int | None]]  # per physical block: the position held by each slot, None if unused
    copies_on_write: int  # so far
    events: list[str]  # what this step did to the blocks


def trace_forked_paging(prompt_len: int = 5, num_samples: int = 3, new_tokens: int = 4, block_size: int = 2,
                        num_blocks: int = 12) -> list[PagingStep]:
    """Snapshots of a real ``PagedCache`` as ``generate_shared_prompt`` drives it.

    Prefill ``prompt_len`` positions into sequence 0, fork it ``num_samples - 1`` times, then
    ``new_tokens`` decode steps of one position per sequence. One layer, one head,
    ``head_dim = 1``; the key stored for position ``p`` is ``p``.
    """
    T, N = require_int(prompt_len, "prompt_len"), require_int(num_samples, "num_samples")
    cache = PagedCache(1, 1, 1, batch_size=1, block_size=block_size, num_blocks=num_blocks)
    P = cache.block_size
    steps = []

    def snapshot(label: str, before: list[list[int]] | None = None, refs_before: list[int] | None = None) -> None:
        tables = [list(t) for t in cache.block_tables]
        pool = cache.key_pool[0][:, :, 0, 0].long().tolist()  # (num_blocks, P)
        contents: list[list[int | None]] = [[None] * P for _ in range(cache.num_blocks)]
        for table in tables:
            for j, block in enumerate(table):
                for s in range(min(P, cache.seq_len - j * P)):
                    contents[block][s] = pool[block][s]
        events = []
        for b, table in enumerate(tables):
            old = before[b] if before is not None and b < len(before) else None
            if old is None:
                continue
            copied = [(o, n) for o, n in zip(old, table) if o != n]
            events += [f"sequence {b} copies shared block #{o} to #{n} (copy on write)" for o, n in copied]
            events += [f"sequence {b} takes free block #{n}" for n in table[len(old):]]
            last = old[-1] if old else None
            if not copied and last is not None and table[len(old) - 1] == last and refs_before[last] > 1:
                events.append(f"sequence {b} is now the only user of #{last}: it writes in place")
        steps.append(PagingStep(label, cache.seq_len, P, tables, list(cache.ref_counts), contents,
                                cache.copies_on_write, events))

    prompt = torch.arange(T, dtype=torch.float32).view(1, 1, T, 1)  # (1, H_kv, T, d): key p is p
    cache.update(0, prompt, prompt)
    snapshot(f"prefill: the {T}-token prompt into sequence 0")
    steps[-1].events = [f"sequence 0 takes blocks {', '.join(f'#{b}' for b in cache.block_tables[0])}"]
    for _ in range(N - 1):
        cache.fork(0)
    snapshot(f"fork: {N - 1} more sequences share sequence 0's blocks")
    steps[-1].events = [f"reference counts of {', '.join(f'#{b}' for b in cache.block_tables[0])} go up to {N}; "
                        "nothing is copied"]
    for i in range(require_int(new_tokens, "new_tokens")):
        before, refs = [list(t) for t in cache.block_tables], list(cache.ref_counts)
        p = cache.seq_len
        k = torch.full((N, 1, 1, 1), float(p))  # (B, H_kv, 1, d): position p of every sequence
        cache.update(0, k, k)
        snapshot(f"decode step {i + 1}: every sequence writes position {p}", before, refs)
        if not steps[-1].events:
            steps[-1].events = ["every sequence writes into its own last block, in place"]
    return steps
