"""Chapter 28's experiment: prefix caching on a chat-like trace (shared system prompts, multi-turn
conversations), with the radix tree of ``attn_course.prefix_cache``.

* ``chat_scripts``        seeded conversations: each uses one of a few system prompts and has a
                          few turns (user message, then an answer of a given length); the turns
                          of all conversations interleave in time.
* ``run_chat``            plays the scripts against a ``RadixCache``: each turn's prompt is the
                          system prompt and the whole conversation so far; the prefix found in
                          the tree is reused, the rest is prefilled, the sequence is inserted.
                          With a ``model`` the answers are generated (greedy) and checked against
                          ``decoding.generate`` from scratch; without, they are the scripts'
                          synthetic tokens.
* ``longest_earlier_prefix``   the brute-force bound: for each prompt, its longest common prefix
                          with any earlier sequence (what an unbounded cache finds).
* ``capacity_sweep``      hit rate and prefill saved by capacity.
* ``word_tree``           a small tree over words, for the diagram.
* ``draw_radix_tree``, ``draw_capacity_frame``: the chapter's figures (``ALT``: alt text).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from attn_course._validation import require_int
from attn_course.decoding import generate
from attn_course.diagrams import COLORS, INK, MUTED, box, canvas, label, light, route
from attn_course.gpt import GPT
from attn_course.prefix_cache import RadixCache, generate_with_prefix_cache

__all__ = [
    "ALT",
    "Conversation",
    "chat_scripts",
    "ChatRun",
    "run_chat",
    "longest_earlier_prefix",
    "capacity_sweep",
    "word_tree",
    "draw_radix_tree",
    "draw_capacity_frame",
]

ALT = {
    "draw_radix_tree": (
        "A radix tree of cached prompts drawn top down. The root has one child per distinct first "
        "word; each box is an edge of the tree holding a run of words, shared by every prompt that "
        "passes through it, so the common system prompt is stored once and the conversations branch "
        "below it. Boxes held by an in-flight request are purple; the others are grey, and the number "
        "beside each leaf is its place in the least-recently-used order (1 goes first)."
    ),
    "draw_capacity_frame": (
        "Left: the fraction of prompt tokens found in the cache against the cache's capacity in "
        "tokens, with the current capacity marked and the unbounded cache's rate as a dashed line. "
        "Right: for every request of the trace in arrival order, a bar of its prompt tokens split "
        "into those taken from the cache (green) and those prefilled (grey)."
    ),
}


# --------------------------------------------------------------------------- the trace


@dataclass(frozen=True)
class Conversation:
    """One conversation: a system prompt, then turns of (user message, answer length, synthetic answer)."""

    cid: int
    system: tuple[int, ...]
    users: tuple[tuple[int, ...], ...]
    answer_lengths: tuple[int, ...]
    answers: tuple[tuple[int, ...], ...]  # used when no model generates them
    times: tuple[float, ...]  # when each turn is sent


def chat_scripts(num_conversations: int = 24, num_system_prompts: int = 3, system_length: int = 48,
                 turns: tuple[int, int] = (1, 4), user_length: tuple[int, int] = (4, 12),
                 answer_length: tuple[int, int] = (4, 16), vocab_size: int = 64, seed: int = 0) -> list[Conversation]:
    """Seeded conversations: each picks one of ``num_system_prompts`` system prompts (of
    ``system_length`` tokens), has a number of turns uniform in ``turns``, user messages and
    answers of lengths uniform in the given ranges; conversations start at uniform times in
    ``[0, num_conversations)`` and their turns follow at gaps uniform in ``[1, 6)``."""
    require_int(num_conversations, "num_conversations")
    require_int(num_system_prompts, "num_system_prompts")
    require_int(system_length, "system_length")
    for name, (lo, hi) in (("turns", turns), ("user_length", user_length), ("answer_length", answer_length)):
        require_int(lo, f"{name}[0]")
        require_int(hi, f"{name}[1]", minimum=lo)
    g = torch.Generator().manual_seed(seed)

    def ints(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    def tokens(n):
        return tuple(torch.randint(0, vocab_size, (n,), generator=g).tolist())

    systems = [tokens(system_length) for _ in range(num_system_prompts)]
    out = []
    for c in range(num_conversations):
        n = ints(*turns)
        start = float(torch.rand(1, generator=g)) * num_conversations
        gaps = (1 + 5 * torch.rand(n, generator=g, dtype=torch.float64)).tolist()
        times = tuple(start + sum(gaps[:t]) for t in range(n))
        lengths = tuple(ints(*answer_length) for _ in range(n))
        out.append(Conversation(c, systems[ints(0, num_system_prompts - 1)], tuple(tokens(ints(*user_length))
                                for _ in range(n)), lengths, tuple(tokens(k) for k in lengths), times))
    return out


def _turn_order(scripts: list[Conversation]) -> list[tuple[int, int]]:
    """``(conversation index, turn)`` of every turn, in time order."""
    return sorted(((i, t) for i, c in enumerate(scripts) for t in range(len(c.users))),
                  key=lambda it: (scripts[it[0]].times[it[1]], it))


@dataclass
class ChatRun:
    """What playing a trace did: per request (in time order) its prompt length and matched tokens."""

    prompt_tokens: list[int]
    matched: list[int]
    tree: RadixCache
    prompts: list[tuple[int, ...]]
    outputs_equal: bool | None = None  # with a model: every answer equals generate() from scratch

    @property
    def hit_rate(self) -> float:
        """Fraction of all prompt tokens found in the cache (prefill saved)."""
        return sum(self.matched) / sum(self.prompt_tokens)

    @property
    def computed(self) -> int:
        return sum(self.prompt_tokens) - sum(self.matched)


def run_chat(scripts: list[Conversation], capacity: int | None = None, model: GPT | None = None,
             check: bool = True) -> ChatRun:
    """Play the turns in time order against a ``RadixCache(capacity)``.

    A turn's prompt is its conversation so far (system prompt, earlier user messages and
    answers) plus the new user message. Without a model the tree stores tokens only: the match
    is the longest cached prefix of the prompt minus its last token (which is always fed), and
    the prompt plus its answer but the answer's last token is inserted. With a model, the
    answers are generated by ``generate_with_prefix_cache``, and with ``check`` each one is
    compared with ``decoding.generate`` from scratch.
    """
    tree = RadixCache(capacity)
    history = {i: list(c.system) for i, c in enumerate(scripts)}
    prompt_tokens, matched, prompts = [], [], []
    equal = True if (model is not None and check) else None
    for i, t in _turn_order(scripts):
        c = scripts[i]
        prompt = history[i] + list(c.users[t])
        if model is None:
            m = tree.match_prefix(prompt[:-1]).length
            answer = list(c.answers[t])
            tree.insert(prompt + answer[:-1])
        else:
            out, stats = generate_with_prefix_cache(model, tree, prompt, c.answer_lengths[t])
            m, answer = stats.matched, list(out)
            if check:
                device = model.wte.weight.device
                ref = generate(model, torch.tensor([prompt], device=device), len(answer))[0, len(prompt):]
                equal = equal and tuple(ref.tolist()) == out
        prompt_tokens.append(len(prompt))
        matched.append(m)
        prompts.append(tuple(prompt))
        history[i] = prompt + answer
    return ChatRun(prompt_tokens, matched, tree, prompts, equal)


def longest_earlier_prefix(scripts: list[Conversation]) -> list[int]:
    """For each request (time order), the longest common prefix of its prompt minus its last token
    with any sequence inserted before it: what an unbounded cache can give, by brute force."""
    run = run_chat(scripts, None)  # only for the prompts (answers are the scripts')
    inserted, out = [], []
    order = _turn_order(scripts)
    answers = [scripts[i].answers[t] for i, t in order]
    for prompt, answer in zip(run.prompts, answers):
        query = prompt[:-1]
        best = 0
        for seq in inserted:
            n = 0
            for a, b in zip(seq, query):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        out.append(best)
        inserted.append(prompt + answer[:-1])
    return out


def capacity_sweep(scripts: list[Conversation], capacities) -> dict[int | None, ChatRun]:
    """``run_chat`` (no model) for each capacity (``None``: unbounded)."""
    return {cap: run_chat(scripts, cap) for cap in capacities}


# --------------------------------------------------------------------------- the small word example


_WORDS = ("<s> you are a helpful assistant . answer briefly please what is the capital of france ? "
          "and italy spain paris rome madrid translate into german hello").split()


def word_tree(requests: list[str], capacity: int | None = None, lock: int | None = None
              ) -> tuple[RadixCache, list[int], dict[int, str]]:
    """A tree over whole words: insert each request (a string of words from a small vocabulary) in
    order; ``lock``: index of a request whose prefix an in-flight request then holds. Returns the
    tree, the tokens each request found in it, and the id -> word table."""
    vocab = {w: i for i, w in enumerate(_WORDS)}
    tree, matched = RadixCache(capacity), []
    for text in requests:
        ids = []
        for w in text.split():
            if w not in vocab:
                raise ValueError(f"word {w!r} is not in the example's vocabulary {_WORDS}")
            ids.append(vocab[w])
        matched.append(tree.match_prefix(ids).length)
        tree.insert(ids)
    if lock is not None:
        ids = [vocab[w] for w in requests[lock].split()]
        tree.lock(tree.match_prefix(ids).node)
    return tree, matched, dict(enumerate(_WORDS))


# --------------------------------------------------------------------------- figures


def draw_radix_tree(tree: RadixCache, names: dict[int, str] | None = None, fig: Figure | None = None,
                    max_words: int = 5) -> Figure:
    """The tree top down: a box per edge (its words, or token count), shared edges once; locked
    nodes purple; each evictable leaf numbered by its place in the LRU order."""
    nodes = tree.nodes()
    if not nodes:
        raise ValueError("the tree is empty")
    leaves = [n for n in nodes if n.is_leaf]
    depth = {}
    for n in nodes:
        depth[n] = 1 + (depth[n.parent] if n.parent is not tree.root else 0)
    # x: leaves in order, parents centred over their children
    x = {}
    for i, leaf in enumerate(leaves):
        x[leaf] = i
    for n in sorted(nodes, key=lambda n: -depth[n]):
        if not n.is_leaf:
            x[n] = sum(x[c] for c in n.children.values()) / len(n.children)
    col, row = 2.3, 1.05
    width = max(4.0, col * len(leaves) + 0.6)
    height = row * (max(depth.values()) + 1) + 0.7
    if fig is None:
        fig, ax = canvas(width, height, ALT["draw_radix_tree"])
    else:
        fig.set_label(ALT["draw_radix_tree"])
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, width)
        ax.set_ylim(0, height)
        ax.set_axis_off()

    def pos(n):
        if n is tree.root:
            xs = [x[c] for c in tree.root.children.values()]
            return col * sum(xs) / len(xs) + col / 2 + 0.3, height - 0.45
        return col * x[n] + col / 2 + 0.3, height - 0.45 - row * depth[n]

    def text(n):
        if names is None:
            return f"{len(n.key)} tokens"
        words = [names.get(t, str(t)) for t in n.key]
        shown = " ".join(words[:max_words])
        return shown + (f" +{len(words) - max_words}" if len(words) > max_words else "")

    lru = sorted((n for n in leaves if n.ref_count == 0), key=lambda n: n.last_access)
    order = {n: i + 1 for i, n in enumerate(lru)}
    rx, ry = pos(tree.root)
    box(ax, rx, ry, 0.7, 0.38, "root", COLORS["state"], size=9)
    for n in nodes:
        px, py = pos(n.parent)
        cx, cy = pos(n)
        route(ax, [(px, py - 0.19), (px, (py + cy) / 2), (cx, (py + cy) / 2), (cx, cy + 0.22)], color=MUTED, lw=1.0)
        c = COLORS["weights"] if n.ref_count > 0 else COLORS["state"]
        box(ax, cx, cy, col - 0.25, 0.44, text(n), c, size=8.5, fill=light(c, 0.85))
        if n in order:
            label(ax, cx + col / 2 - 0.12, cy - 0.3, f"LRU {order[n]}", size=7.5, color=INK, ha="right")
    label(ax, 0.15, 0.2, f"{tree.size} tokens stored" + ("" if tree.capacity is None else f", capacity {tree.capacity}")
          + "; purple: held by an in-flight request", ha="left", size=8.5, color=INK)
    return fig


def draw_capacity_frame(fig: Figure, capacity: int, runs: dict[int | None, ChatRun]) -> None:
    """One slider frame: hit rate by capacity (the current one marked), and per request the prompt
    tokens taken from the cache against those prefilled, at this capacity (``runs``: from ``capacity_sweep``)."""
    fig.set_label(ALT["draw_capacity_frame"])
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    caps = sorted(c for c in runs if c is not None)
    left.plot(caps, [runs[c].hit_rate for c in caps], "o-", color=COLORS["value"], alpha=0.5)
    left.plot([capacity], [runs[capacity].hit_rate], "o", color=COLORS["value"], ms=10)
    if None in runs:
        left.axhline(runs[None].hit_rate, color=MUTED, ls="--", lw=1, label="unbounded")
        left.legend(frameon=False, fontsize=8, loc="lower right")
    left.set_xscale("log", base=2)
    left.set_xticks(caps, [str(c) for c in caps], fontsize=7)
    left.minorticks_off()
    left.set_ylim(0, 1)
    left.set_xlabel("capacity (tokens)", fontsize=9)
    left.set_ylabel("prompt tokens found in the cache", fontsize=9)
    left.set_title(f"capacity {capacity}: hit rate {runs[capacity].hit_rate:.0%}", fontsize=10)
    run = runs[capacity]
    xs = range(len(run.prompt_tokens))
    right.bar(xs, run.matched, color=COLORS["value"], width=1.0, label="from the cache")
    right.bar(xs, [p - m for p, m in zip(run.prompt_tokens, run.matched)], bottom=run.matched,
              color=light(COLORS["state"], 0.5), width=1.0, label="prefilled")
    right.set_xlabel("request (in arrival order)", fontsize=9)
    right.set_ylabel("prompt tokens", fontsize=9)
    right.legend(frameon=False, fontsize=8, loc="upper left")
    right.set_title(f"{run.computed} of {sum(run.prompt_tokens)} prompt tokens prefilled", fontsize=10)
