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

Dimension glossary: V vocabulary, k drafted tokens per round, T prompt length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attn_course._validation import require_int, require_tensor, shape_error
from attn_course.decoding import sampling_distribution
from attn_course.gpt import GPT
from attn_course.kv_cache import DynamicCache

__all__ = ["residual_distribution", "emitted_distribution", "verify", "SpeculativeStats", "speculative_generate"]


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
    """What a run did: ``rounds`` of drafting, ``drafted`` and ``accepted`` tokens, target calls."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    target_calls: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

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
                    seen = d_cache.seq_len
                    logits = draft(torch.tensor([tokens[seen:] + drafted]), d_cache, last_only=True)[0, -1]
                    q = _distribution(logits, temperature)  # (V,)
                    drafted.append(int(q.argmax()) if greedy else int(torch.multinomial(q, 1, generator=generator)))
                    q_rows.append(q)
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
                # Keep the keys of every token but the newest (it is fed next round).
                for _, cache in pairs:
                    cache.crop(min(cache.seq_len, len(tokens) - 1))
    finally:
        target.train(was[0]), draft.train(was[1])
    return torch.tensor([tokens[:total]], device=idx.device), stats
