"""Serving many requests at once: static batching, continuous batching and chunked prefill.

A server receives requests at any time, each a prompt and a number of tokens to generate. It
runs the model in *steps* (one forward pass each) and decides, before every step, which
requests take part and how many of their tokens they feed. This module is that decision,
built small, and an executor that runs the decided steps with a real ``GPT``.

* **Static batching**: take up to ``max_num_seqs`` waiting requests, run them together until
  the *longest* is done, then take the next batch. Rows that finished early keep being computed
  (a dense batch has no way to drop them) and new arrivals wait for the whole batch.
* **Continuous batching** (Orca's *iteration-level scheduling*, Yu et al. 2022; vLLM's
  scheduler over a paged cache, Kwon et al. 2023): the batch is re-formed every step. A request
  that has its last token leaves at once and frees its cache blocks; a waiting request joins
  as soon as there is a free slot, token budget and memory.
* **Chunked prefill** (Sarathi-Serve, Agrawal et al. 2024; vLLM's default scheduler): every step
  has a token budget; running decodes (one token each) are scheduled first, and the rest of the
  budget goes to prompts, split into chunks when they do not fit. A long prompt no longer
  makes one long step that stalls every decode.
* **Preemption by recomputation** (vLLM): the cache is a pool of fixed-size blocks
  (``BlockAllocator``); blocks are taken as sequences grow. When a running request needs a
  block and none is free, the most recently admitted request is *preempted*: its blocks are
  freed and it goes back to the front of the queue, keeping the tokens it generated; when it
  is readmitted its prompt and those tokens are prefilled again.

The scheduling is deterministic: it runs on a *model clock* given by ``StepCost`` (a step costs
a fixed part, reading the weights once, plus a part per token it computes and per cached key
it reads), so its decisions do not depend on the machine. Wall-clock seconds of every step are
measured too when a model runs.

Dimension glossary (see ``attn_course`` for the full one)::

    N  layers    H  query heads    H_kv  key/value heads    d  head_dim    D  n_embd    V  vocabulary
    P  block size (positions per block)    T  tokens fed in one step (all requests together)

Pieces:

* ``Request``                      a prompt (token ids), ``max_new_tokens`` and an arrival time.
* ``BlockAllocator``               a pool of ``num_blocks`` blocks and a block table per request.
* ``StepCost``                     the model clock: ``fixed + per_token x tokens + per_key x keys``.
* ``ContinuousScheduler``          admits, preempts and retires every step (``chunked_prefill``).
* ``StaticScheduler``              the baseline.
* ``PagedRunner``                  runs one step for a ``GPT``: every request's new tokens in one
                                   ragged batch (projections and MLP batched over all tokens),
                                   keys and values written to and read from the block pool.
* ``serve``                        the loop: schedule, run, record; returns a ``ServeResult``
                                   (every request's tokens, timings and the step log).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from attn_course._validation import require_int
from attn_course.gpt import GPT
from attn_course.gqa import grouped_query_attention

__all__ = [
    "Request",
    "BlockAllocator",
    "StepCost",
    "ScheduledChunk",
    "ContinuousScheduler",
    "StaticScheduler",
    "PagedRunner",
    "StepRecord",
    "RequestRecord",
    "ServeResult",
    "serve",
    "POLICIES",
]

POLICIES = ("static", "continuous", "chunked")


# --------------------------------------------------------------------------- requests and blocks


@dataclass(frozen=True)
class Request:
    """A prompt (token ids), how many tokens to generate (greedy) and when it arrives (model clock)."""

    rid: int
    prompt: tuple[int, ...]
    max_new_tokens: int
    arrival: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, tuple) or not self.prompt or not all(
                isinstance(t, int) and t >= 0 for t in self.prompt):
            raise ValueError(f"request {self.rid}: prompt must be a non-empty tuple of token ids >= 0, "
                             f"got {self.prompt!r:.80}")
        require_int(self.max_new_tokens, f"request {self.rid}: max_new_tokens")
        if not isinstance(self.arrival, (int, float)) or not math.isfinite(self.arrival) or self.arrival < 0:
            raise ValueError(f"request {self.rid}: arrival must be a finite time >= 0, got {self.arrival!r}")

    @property
    def max_positions(self) -> int:
        """Positions its cache ever holds: the prompt and every generated token but the last (never fed)."""
        return len(self.prompt) + self.max_new_tokens - 1


class BlockAllocator:
    """A pool of ``num_blocks`` cache blocks of ``block_size`` positions; a block table per request.

    ``grow(rid, positions)`` makes request ``rid``'s table long enough for ``positions`` positions
    (taking blocks from the free list) and returns ``False``, taking nothing, when there are too
    few free blocks; ``free(rid)`` returns all its blocks. Only the bookkeeping: the tensors live
    in ``PagedRunner``.
    """

    def __init__(self, num_blocks: int, block_size: int = 16) -> None:
        self.num_blocks = require_int(num_blocks, "num_blocks")
        self.block_size = require_int(block_size, "block_size")
        self.free_blocks: list[int] = list(range(num_blocks - 1, -1, -1))  # a stack: block 0 first
        self.tables: dict[int, list[int]] = {}

    def blocks_for(self, positions: int) -> int:
        """Blocks that hold ``positions`` positions: ``ceil(positions / P)``."""
        return -(-positions // self.block_size)

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    @property
    def blocks_in_use(self) -> int:
        return self.num_blocks - len(self.free_blocks)

    def can_grow(self, rid: int, positions: int) -> bool:
        have = len(self.tables.get(rid, ()))
        return self.blocks_for(positions) - have <= self.num_free

    def grow(self, rid: int, positions: int) -> bool:
        """Blocks for ``positions`` positions of ``rid`` (all or nothing); ``False`` if the pool is short."""
        if not self.can_grow(rid, positions):
            return False
        table = self.tables.setdefault(rid, [])
        while len(table) < self.blocks_for(positions):
            table.append(self.free_blocks.pop())
        return True

    def free(self, rid: int) -> int:
        """Return every block of ``rid`` to the pool; how many there were."""
        table = self.tables.pop(rid, [])
        self.free_blocks.extend(reversed(table))
        return len(table)


# --------------------------------------------------------------------------- the model clock


@dataclass(frozen=True)
class StepCost:
    """The time of one forward pass on the model clock: ``fixed + per_token x T + per_key x keys``.

    ``fixed``: reading every weight once (paid by every pass, however few its tokens; the unit of
    the clock by default). ``per_token``: the arithmetic for one token (``2 x params`` FLOPs).
    ``per_key``: reading one cached position's keys and values. ``for_model`` derives them from a
    model's size and a device's bandwidth and FLOP rate (a roofline: for a small batch the weight
    read dominates, which is why batching decodes is nearly free).
    """

    fixed: float = 1.0
    per_token: float = 0.01
    per_key: float = 0.0002

    def __call__(self, tokens: int, keys: int = 0) -> float:
        return self.fixed + self.per_token * tokens + self.per_key * keys

    @classmethod
    def for_model(cls, params: float, kv_bytes_per_token: float, weight_bytes_per_param: float = 2.0,
                  bandwidth: float = 3.35e12, flops: float = 4.0e14) -> StepCost:
        """Coefficients for a model of ``params`` parameters on a device (default: an H100's HBM
        bandwidth in bytes/s and a dense 16-bit FLOP rate), in units of one weight read."""
        weight_read = params * weight_bytes_per_param / bandwidth  # seconds
        return cls(1.0, (2 * params / flops) / weight_read, (kv_bytes_per_token / bandwidth) / weight_read)


# --------------------------------------------------------------------------- scheduler state


@dataclass
class _Live:
    """A request being served: its tokens so far and how many of them are in the cache."""

    request: Request
    tokens: list[int]  # prompt + generated
    fed: int = 0  # positions whose keys/values are in the cache
    generated: int = 0
    target: int = 0  # tokens to generate (static batching may run past max_new_tokens)
    admitted_at: int = -1
    preemptions: int = 0

    @property
    def rid(self) -> int:
        return self.request.rid

    @property
    def pending(self) -> int:
        """Known tokens not yet fed: the prompt (or its rest), or the newest token, or all after preemption."""
        return len(self.tokens) - self.fed


@dataclass(frozen=True)
class ScheduledChunk:
    """One request's part of a step: feed ``tokens`` (its positions ``start .. start + len - 1``)."""

    rid: int
    start: int
    tokens: tuple[int, ...]
    kind: str  # "prefill" (first time), "recompute" (after a preemption), "decode"
    emits: bool  # does this chunk reach the request's newest token (so a token is sampled)?


class _SchedulerBase:
    def __init__(self, allocator: BlockAllocator, max_num_seqs: int) -> None:
        if not isinstance(allocator, BlockAllocator):
            raise TypeError(f"allocator must be a BlockAllocator, got {type(allocator).__name__}")
        self.allocator = allocator
        self.max_num_seqs = require_int(max_num_seqs, "max_num_seqs")
        self.waiting: deque[_Live] = deque()
        self.running: list[_Live] = []
        self.finished: dict[int, _Live] = {}
        self.preemptions = 0
        self.step_index = 0

    def add(self, request: Request) -> None:
        if not isinstance(request, Request):
            raise TypeError(f"request must be a Request, got {type(request).__name__}")
        need = self.allocator.blocks_for(request.max_positions)
        if need > self.allocator.num_blocks:
            raise ValueError(f"request {request.rid} needs {request.max_positions} positions = {need} blocks of "
                             f"{self.allocator.block_size}; the pool has only {self.allocator.num_blocks}")
        self.waiting.append(_Live(request, list(request.prompt), target=request.max_new_tokens))

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _chunk(self, live: _Live, n: int) -> ScheduledChunk:
        if not live.generated:
            kind = "prefill"
        else:  # one pending token is a decode; more means its cache was dropped (preemption)
            kind = "decode" if live.pending == 1 else "recompute"
        start = live.fed
        return ScheduledChunk(live.rid, start, tuple(live.tokens[start:start + n]), kind,
                              emits=start + n == len(live.tokens))

    def complete(self, chunks: list[ScheduledChunk], new_tokens: dict[int, int]) -> list[int]:
        """After the step ran: advance what was fed, append sampled tokens, retire finished requests."""
        by_id = {live.rid: live for live in self.running}
        retired = []
        for c in chunks:
            live = by_id[c.rid]
            live.fed += len(c.tokens)
            if c.emits:
                live.tokens.append(new_tokens[c.rid])
                live.generated += 1
                if live.generated == live.target:
                    retired.append(live.rid)
        self._retire(retired)
        self.step_index += 1
        return retired

    def _retire(self, rids: list[int]) -> None:
        for rid in rids:
            live = next(x for x in self.running if x.rid == rid)
            self.running.remove(live)
            self.allocator.free(rid)
            self.finished[rid] = live


class ContinuousScheduler(_SchedulerBase):
    """Iteration-level scheduling over a block pool (Orca; vLLM), with or without chunked prefill.

    Every step, in this order:

    1. **running requests first**, oldest first: each feeds what it has pending (one token when
       decoding; with ``chunked_prefill`` the rest of a prompt, up to the budget left). If its
       cache needs a block and none is free, the most recently admitted running request is
       preempted (blocks freed, back to the front of the queue, to be recomputed), repeatedly,
       until the block is found or the request itself was the one preempted;
    2. **then admit** waiting requests that have arrived, first come first served, while there
       are sequence slots (``max_num_seqs``), budget and blocks. Without chunked prefill a
       prompt must fit the budget left whole; with it, it takes what is left (a chunk) and
       continues next step.

    A step feeds at most ``token_budget`` tokens. Retiring happens in ``complete``: a request
    that has its last token leaves the batch and frees its blocks at once.
    """

    def __init__(self, allocator: BlockAllocator, max_num_seqs: int = 16, token_budget: int = 256,
                 chunked_prefill: bool = False) -> None:
        super().__init__(allocator, max_num_seqs)
        self.token_budget = require_int(token_budget, "token_budget")
        self.chunked_prefill = bool(chunked_prefill)

    def add(self, request: Request) -> None:
        if not self.chunked_prefill and len(request.prompt) + request.max_new_tokens - 1 > self.token_budget:
            # after a preemption it recomputes its prompt and generated tokens in one step
            raise ValueError(f"request {request.rid}: prompt + generated tokens ({request.max_positions}) can "
                             f"exceed token_budget = {self.token_budget}, which a step without chunked "
                             f"prefill must hold whole; raise the budget or use chunked_prefill=True")
        super().add(request)

    def _preempt_last(self) -> _Live:
        victim = self.running.pop()  # the most recently admitted
        self.allocator.free(victim.rid)
        victim.fed = 0
        victim.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(victim)
        return victim

    def schedule(self, now: float) -> list[ScheduledChunk]:
        """The chunks of the next step (empty: nothing can run now)."""
        budget, chunks = self.token_budget, []
        i, preempted = 0, False
        while i < len(self.running) and budget > 0:  # 1. running requests, oldest first
            live = self.running[i]
            n = min(live.pending, budget)
            if not self.chunked_prefill and n < live.pending:
                i += 1
                continue  # cannot happen for a decode; a whole prompt waits for a step with room
            while not self.allocator.grow(live.rid, live.fed + n):
                preempted = True
                if self._preempt_last() is live:
                    break
            if live not in self.running:
                break  # it preempted itself: everyone after it is gone too
            chunks.append(self._chunk(live, n))
            budget -= n
            i += 1
        while (not preempted and budget > 0 and self.waiting and len(self.running) < self.max_num_seqs
               and self.waiting[0].request.arrival <= now):  # 2. admit, first come first served
            live = self.waiting[0]
            n = min(live.pending, budget)
            if (not self.chunked_prefill and n < live.pending) or not self.allocator.grow(live.rid, live.fed + n):
                break
            self.waiting.popleft()
            live.admitted_at = self.step_index
            self.running.append(live)
            chunks.append(self._chunk(live, n))
            budget -= n
        return chunks


class StaticScheduler(_SchedulerBase):
    """The baseline: a batch runs until its longest request is done; then the next batch forms.

    When the engine is idle it takes up to ``max_num_seqs`` requests that have arrived (first
    come first served) and reserves each one's blocks for the batch's whole run up front, as a
    contiguous preallocated cache does. Every row decodes until the longest has its tokens:
    a row past its own ``max_new_tokens`` is computed all the same (its extra tokens are thrown
    away), and nobody joins until the batch is done. Prompts are prefilled in one step (we even
    spare it the padding to the longest prompt that a dense batch pays).
    """

    def schedule(self, now: float) -> list[ScheduledChunk]:
        if not self.running:
            batch = []
            while self.waiting and len(batch) < self.max_num_seqs and self.waiting[0].request.arrival <= now:
                batch.append(self.waiting.popleft())
            if batch:
                longest = max(x.request.max_new_tokens for x in batch)
                while batch:  # reserve for the batch's whole run; put back what does not fit
                    if self._reserve(batch, longest):
                        break
                    self.waiting.appendleft(batch.pop())
                    longest = max((x.request.max_new_tokens for x in batch), default=0)
                for live in batch:
                    live.target = longest
                    live.admitted_at = self.step_index
                self.running = batch
        return [self._chunk(live, live.pending) for live in self.running]

    def _reserve(self, batch: list[_Live], longest: int) -> bool:
        need = sum(self.allocator.blocks_for(len(x.tokens) + longest - 1) for x in batch)
        if need > self.allocator.num_free:
            return False
        for x in batch:
            self.allocator.grow(x.rid, len(x.tokens) + longest - 1)
        return True


# --------------------------------------------------------------------------- the executor


class PagedRunner:
    """Runs scheduled steps for a ``GPT``: a ragged batch over a pool of key/value blocks.

    Storage per layer: ``(num_blocks * P, H_kv, d)`` keys and values (the pool seen flat, as
    ``PagedCache`` does); request ``r``'s position ``p`` is row ``table[p // P] * P + p % P``.
    One step concatenates every chunk's tokens into one sequence of ``T`` tokens, so the
    projections and the MLP run as a single batched matrix product over all requests. Only
    attention is per request: decodes (one query each) are gathered into one padded batch with a
    key-padding mask, and each prefill chunk attends over its cached positions and itself
    (causally). It returns the logits of each chunk's last token.
    """

    def __init__(self, model: GPT, allocator: BlockAllocator) -> None:
        if not isinstance(model, GPT):
            raise TypeError(f"model must be a GPT, got {type(model).__name__}")
        if model.config.sliding_window is not None:
            raise ValueError("PagedRunner serves models without a sliding window")
        self.model, self.allocator = model, allocator
        cfg, P = model.config, allocator.block_size
        w = model.wte.weight
        shape = (allocator.num_blocks * P, cfg.n_kv_head, cfg.head_dim)  # (num_blocks * P, H_kv, d)
        self.keys = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in range(cfg.n_layer)]
        self.values = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in range(cfg.n_layer)]

    def _rows(self, rid: int, start: int, end: int) -> list[int]:
        """Flat pool rows of positions ``start .. end - 1`` of request ``rid``: ``table[p // P] * P + p % P``."""
        P, table = self.allocator.block_size, self.allocator.tables[rid]
        return [table[p // P] * P + p % P for p in range(start, end)]

    def _read_rows(self, rids: list[int], S: int, device) -> tuple[torch.Tensor, int]:
        """Flat pool rows ``(len(rids), S)`` of positions ``0 .. S - 1`` of each request (past a
        request's own blocks: block 0, masked out by the caller)."""
        P, tables = self.allocator.block_size, [self.allocator.tables[r] for r in rids]
        width = -(-S // P)
        tab = torch.tensor([t[:width] + [0] * (width - len(t[:width])) for t in tables], device=device)  # (R, blocks)
        pos = torch.arange(S, device=device)
        return tab[:, pos // P] * P + pos % P, S  # (R, S)

    @torch.no_grad()
    def step(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        """Run one step; the logits ``(len(chunks), V)`` of each chunk's last token."""
        m, cfg = self.model, self.model.config
        device = m.wte.weight.device
        H, H_kv, d = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        if any(c.start + len(c.tokens) > cfg.context_length for c in chunks):
            raise ValueError(f"a request runs past the model's context_length = {cfg.context_length}")
        # Index bookkeeping in plain Python, then one tensor each (small tensors cost more to build than to use).
        ids = torch.tensor([t for c in chunks for t in c.tokens], device=device)  # (T,)
        pos = torch.tensor([p for c in chunks for p in range(c.start, c.start + len(c.tokens))], device=device)
        write = torch.tensor([r for c in chunks for r in self._rows(c.rid, c.start, c.start + len(c.tokens))],
                             device=device)  # (T,): where the new keys and values go
        offsets = [0]
        for c in chunks:
            offsets.append(offsets[-1] + len(c.tokens))
        decodes = [i for i, c in enumerate(chunks) if len(c.tokens) == 1]
        prefills = [i for i, c in enumerate(chunks) if len(c.tokens) > 1]
        if decodes:  # one padded batch: (Bd, S) rows to gather, and which of them are real keys
            lengths = torch.tensor([chunks[i].start + 1 for i in decodes], device=device)  # (Bd,)
            read, S = self._read_rows([chunks[i].rid for i in decodes], int(lengths.max()), device)  # (Bd, S)
            key_ok = torch.arange(S, device=device)[None] < lengths[:, None]  # (Bd, S)
            dec_q = torch.tensor([offsets[i] for i in decodes], device=device)  # their rows of x
        prefill_reads = [self._read_rows([chunks[i].rid], chunks[i].start + len(chunks[i].tokens), device)[0][0]
                         for i in prefills]  # (S,) each

        x = m.wte(ids) + m.wpe(pos)  # (T, D)
        for layer, block in enumerate(m.h):
            attn = block.attn
            q, k, v = attn.qkv(block.ln_1(x)).split([H * d, H_kv * d, H_kv * d], dim=-1)
            q = q.view(-1, H, d)  # (T, H, d)
            self.keys[layer].index_copy_(0, write, k.view(-1, H_kv, d))  # write the new keys in place
            self.values[layer].index_copy_(0, write, v.view(-1, H_kv, d))
            y = torch.empty_like(q)  # (T, H, d)
            if decodes:
                K = self.keys[layer][read].transpose(1, 2)  # (Bd, S, H_kv, d) -> (Bd, H_kv, S, d)
                V = self.values[layer][read].transpose(1, 2)
                qd = q[dec_q][:, :, None]  # (Bd, H, 1, d)
                y[dec_q] = grouped_query_attention(qd, K, V, key_ok[:, None, None, :])[:, :, 0]
            for i, rows in zip(prefills, prefill_reads):
                c, a, b = chunks[i], offsets[i], offsets[i + 1]
                K = self.keys[layer][rows].transpose(0, 1)[None]  # (1, H_kv, S, d)
                V = self.values[layer][rows].transpose(0, 1)[None]
                q_pos = torch.arange(c.start, c.start + len(c.tokens), device=device)
                allowed = q_pos[:, None] >= torch.arange(len(rows), device=device)[None]  # (n, S): causal
                y[a:b] = grouped_query_attention(q[a:b].transpose(0, 1)[None], K, V,
                                                 allowed[None, None])[0].transpose(0, 1)  # (n, H, d)
            x = x + attn.out(y.reshape(-1, H * d))  # (T, D)
            x = x + block.mlp(block.ln_2(x))
        last = x[torch.tensor(offsets[1:], device=device) - 1]  # (len(chunks), D)
        return m.lm_head(m.ln_f(last))  # (len(chunks), V)


# --------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class StepRecord:
    """One step: when it ran on the model clock, what it fed, and its measured seconds."""

    index: int
    start: float
    cost: float
    tokens: int
    keys: int
    chunks: tuple[ScheduledChunk, ...]
    seconds: float
    blocks_in_use: int


@dataclass(frozen=True)
class RequestRecord:
    """What a request saw: its output, when its first and last token came (model clock), preemptions."""

    rid: int
    arrival: float
    prompt_len: int
    output: tuple[int, ...]
    first_token: float
    finish: float
    first_token_step: int
    finish_step: int
    preemptions: int

    @property
    def ttft(self) -> float:
        """Time to first token: from arrival to the end of the step that produced it."""
        return self.first_token - self.arrival

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first; ``None`` for a one-token answer."""
        n = len(self.output)
        return (self.finish - self.first_token) / (n - 1) if n > 1 else None


@dataclass
class ServeResult:
    """Every request's record (by id), the step log and summary metrics."""

    policy: str
    requests: dict[int, RequestRecord]
    steps: list[StepRecord]
    preemptions: int
    extra_tokens: int = 0  # tokens computed past a request's max_new_tokens (static batching)
    metrics: dict = field(default_factory=dict)

    def outputs(self) -> dict[int, tuple[int, ...]]:
        return {rid: r.output for rid, r in self.requests.items()}


def _percentile(values: list[float], q: float) -> float:
    return float(torch.tensor(values, dtype=torch.float64).quantile(q / 100)) if values else float("nan")


def _metrics(result: ServeResult) -> dict:
    recs = list(result.requests.values())
    steps = result.steps
    out_tokens = sum(len(r.output) for r in recs)
    start = min(r.arrival for r in recs)
    makespan = max(r.finish for r in recs) - start
    wall = sum(s.seconds for s in steps)
    ttft = [r.ttft for r in recs]
    tpot = [r.tpot for r in recs if r.tpot is not None]
    # wall clock: a request's latency counted in the measured seconds of the steps it waited through
    ends, acc = [], 0.0
    for s in steps:
        acc += s.seconds
        ends.append(acc)
    begins = [e - s.seconds for e, s in zip(ends, steps)]
    first_step_after = {r.rid: next((s.index for s in steps if s.start >= r.arrival), r.first_token_step)
                        for r in recs}
    ttft_wall = [ends[r.first_token_step] - begins[first_step_after[r.rid]] for r in recs]
    tpot_wall = [(ends[r.finish_step] - ends[r.first_token_step]) / (len(r.output) - 1)
                 for r in recs if len(r.output) > 1]
    return {
        "requests": len(recs), "output_tokens": out_tokens, "steps": len(steps),
        "tokens_fed": sum(s.tokens for s in steps), "makespan": makespan,
        "tokens_per_unit": out_tokens / makespan, "tokens_per_step": out_tokens / len(steps),
        "ttft_p50": _percentile(ttft, 50), "ttft_p99": _percentile(ttft, 99),
        "tpot_p50": _percentile(tpot, 50), "tpot_p99": _percentile(tpot, 99),
        "preemptions": result.preemptions, "extra_tokens": result.extra_tokens,
        "peak_blocks": max(s.blocks_in_use for s in steps),
        "wall_seconds": wall, "tokens_per_s": out_tokens / wall if wall > 0 else float("nan"),
        "ttft_p50_s": _percentile(ttft_wall, 50), "ttft_p99_s": _percentile(ttft_wall, 99),
        "tpot_p50_s": _percentile(tpot_wall, 50), "tpot_p99_s": _percentile(tpot_wall, 99),
    }


def serve(
    requests: list[Request],
    policy: str = "chunked",
    model: GPT | None = None,
    *,
    num_blocks: int = 256,
    block_size: int = 16,
    max_num_seqs: int = 16,
    token_budget: int = 256,
    cost: StepCost | None = None,
) -> ServeResult:
    """Serve ``requests`` with ``policy`` (``"static"``, ``"continuous"``, ``"chunked"``); greedy decoding.

    With a ``model`` every step really runs (``PagedRunner``) and every output is the model's
    greedy continuation; without one the scheduling is simulated (each generated token is 0),
    which is enough for timings on the model clock. The clock starts at 0, advances by
    ``cost(tokens, keys)`` per step, and jumps to the next arrival when nothing can run.

    Args:
        requests: distinct ``rid`` s.  num_blocks, block_size: the cache pool.
        max_num_seqs: requests in a batch at most.  token_budget: tokens per step
            (``"continuous"``, ``"chunked"``; static batching prefills its whole batch in one step).
        cost: the model clock (default ``StepCost()``).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    requests = list(requests)
    if not requests:
        raise ValueError("requests is empty")
    if len({r.rid for r in requests}) != len(requests):
        raise ValueError("requests must have distinct rid s")
    cost = StepCost() if cost is None else cost
    allocator = BlockAllocator(num_blocks, block_size)
    if policy == "static":
        sched: _SchedulerBase = StaticScheduler(allocator, max_num_seqs)
    else:
        sched = ContinuousScheduler(allocator, max_num_seqs, token_budget, chunked_prefill=policy == "chunked")
    runner = None
    if model is not None:
        runner = PagedRunner(model, allocator)
        context = model.config.context_length
        for r in requests:
            if max(r.prompt) >= model.config.vocab_size:
                raise ValueError(f"request {r.rid} has a token id >= vocab_size = {model.config.vocab_size}")
            if r.max_positions > context:
                raise ValueError(f"request {r.rid} needs {r.max_positions} positions; context_length = {context}")
        if policy == "static":  # every row of a batch runs as long as its longest: size for the worst batch
            widest = max(len(r.prompt) for r in requests) + max(r.max_new_tokens for r in requests) - 1
            if widest > context:
                raise ValueError(f"static batching may run a row to {widest} positions (longest prompt + most "
                                 f"new tokens - 1); context_length = {context}")
    pending = deque(sorted(requests, key=lambda r: (r.arrival, r.rid)))
    now, steps = 0.0, []
    first: dict[int, tuple[float, int]] = {}
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    try:
        while pending or sched.has_work:
            while pending and pending[0].arrival <= now:
                sched.add(pending.popleft())
            chunks = sched.schedule(now)
            if not chunks:
                if not pending:
                    raise RuntimeError("the scheduler is stuck: requests wait but nothing can run")
                now = max(now, pending[0].arrival)  # idle until the next arrival
                continue
            tokens = sum(len(c.tokens) for c in chunks)
            keys = sum(c.start + len(c.tokens) for c in chunks)  # positions attended over (cache reads)
            t0 = time.perf_counter()
            if runner is not None:
                logits = runner.step(chunks)  # (len(chunks), V)
                chosen = logits.argmax(-1).tolist()
            else:
                chosen = [0] * len(chunks)
            seconds = time.perf_counter() - t0
            step_cost = cost(tokens, keys)
            steps.append(StepRecord(len(steps), now, step_cost, tokens, keys, tuple(chunks), seconds,
                                    allocator.blocks_in_use))
            now += step_cost
            new = {c.rid: tok for c, tok in zip(chunks, chosen) if c.emits}
            for c in chunks:
                if c.emits and c.rid not in first:
                    first[c.rid] = (now, len(steps) - 1)
            sched.complete(chunks, new)
    finally:
        if model is not None:
            model.train(was_training)
    records, extra = {}, 0
    finish_of = {}
    for s in steps:  # when each request got its max_new_tokens-th token
        for c in s.chunks:
            if c.emits:
                finish_of.setdefault(c.rid, []).append((s.start + s.cost, s.index))
    for rid, live in sched.finished.items():
        req = live.request
        n = req.max_new_tokens
        out = tuple(live.tokens[len(req.prompt):len(req.prompt) + n])
        extra += live.generated - n
        finish, finish_step = finish_of[rid][n - 1]
        records[rid] = RequestRecord(rid, req.arrival, len(req.prompt), out, first[rid][0], finish,
                                     first[rid][1], finish_step, live.preemptions)
    result = ServeResult(policy, dict(sorted(records.items())), steps, sched.preemptions, extra)
    result.metrics = _metrics(result)
    return result
