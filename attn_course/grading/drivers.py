"""Drivers: how the grader exercises an object the learner writes (a class), where a task is not
one function of plain data.

A task with ``driver="name"`` is called as ``DRIVERS[name](learner_object, *args)`` in the
kernel, and its expected value is ``DRIVERS[name](reference, *args)`` in the grader: the same
code drives both, on inputs drawn from the grader's seed, and returns plain data (tensors,
numbers) for ``compare``. This module is in the kernel's stripped package (``sandbox.KERNEL_FILES``):
it may import torch and ``attn_course._validation`` only, never a library module or a reference.

Exercise 8's drivers generate with a tiny language model given as plain tensors (one attention
layer, one head, a residual and an unembedding), so a cache the learner writes is graded by
what it is for: the tokens and logits it lets the model produce.

Dimension glossary: V vocabulary, D model width, d head_dim, T new tokens in one call, S keys
an ``update`` returns, W window, P block size.

The tiny model, ``weights = (wte (V, D), wpe (L, D), w_q (D, d), w_k (D, d), w_v (D, d),
w_o (d, D), w_u (D, V))``, on tokens at positions ``start .. start + T - 1``::

    x = wte[tokens] + wpe[positions]                                    # (T, D)
    keys, values, key_positions = update(x @ w_k, x @ w_v)              # (S, d), (S, d), (S,)
    scores = (x @ w_q) @ keys^T / sqrt(d) - slope * (q_pos - k_pos)     # (T, S), a distance bias
    scores = -inf where a key is in the query's future or >= window positions back
    logits = (x + softmax(scores) @ values @ w_o) @ w_u                 # (T, V)

The distance bias (ALiBi's, Press et al. 2022) makes every key's reported position count in
every step, not only where the mask cuts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .._validation import fmt_shape

# --------------------------------------------------------------------------- the tiny model


def _check_update(out: Any, T: int, d: int, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The learner's ``update`` result as (keys (S, d), values (S, d), key_positions (S,) long)."""
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise TypeError(f"{what} must return (keys, values, key_positions), got {type(out).__name__}")
    keys, values, positions = out
    for name, t in (("keys", keys), ("values", values)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != d:
            shape = fmt_shape(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{what} returned {name} of shape {shape}; expected (S, {d}) = (S, head_dim)")
    if values.shape != keys.shape:
        raise ValueError(f"{what} returned values {fmt_shape(values.shape)} and keys {fmt_shape(keys.shape)}; "
                         f"they should have the same shape")
    positions = torch.as_tensor(positions)
    if positions.shape != (keys.shape[0],) or positions.is_floating_point() or positions.dtype == torch.bool:
        raise ValueError(f"{what} returned key_positions of shape {fmt_shape(positions.shape)} and dtype "
                         f"{positions.dtype}; expected ({keys.shape[0]},) integers, one position per key")
    if keys.shape[0] < T:
        raise ValueError(f"{what} returned {keys.shape[0]} keys for {T} new tokens; the new tokens' own keys "
                         f"are among those the queries attend to")
    return keys, values, positions.long()


def _forward(weights: tuple[torch.Tensor, ...], slope: float, window: int, tokens: list[int], start: int,
             update: Callable[[torch.Tensor, torch.Tensor], Any], what: str) -> torch.Tensor:
    """Logits ``(T, V)`` of ``tokens`` at positions ``start ..``, with ``update`` as the cache."""
    wte, wpe, w_q, w_k, w_v, w_o, w_u = weights
    d = w_q.shape[1]
    q_pos = torch.arange(start, start + len(tokens))  # (T,)
    x = wte[torch.tensor(tokens, dtype=torch.long)] + wpe[q_pos]  # (T, D)
    k, v = x @ w_k, x @ w_v  # (T, d) each
    keys, values, k_pos = _check_update(update(k, v), len(tokens), d, what)
    diff = q_pos[:, None] - k_pos[None, :]  # (T, S): how far back each key is
    allowed = diff >= 0
    if window:
        allowed = allowed & (diff < window)
    scores = (x @ w_q) @ keys.T / math.sqrt(d) - slope * diff.to(x.dtype)  # (T, S)
    weights_ = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)  # (T, S)
    return (x + weights_ @ values @ w_o) @ w_u  # (T, V)


def recompute_logits(weights: tuple[torch.Tensor, ...], slope: float, window: int, tokens: list[int]) -> torch.Tensor:
    """Logits ``(N, V)`` of a whole sequence in one call, without a cache (what a cache must equal)."""
    return _forward(weights, slope, window, tokens, 0, lambda k, v: (k, v, torch.arange(k.shape[0])),
                    "recompute")


def _held_numbers(obj: Any) -> int:
    """Floating-point numbers in the tensors an object holds in its attributes (one level of containers)."""
    total = 0
    slots = [n for cls in type(obj).__mro__ for n in getattr(cls, "__slots__", ())]
    attributes = list(getattr(obj, "__dict__", {}).values()) + [getattr(obj, n, None) for n in slots]
    for value in attributes:
        items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        total += sum(t.numel() for t in items if isinstance(t, torch.Tensor) and t.is_floating_point())
    return total


# --------------------------------------------------------------------------- exercise 8: a ring cache


def ring_generate(cache_class: Callable[..., Any], weights: tuple[torch.Tensor, ...], slope: float, window: int,
                  prompt_chunks: list[list[int]], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed the prompt in chunks, then decode ``steps`` tokens greedily, with ``cache_class(window, d)``.

    Returns ``(tokens (steps,), logits (N, V))``: the generated tokens and the logits of every
    position fed (prompt and generated). Raises when the cache holds more than ``window`` keys
    and values between calls: a sliding-window cache's memory must not grow with the sequence.
    """
    d = weights[2].shape[1]
    cache = cache_class(window, d)
    limit = 2 * window * d
    logits: list[torch.Tensor] = []
    generated: list[int] = []
    start = 0
    chunks = [list(c) for c in prompt_chunks]
    for i in range(len(chunks) + steps):
        tokens = chunks[i] if i < len(chunks) else [int(logits[-1][-1].argmax())]
        if i >= len(chunks):
            generated.append(tokens[0])
        logits.append(_forward(weights, slope, window, tokens, start, cache.update,
                               f"{type(cache).__name__}.update"))
        start += len(tokens)
        held = _held_numbers(cache)
        if held > limit:
            raise ValueError(f"after {start} positions the cache holds {held} numbers in its tensors; a window "
                             f"of {window} keys and {window} values of head_dim {d} is {limit}: the rule is "
                             f"that a sliding-window cache keeps only the last `window` positions")
    return torch.tensor(generated, dtype=torch.long), torch.cat(logits)  # (steps,), (N, V)


# --------------------------------------------------------------------------- exercise 8: a paged cache


def paged_generate(cache_class: Callable[..., Any], weights: tuple[torch.Tensor, ...], slope: float,
                   block_size: int, num_blocks: int, program: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Run ``program`` on ``cache_class(block_size, num_blocks, d)``, sequence 0 made with ``new_sequence()``.

    ``program`` is a list of steps: ``("feed", seq, [tokens])`` feeds tokens to a sequence (the
    first feed of sequence 0 is its prompt), ``("decode", seq, n)`` decodes ``n`` tokens greedily,
    one per call, and ``("fork", seq)`` adds a sequence that shares ``seq``'s blocks (``fork``
    returns its index). Returns ``(logits (N, V), tokens, blocks)``: the logits of every call in
    program order; each sequence's tokens; the blocks each sequence's table holds and, last,
    the distinct blocks in use (shared ones counted once).
    """
    d = weights[2].shape[1]
    cache = cache_class(block_size, num_blocks, d)
    tokens: list[list[int]] = [[]]
    last: list[torch.Tensor | None] = [None]
    seqs = [cache.new_sequence()]
    logits: list[torch.Tensor] = []

    def feed(s: int, new: list[int]) -> None:
        out = _forward(weights, slope, 0, new, len(tokens[s]), lambda k, v: cache.update(seqs[s], k, v),
                       f"{type(cache).__name__}.update")
        tokens[s] += new
        last[s] = out[-1]
        logits.append(out)

    for step in program:
        op, s = step[0], int(step[1])
        if op == "feed":
            feed(s, [int(t) for t in step[2]])
        elif op == "decode":
            for _ in range(int(step[2])):
                feed(s, [int(last[s].argmax())])
        elif op == "fork":
            seqs.append(cache.fork(seqs[s]))
            tokens.append(list(tokens[s]))
            last.append(last[s])
        else:
            raise ValueError(f"unknown step {op!r}")
    tables = [list(cache.block_tables[q]) for q in seqs]
    blocks = [len(t) for t in tables] + [len({int(b) for t in tables for b in t})]
    return (torch.cat(logits), tuple(torch.tensor(t, dtype=torch.long) for t in tokens),
            torch.tensor(blocks, dtype=torch.long))


# --------------------------------------------------------------------------- exercise 8: decode steps


def chunked_attention(step: Callable[..., Any], x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                      w_v: torch.Tensor, chunks: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Feed ``x (N, D)`` to ``step(x_new, cache_k, cache_v, w_q, w_k, w_v)`` in chunks of the given sizes,
    starting from an empty cache and passing each call the cache the previous one returned.

    Returns ``(out (N, d), cache_k, cache_v)``: every chunk's output in order, and the last cache.
    """
    d = w_k.shape[1]
    cache_k = cache_v = x.new_zeros(0, d)  # (0, d): nothing cached before the prompt
    outs = []
    start = 0
    for size in chunks:
        result = step(x[start:start + size], cache_k, cache_v, w_q, w_k, w_v)
        if not isinstance(result, (tuple, list)) or len(result) != 3:
            raise TypeError(f"the step must return (out, cache_k, cache_v), got {type(result).__name__}")
        out, cache_k, cache_v = result
        outs.append(out)
        start += size
    return torch.cat(outs), cache_k, cache_v


# --------------------------------------------------------------------------- exercise 13: a scheduler step


def _decision(out: Any, t: int) -> tuple[list[tuple[int, int]], list[int]]:
    """The learner's ``schedule_step`` result as (chunks [(rid, n)], preempted [rid])."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"step {t}: schedule_step must return (chunks, preempted), got {type(out).__name__}")
    chunks, preempted = out
    try:
        chunks = [(int(rid), int(n)) for rid, n in chunks]
        preempted = [int(rid) for rid in preempted]
    except (TypeError, ValueError) as e:
        raise TypeError(f"step {t}: chunks must be a list of (rid, n) pairs and preempted a list of rids ({e})") from None
    return chunks, preempted


def schedule_trace(step: Callable[..., Any], requests: list[tuple[int, int, int]], num_blocks: int,
                   block_size: int, token_budget: int, max_num_seqs: int, steps: int) -> tuple[torch.Tensor, ...]:
    """Serve ``requests`` = ``[(prompt_len, max_new_tokens, arrival_step), ...]`` (request ``r`` is the
    r-th) for ``steps`` steps, asking ``step`` what to run each step.

    Before step ``t`` the requests arriving at ``t`` join the back of the queue (by arrival, then
    rid). ``step(running, waiting, free_blocks, token_budget, block_size, max_num_seqs)`` gets
    fresh dicts ``{"rid", "tokens", "fed", "blocks"}`` and returns ``(chunks, preempted)``; this
    driver applies them: preempted requests lose their blocks and cache (``fed = 0``) and go to the
    front of the queue (each in turn), chunks of waiting requests admit them (at the end of the
    running list), every chunk takes the blocks its ``fed + n`` positions need. A chunk that reaches
    the newest token emits one (the request's ``tokens`` grows by one); with its last token a request
    retires and frees its blocks. Returns ``(fed (steps, R), preempted (steps, R))``: the tokens each
    request fed at each step, and 1 where it was preempted.
    """
    P, R = block_size, len(requests)
    prompt = [int(p) for p, _, _ in requests]
    max_new = [int(m) for _, m, _ in requests]
    tokens, fed, blocks, generated = list(prompt), [0] * R, [0] * R, [0] * R
    arrivals = sorted(range(R), key=lambda r: (requests[r][2], r))
    running: list[int] = []
    waiting: list[int] = []
    free, done = num_blocks, 0
    fed_log = torch.zeros(steps, R, dtype=torch.long)
    preempt_log = torch.zeros(steps, R, dtype=torch.long)

    def view(r: int) -> dict:
        return {"rid": r, "tokens": tokens[r], "fed": fed[r], "blocks": blocks[r]}

    for t in range(steps):
        while arrivals and requests[arrivals[0]][2] <= t:
            waiting.append(arrivals.pop(0))
        if done == R:
            break
        if not running and not waiting:
            continue
        chunks, preempted = _decision(step([view(r) for r in running], [view(r) for r in waiting], free,
                                           token_budget, block_size, max_num_seqs), t)
        for r in preempted:
            if r not in running:
                raise ValueError(f"step {t}: preempted request {r} is not running (running: {running})")
            running.remove(r)
            free += blocks[r]
            blocks[r] = fed[r] = 0
            waiting.insert(0, r)
            preempt_log[t, r] = 1
        if sum(n for _, n in chunks) > token_budget:
            raise ValueError(f"step {t}: the chunks feed {sum(n for _, n in chunks)} tokens; token_budget = "
                             f"{token_budget}")
        if len({r for r, _ in chunks}) != len(chunks):
            raise ValueError(f"step {t}: a request appears twice in the chunks {chunks}")
        for r, n in chunks:
            if r in waiting:
                if r in preempted:
                    raise ValueError(f"step {t}: request {r} is preempted and scheduled in the same step")
                waiting.remove(r)
                running.append(r)
                if len(running) > max_num_seqs:
                    raise ValueError(f"step {t}: admitting request {r} makes {len(running)} running requests; "
                                     f"max_num_seqs = {max_num_seqs}")
            elif r not in running:
                raise ValueError(f"step {t}: chunk ({r}, {n}) names a request that is neither running nor waiting")
            if not 1 <= n <= tokens[r] - fed[r]:
                raise ValueError(f"step {t}: chunk ({r}, {n}): request {r} has {tokens[r] - fed[r]} tokens to feed")
            need = -(-(fed[r] + n) // P) - blocks[r]  # blocks beyond those it holds
            if need > free:
                raise ValueError(f"step {t}: chunk ({r}, {n}) takes request {r} to {fed[r] + n} positions: "
                                 f"{need} more blocks of {P}, but only {free} are free")
            free -= max(need, 0)
            blocks[r] += max(need, 0)
        for r, n in chunks:  # the step ran: advance, emit, retire
            fed[r] += n
            fed_log[t, r] = n
            if fed[r] == tokens[r]:
                tokens[r] += 1
                generated[r] += 1
                if generated[r] == max_new[r]:
                    running.remove(r)
                    free += blocks[r]
                    blocks[r] = 0
                    done += 1
    return fed_log, preempt_log


# --------------------------------------------------------------------------- exercise 13: a radix tree


def radix_replay(tree_class: Callable[..., Any], operations: list[tuple[str, list[int]]]) -> tuple[torch.Tensor, ...]:
    """Replay ``("insert", tokens)`` / ``("match", tokens)`` on ``tree_class()``.

    Returns ``(results (n_ops, 2), edges)``: per operation what it returned (tokens matched, or
    new tokens inserted) and how many edges the tree has after it; then every edge's tokens, sorted.
    """
    tree = tree_class()
    rows = []

    def edges(i: int) -> list[tuple[int, ...]]:
        out = tree.edges()
        try:
            out = [tuple(int(x) for x in e) for e in out]
        except TypeError as e:
            raise TypeError(f"after operation {i}: edges() must return a list of token sequences ({e})") from None
        if any(not e for e in out):
            raise ValueError(f"after operation {i}: edges() returned an empty edge; every edge holds tokens")
        return out

    for i, (op, tokens) in enumerate(operations):
        if op == "insert":
            got = tree.insert(list(tokens))
        elif op == "match":
            got = tree.match(list(tokens))
        else:
            raise ValueError(f"unknown operation {op!r}")
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, int) or isinstance(got, bool):
            raise TypeError(f"operation {i} ({op}) must return an int, got {type(got).__name__}")
        rows.append([got, len(edges(i))])
    final = sorted(edges(len(operations)))
    return torch.tensor(rows, dtype=torch.long), tuple(torch.tensor(e, dtype=torch.long) for e in final)


DRIVERS: dict[str, Callable[..., Any]] = {
    "ring_generate": ring_generate,
    "paged_generate": paged_generate,
    "chunked_attention": chunked_attention,
    "schedule_trace": schedule_trace,
    "radix_replay": radix_replay,
}
