"""Speculative decoding: a small draft model proposes, the target verifies all proposals in one pass.

Leviathan et al. 2023 and Chen et al. 2023. Decoding is memory-bound: one target forward pass
over ``k + 1`` positions costs about as much as over one, so if a cheap draft guesses the next
``k`` tokens, the target can check them all at once and keep the longest prefix it agrees with.

The acceptance rule keeps the target's distribution *exactly*. The draft proposed ``x ~ q``;
accept it with probability ``min(1, p(x) / q(x))``; on rejection, sample from the residual
``r = max(0, p - q) / sum(max(0, p - q))``. Then for every token ``y``::

    P(y) = q(y) min(1, p(y)/q(y)) + (1 - sum_x q(x) min(1, p(x)/q(x))) r(y)
         = min(q(y), p(y)) + (sum_x max(0, p(x) - q(x))) r(y)
         = min(q(y), p(y)) + max(0, p(y) - q(y)) = p(y).

``emitted_distribution`` computes that sum for given ``p, q`` (the tests check it equals ``p``
exactly); ``verify`` applies the rule to ``k`` drafted tokens; ``speculative_generate`` is the
loop (one sequence), greedy (``temperature=0``: accept while the draft's token is the target's
arg-max, so the output equals the target's own greedy output token for token) or sampled.

Beyond one token: ``output_distribution`` enumerates every way the loop can run (which drafts,
which accepted, which residual samples) and returns the exact probability of each sequence of
``m`` new tokens; ``target_output_distribution`` is the target's own. On a small vocabulary the
two can be compared entry by entry.

How many tokens per target call? If each draft is accepted with probability ``a``,
independently (Leviathan et al.'s simplification), a round of ``k`` drafts emits
``1 + a + a^2 + ... + a^k = (1 - a^(k+1)) / (1 - a)`` tokens on average
(``expected_tokens_per_call``); with a draft costing ``c`` target calls, the time per token
shrinks by that over ``c k + 1`` (``expected_speedup``). ``SpeculativeStats.alpha`` estimates
``a`` from a run: accepted drafts over accepted drafts plus rejections.

Dimension glossary: V vocabulary, k drafted tokens per round, T prompt length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attn_course._validation import require_int, require_tensor, shape_error
from attn_course.decoding import sampling_distribution
from attn_course.gpt import GPT
from attn_course.kv_cache import DynamicCache

__all__ = [
    "residual_distribution",
    "emitted_distribution",
    "verify",
    "SpeculativeStats",
    "speculative_generate",
    "expected_tokens_per_call",
    "expected_speedup",
    "output_distribution",
    "target_output_distribution",
]


def _check_distributions(p: torch.Tensor, q: torch.Tensor) -> None:
    require_tensor(p, "p")
    require_tensor(q, "q")
    if p.shape != q.shape:
        raise shape_error("q", q, f"{tuple(p.shape)}, the shape of p (a draft with another vocabulary?)")


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``max(0, p - q)`` normalised over the last axis: what to sample after a rejection.

    Where ``p == q`` exactly there is nothing left (a rejection cannot happen): ``p`` is returned.
    """
    _check_distributions(p, q)
    extra = (p - q).clamp_min(0)  # (..., V)
    mass = extra.sum(-1, keepdim=True)
    return torch.where(mass > 0, extra / mass.clamp_min(torch.finfo(p.dtype).tiny), p)


def emitted_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The distribution of the token one round emits at a position: accepted draft or residual sample.

    Equals ``p`` for every ``q`` (up to rounding): the rule changes speed, never the distribution.
    """
    _check_distributions(p, q)
    accept = torch.minimum(torch.ones_like(p), p / q.clamp_min(torch.finfo(p.dtype).tiny))  # (..., V)
    accepted = q * accept
    rejected = 1 - accepted.sum(-1, keepdim=True)
    return accepted + rejected * residual_distribution(p, q)


def verify(p: torch.Tensor, q: torch.Tensor, drafted: torch.Tensor, generator: torch.Generator | None = None,
           greedy: bool = False) -> tuple[int, int]:
    """Apply the acceptance rule to ``k`` drafted tokens; return ``(accepted, next_token)``.

    Args:
        p: the target's distributions ``(k + 1, V)``: row ``i`` for the position of draft ``i``, the
           last row for the position after all drafts.
        q: the draft's distributions ``(k, V)`` the drafts were sampled from.
        drafted: the drafted tokens ``(k,)``.
        greedy: accept while the draft equals the target's arg-max; the next token is that arg-max.

    Returns ``accepted`` in ``0..k`` (drafts kept) and the token that follows them: the
    residual sample at the first rejection, or a sample of ``p[k]`` when all were accepted.
    """
    require_tensor(drafted, "drafted")
    k = drafted.shape[0]
    if p.dim() != 2 or p.shape[0] != k + 1:
        raise shape_error("p", p, f"({k + 1}, V) = (drafts + 1, V)")
    _check_distributions(p[:k], q)
    for i in range(k):
        x = int(drafted[i])
        if greedy:
            best = int(p[i].argmax())
            if x != best:
                return i, best
            continue
        u = torch.rand((), generator=generator, dtype=p.dtype)
        if u * q[i, x] > p[i, x]:  # reject with probability 1 - min(1, p/q)
            return i, int(torch.multinomial(residual_distribution(p[i], q[i]), 1, generator=generator))
    last = p[k]
    nxt = int(last.argmax()) if greedy else int(torch.multinomial(last, 1, generator=generator))
    return k, nxt


@dataclass
class SpeculativeStats:
    """What a run did: ``rounds`` of drafting, ``drafted`` and ``accepted`` tokens, target and draft calls.

    ``rejections`` counts the rounds that ended at a rejected draft (the others accepted all of theirs).
    """

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    rejections: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted over drafted (drafts after a rejection count as drafted, never as accepted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def alpha(self) -> float:
        """The per-draft acceptance probability ``a``: accepted / (accepted + rejections).

        Each draft that was *tested* was either accepted or was the round's one rejection; drafts
        after a rejection were never tested. (The estimate of a geometric law's parameter.)
        """
        tested = self.accepted + self.rejections
        return self.accepted / tested if tested else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        return (self.accepted + self.rounds) / self.target_calls if self.target_calls else 0.0


def _distribution(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature == 0:
        return torch.softmax(logits.float(), dim=-1)  # only its arg-max matters
    return sampling_distribution(logits, temperature)


def speculative_generate(target: GPT, draft: GPT, idx: torch.Tensor, max_new_tokens: int, k: int = 4,
                         temperature: float = 0.0, seed: int | None = None) -> tuple[torch.Tensor, SpeculativeStats]:
    """Generate ``max_new_tokens`` after ``idx (1, T)`` with ``target``, drafting ``k`` tokens a round with ``draft``.

    Both models keep a ``DynamicCache``; after each round both are cropped to the tokens kept
    (the rejected drafts' keys and values are dropped). Greedy (``temperature=0``) output equals
    ``decoding.generate(target, idx, max_new_tokens)``; sampled output has the target's
    distribution (``emitted_distribution``). Returns ``(tokens (1, T + new), stats)``.
    """
    require_tensor(idx, "idx")
    if idx.dim() != 2 or idx.shape[0] != 1:
        raise shape_error("idx", idx, "(1, T): one sequence")
    require_int(max_new_tokens, "max_new_tokens", minimum=0)
    require_int(k, "k")
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"the draft's vocabulary has {draft.config.vocab_size} tokens, the target's "
                         f"{target.config.vocab_size}: they must share one tokenizer")
    T = idx.shape[1]
    total = T + max_new_tokens
    for name, model in (("target", target), ("draft", draft)):
        if total > model.config.context_length:
            raise ValueError(f"{total} positions exceed the {name}'s context_length = {model.config.context_length}")
    generator = torch.Generator(device=idx.device)
    if seed is not None:
        generator.manual_seed(seed)
    greedy = temperature == 0
    # One cache per role (the draft may be the target itself: still two caches).
    t_cache, d_cache = (DynamicCache(m.config.n_layer, m.config.n_kv_head, m.config.head_dim) for m in (target, draft))
    pairs = ((target, t_cache), (draft, d_cache))
    tokens = idx[0].tolist()
    stats = SpeculativeStats()
    was = (target.training, draft.training)
    target.eval(), draft.eval()
    try:
        with torch.no_grad():
            # Prefill both on all but the last prompt token: each round feeds from there on.
            for model, cache in pairs:
                if T > 1:
                    model(idx[:, :-1], cache)
            while len(tokens) < total:
                n = min(k, total - len(tokens) - 1)  # the round also emits one token of its own
                drafted, q_rows = [], []
                for _ in range(n):
                    seen = d_cache.seq_len  # the draft has not seen (tokens + drafted)[seen:]
                    logits = draft(torch.tensor([(tokens + drafted)[seen:]]), d_cache, last_only=True)[0, -1]
                    q = _distribution(logits, temperature)  # (V,)
                    drafted.append(int(q.argmax()) if greedy else int(torch.multinomial(q, 1, generator=generator)))
                    q_rows.append(q)
                    stats.draft_calls += 1
                seen = t_cache.seq_len
                feed = torch.tensor([tokens[seen:] + drafted])  # (1, new + n): every draft checked at once
                logits = target(feed, t_cache)[0, -(n + 1):]  # (n + 1, V)
                stats.target_calls += 1
                p = _distribution(logits, temperature)
                q = torch.stack(q_rows) if q_rows else p[:0]
                accepted, nxt = verify(p, q, torch.tensor(drafted, dtype=torch.long), generator, greedy)
                tokens += drafted[:accepted] + [nxt]
                stats.rounds += 1
                stats.drafted += n
                stats.accepted += accepted
                stats.rejections += accepted < n
                # Keep the keys of every token but the newest (it is fed next round).
                for _, cache in pairs:
                    cache.crop(min(cache.seq_len, len(tokens) - 1))
    finally:
        target.train(was[0]), draft.train(was[1])
    return torch.tensor([tokens[:total]], device=idx.device), stats


# --------------------------------------------------------------------------- how much it saves


def expected_tokens_per_call(alpha: float, k: int) -> float:
    """``(1 - alpha^(k+1)) / (1 - alpha)``: tokens a round of ``k`` drafts emits on average.

    Draft ``i`` survives with probability ``alpha^i`` (all before it accepted), and the round always
    emits one token of its own: ``1 + alpha + ... + alpha^k`` (Leviathan et al. 2023, eq. 1).
    """
    require_int(k, "k", minimum=0)
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a probability in [0, 1], got {alpha!r}")
    if alpha == 1:
        return float(k + 1)
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def expected_speedup(alpha: float, k: int, cost_ratio: float) -> float:
    """Time per token of the target alone over speculative decoding's: tokens per round / (c k + 1).

    A round costs ``k`` draft calls (``cost_ratio`` = c = one draft call's time over one target
    call's) and one target call; it emits ``expected_tokens_per_call(alpha, k)`` tokens.
    """
    if cost_ratio < 0:
        raise ValueError(f"cost_ratio must be >= 0, got {cost_ratio!r}")
    return expected_tokens_per_call(alpha, k) / (cost_ratio * k + 1)


# --------------------------------------------------------------------------- the exact output law


def _next_token_tables(model: GPT, idx: torch.Tensor, depth: int, temperature: float) -> list[torch.Tensor]:
    """``tables[L]``: ``(V,) * L + (V,)``, the float64 next-token distribution after every ``L`` new tokens."""
    V = model.config.vocab_size
    tables = []
    with torch.no_grad():
        for L in range(depth + 1):
            grid = torch.cartesian_prod(*[torch.arange(V)] * L).reshape(-1, L) if L else torch.zeros(1, 0, dtype=torch.long)
            feed = torch.cat([idx.expand(grid.shape[0], -1), grid.to(idx.device)], dim=1)  # (V^L, T + L)
            logits = model(feed, last_only=True)[:, -1].double()  # (V^L, V)
            tables.append(sampling_distribution(logits, temperature).reshape((V,) * L + (V,)).cpu())
    return tables


def _check_enumeration(target: GPT, draft: GPT | None, idx: torch.Tensor, new_tokens: int, temperature: float) -> None:
    require_tensor(idx, "idx")
    if idx.dim() != 2 or idx.shape[0] != 1:
        raise shape_error("idx", idx, "(1, T): one sequence")
    require_int(new_tokens, "new_tokens")
    V = target.config.vocab_size
    if draft is not None and draft.config.vocab_size != V:
        raise ValueError(f"the draft's vocabulary has {draft.config.vocab_size} tokens, the target's {V}")
    if V ** new_tokens > 100_000:
        raise ValueError(f"{V}^{new_tokens} sequences to enumerate: use a smaller vocabulary or fewer new_tokens")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (sampling), got {temperature!r}")


def target_output_distribution(target: GPT, idx: torch.Tensor, new_tokens: int,
                               temperature: float = 1.0) -> torch.Tensor:
    """The target's own law of its next ``new_tokens`` tokens: ``(V,) * new_tokens`` probabilities (float64).

    Entry ``(y_1, .., y_m)`` = ``p(y_1) p(y_2 | y_1) ... p(y_m | y_1..y_{m-1})``.
    """
    _check_enumeration(target, None, idx, new_tokens, temperature)
    tables = _next_token_tables(target, idx, new_tokens - 1, temperature)
    V = target.config.vocab_size
    out = torch.ones(())
    for L, table in enumerate(tables):  # multiply in p(y_{L+1} | y_1..y_L)
        out = out.reshape(out.shape + (1,)) * table.reshape((V,) * L + (V,))
    return out


def output_distribution(target: GPT, draft: GPT, idx: torch.Tensor, new_tokens: int, k: int,
                        temperature: float = 1.0) -> torch.Tensor:
    """The exact law of the ``new_tokens`` tokens ``speculative_generate`` emits: ``(V,) * new_tokens``, float64.

    Enumerates every run of the loop, with its rounds as ``speculative_generate`` cuts them
    (``min(k, left - 1)`` drafts, then one token of the target's own): draft ``y`` is proposed with
    probability ``q(y)`` and kept with probability ``min(1, p(y) / q(y))``; the first rejection
    (probability ``1 - sum_x q(x) min(1, p(x) / q(x))``) emits a sample of
    ``residual_distribution(p, q)`` and ends the round; a round with every draft kept ends with a
    sample of the target's next distribution. Compare with ``target_output_distribution``.
    """
    _check_enumeration(target, draft, idx, new_tokens, temperature)
    require_int(k, "k")
    V = target.config.vocab_size
    P = _next_token_tables(target, idx, new_tokens - 1, temperature)
    Q = _next_token_tables(draft, idx, new_tokens - 1, temperature)
    out = torch.zeros((V,) * new_tokens, dtype=torch.float64)

    def rounds_from(prefix: tuple[int, ...], weight: float) -> None:
        """Add, to ``out``, every continuation of ``prefix`` (reached with probability ``weight``)."""
        left = new_tokens - len(prefix)
        if left == 0:
            out[prefix] += weight
            return
        n = min(k, left - 1)  # drafts this round

        def walk(path: tuple[int, ...], w: float) -> None:  # ``path``: drafts accepted so far
            at = prefix + path
            p = P[len(at)][at]  # (V,): the target's distribution here
            if len(path) == n:  # all drafts kept: one sample of p
                for y in range(V):
                    if p[y] > 0:
                        rounds_from(at + (y,), w * float(p[y]))
                return
            q = Q[len(at)][at]  # (V,)
            keep = torch.minimum(torch.ones_like(p), p / q.clamp_min(torch.finfo(p.dtype).tiny))  # (V,)
            reject = 1 - float((q * keep).sum())
            residual = residual_distribution(p, q)
            for y in range(V):
                if q[y] * keep[y] > 0:
                    walk(path + (y,), w * float(q[y] * keep[y]))
                if reject > 0 and residual[y] > 0:
                    rounds_from(at + (y,), w * reject * float(residual[y]))

        walk((), weight)

    rounds_from((), 1.0)
    return out
