'''Plausible wrong solutions of exercise 13 (serving), each skipping or bending the idea of its
task in its own way; every one must score 0 through the sandboxed grader
(tests/grading/test_wrong_submissions.py). Each is a correct solution with one idea bent
(``_bend`` fails loudly if the correct source changes and the bend no longer applies).
'''


def _bend(source: str, old: str, new: str) -> str:
    if old not in source:
        raise ValueError(f"the wrong variant's anchor {old!r} is not in the correct source")
    return source.replace(old, new)


# --------------------------------------------------------------------------- schedule_step

_SCHEDULE = '''
def schedule_step(running, waiting, free_blocks, token_budget, block_size, max_num_seqs):
    running = list(running)
    budget, free = token_budget, free_blocks
    chunks, preempted = [], []

    def more_blocks(r, n):
        return -(-(r["fed"] + n) // block_size) - r["blocks"]

    i = 0
    while i < len(running) and budget > 0:
        r = running[i]
        n = min(r["tokens"] - r["fed"], budget)
        need = more_blocks(r, n)
        while need > free:
            victim = running.pop()
            free += victim["blocks"]
            preempted.append(victim["rid"])
            if victim is r:
                break
        if preempted and preempted[-1] == r["rid"]:
            break
        chunks.append((r["rid"], n))
        free -= need
        budget -= n
        i += 1
    if not preempted:
        slots = max_num_seqs - len(running)
        for w in waiting:
            if budget <= 0 or slots <= 0:
                break
            n = min(w["tokens"] - w["fed"], budget)
            need = more_blocks(w, n)
            if need > free:
                break
            chunks.append((w["rid"], n))
            free -= need
            budget -= n
            slots -= 1
    return chunks, preempted
'''

# the oldest request is preempted (it has waited longest, but it is also the one closest to done)
SCHEDULE_PREEMPTS_OLDEST = _bend(_bend(_SCHEDULE, "victim = running.pop()", "victim = running.pop(0)"),
                                 "        i += 1\n    if not preempted",
                                 "        i = running.index(r) + 1\n    if not preempted")
# no chunked prefill: a prompt that does not fit the budget left waits for a step with room
SCHEDULE_WHOLE_PROMPTS = _bend(_bend(_SCHEDULE, "        n = min(r[\"tokens\"] - r[\"fed\"], budget)\n",
                                     "        n = r[\"tokens\"] - r[\"fed\"]\n        if n > budget:\n"
                                     "            i += 1\n            continue\n"),
                               "            n = min(w[\"tokens\"] - w[\"fed\"], budget)\n",
                               "            n = w[\"tokens\"] - w[\"fed\"]\n            if n > budget:\n"
                               "                break\n")
# admission goes on after a preemption (the freed blocks look free)
SCHEDULE_ADMITS_AFTER_PREEMPTION = _bend(_SCHEDULE, "    if not preempted:\n", "    if True:\n")
# blocks counted for the chunk alone, as if every chunk started a fresh block
SCHEDULE_BLOCKS_PER_CHUNK = _bend(_SCHEDULE, 'return -(-(r["fed"] + n) // block_size) - r["blocks"]',
                                  'return -(-n // block_size)')
# waiting requests admitted before the running ones are served
SCHEDULE_ADMISSION_FIRST = '''
def schedule_step(running, waiting, free_blocks, token_budget, block_size, max_num_seqs):
    budget, free = token_budget, free_blocks
    chunks, preempted = [], []
    slots = max_num_seqs - len(running)
    for w in waiting:
        if budget <= 0 or slots <= 0:
            break
        n = min(w["tokens"] - w["fed"], budget)
        need = -(-n // block_size)
        if need > free:
            break
        chunks.append((w["rid"], n))
        free -= need
        budget -= n
        slots -= 1
    for r in running:
        if budget <= 0:
            break
        n = min(r["tokens"] - r["fed"], budget)
        need = -(-(r["fed"] + n) // block_size) - r["blocks"]
        if need > free:
            continue
        chunks.append((r["rid"], n))
        free -= need
        budget -= n
    return chunks, preempted
'''

# --------------------------------------------------------------------------- paged_decode

_PAGED = '''
import math

import torch


def paged_decode(q, k_pool, v_pool, block_table, seq_lens):
    B, H, d = q.shape
    _, P, H_kv, d_v = v_pool.shape
    qg = q.reshape(B, H_kv, H // H_kv, d)
    m = torch.full(qg.shape[:3], float("-inf"))
    l = torch.zeros(qg.shape[:3])
    acc = torch.zeros(B, H_kv, H // H_kv, d_v)
    n_used = (seq_lens + P - 1) // P
    for j in range(int(n_used.max())):
        ids = torch.where(j < n_used, block_table[:, j], 0)
        kb, vb = k_pool[ids], v_pool[ids]
        s = torch.einsum("bgrd,bpgd->bgrp", qg, kb) / math.sqrt(d)
        filled = j * P + torch.arange(P) < seq_lens[:, None]
        s = s.masked_fill(~filled[:, None, None, :], float("-inf"))
        m_new = torch.maximum(m, s.amax(dim=-1))
        alpha, e = torch.exp(m - m_new), torch.exp(s - m_new[..., None])
        l = alpha * l + e.sum(dim=-1)
        acc = alpha[..., None] * acc + torch.einsum("bgrp,bpgv->bgrv", e, vb)
        m = m_new
    return (acc / l[..., None]).reshape(B, H, d_v)
'''

# gather every sequence's blocks into a contiguous cache first, then attend (what a paged kernel avoids)
PAGED_GATHER = '''
import math

import torch


def paged_decode(q, k_pool, v_pool, block_table, seq_lens):
    B, H, d = q.shape
    _, P, H_kv, d_v = v_pool.shape
    T = block_table.shape[1]
    ids = block_table.clamp(min=0)
    k = k_pool[ids].reshape(B, T * P, H_kv, d).repeat_interleave(H // H_kv, dim=2)
    v = v_pool[ids].reshape(B, T * P, H_kv, d_v).repeat_interleave(H // H_kv, dim=2)
    s = torch.einsum("bhd,bshd->bhs", q, k) / math.sqrt(d)
    s = s.masked_fill(~(torch.arange(T * P) < seq_lens[:, None])[:, None, :], float("-inf"))
    return torch.einsum("bhs,bshv->bhv", s.softmax(dim=-1), v)
'''
# column j read as block j of the pool: the table's order ignored
PAGED_BLOCKS_IN_ORDER = _bend(_PAGED, "ids = torch.where(j < n_used, block_table[:, j], 0)",
                              "ids = torch.full((B,), j) + torch.arange(B) * block_table.shape[1]")
# only whole blocks past the sequence are hidden: the stale slots of its last block are attended to
PAGED_STALE_SLOTS = _bend(_PAGED, "filled = j * P + torch.arange(P) < seq_lens[:, None]",
                          "filled = (j < n_used)[:, None].expand(B, P)")
# query heads grouped the other way: head h reads KV head h % H_kv
PAGED_HEADS_INTERLEAVED = _bend(_bend(_PAGED, "qg = q.reshape(B, H_kv, H // H_kv, d)",
                                      "qg = q.reshape(B, H // H_kv, H_kv, d).transpose(1, 2)"),
                                "return (acc / l[..., None]).reshape(B, H, d_v)",
                                "return (acc / l[..., None]).transpose(1, 2).reshape(B, H, d_v)")
# scores scaled by the value width
PAGED_SCALE_BY_DV = _bend(_PAGED, "/ math.sqrt(d)\n", "/ math.sqrt(d_v)\n")

# --------------------------------------------------------------------------- speculative_table

_SPEC = '''
import torch


def speculative_table(p, q):
    ratio = p / torch.where(q > 0, q, torch.ones_like(q))
    accept = torch.clamp(ratio, max=1.0)
    extra = torch.clamp(p - q, min=0.0)
    mass = extra.sum(dim=-1, keepdim=True)
    residual = torch.where(mass > 0, extra / torch.where(mass > 0, mass, torch.ones_like(mass)),
                           torch.zeros_like(extra))
    kept = torch.diag_embed(q * accept)
    rejected = (q * (1 - accept))[..., :, None] * residual[..., None, :]
    return kept + rejected
'''

SPEC_NO_MIN = _bend(_SPEC, "accept = torch.clamp(ratio, max=1.0)", "accept = ratio")
SPEC_RESIDUAL_UNCLIPPED = _bend(_SPEC, "extra = torch.clamp(p - q, min=0.0)", "extra = p - q + 1e-12")
SPEC_RESIDUAL_NOT_NORMALISED = _bend(_SPEC, "extra / torch.where(mass > 0, mass, torch.ones_like(mass))", "extra")
SPEC_RESAMPLE_FROM_P = _bend(_SPEC, "rejected = (q * (1 - accept))[..., :, None] * residual[..., None, :]",
                             "rejected = (q * (1 - accept))[..., :, None] * p[..., None, :]")
SPEC_RESIDUAL_NAN = _bend(_SPEC, '''    residual = torch.where(mass > 0, extra / torch.where(mass > 0, mass, torch.ones_like(mass)),
                           torch.zeros_like(extra))''', "    residual = extra / mass")

# --------------------------------------------------------------------------- int8_per_token

_INT8 = '''
import torch


def int8_per_token(x):
    absmax = x.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))
    q = torch.round(x / scale).clamp(-127, 127).to(torch.int8)
    return q, q.to(x.dtype) * scale
'''

# one scale for the whole tensor: small tokens round to 0
INT8_PER_TENSOR = _bend(_INT8, "absmax = x.abs().amax(dim=-1, keepdim=True)", "absmax = x.abs().amax()")
# the conversion truncates towards 0 instead of rounding
INT8_TRUNCATES = _bend(_INT8, "q = torch.round(x / scale).clamp(-127, 127)", "q = (x / scale).clamp(-127, 127)")
# dequantised from the float division, and no guard for a zero row (0 / 0)
INT8_ZERO_ROW_NAN = '''
import torch


def int8_per_token(x):
    scale = x.abs().amax(dim=-1, keepdim=True) / 127
    r = torch.round(x / scale)
    return r.clamp(-127, 127).to(torch.int8), r * scale
'''
# 128 levels on each side: the largest magnitude saturates
INT8_SCALE_128 = _bend(_INT8, "absmax / 127", "absmax / 128")
# asymmetric: min..max over 255 levels with a zero point
INT8_ASYMMETRIC = '''
import torch


def int8_per_token(x):
    lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    scale = torch.where(hi > lo, (hi - lo) / 255, torch.ones_like(hi))
    zero = torch.round(-lo / scale) - 128
    q = (torch.round(x / scale) + zero).clamp(-128, 127).to(torch.int8)
    return q, (q.to(x.dtype) - zero) * scale
'''

# --------------------------------------------------------------------------- RadixTree

_RADIX = '''
class RadixTree:
    def __init__(self):
        self.root = {"key": (), "children": {}}

    def _walk(self, tokens, split=True):
        node, i = self.root, 0
        while i < len(tokens) and tokens[i] in node["children"]:
            child = node["children"][tokens[i]]
            n = 0
            while n < len(child["key"]) and i + n < len(tokens) and child["key"][n] == tokens[i + n]:
                n += 1
            if n < len(child["key"]):
                head = {"key": child["key"][:n], "children": {}}
                child["key"] = child["key"][n:]
                head["children"][child["key"][0]] = child
                node["children"][head["key"][0]] = head
                child = head
            node, i = child, i + n
        return node, i

    def match(self, tokens):
        return self._walk(tuple(tokens))[1]

    def insert(self, tokens):
        tokens = tuple(tokens)
        node, i = self._walk(tokens)
        if i < len(tokens):
            node["children"][tokens[i]] = {"key": tokens[i:], "children": {}}
        return len(tokens) - i

    def edges(self):
        out, stack = [], list(self.root["children"].values())
        while stack:
            node = stack.pop()
            out.append(node["key"])
            stack.extend(node["children"].values())
        return out
'''

# a trie: one token per edge (every match and insert right, but nothing compressed)
RADIX_TRIE = _bend(_RADIX, '''            node["children"][tokens[i]] = {"key": tokens[i:], "children": {}}''',
                   '''            for t in tokens[i:]:
                node["children"][t] = {"key": (t,), "children": {}}
                node = node["children"][t]''')
# match walks into an edge but does not split it
RADIX_MATCH_NO_SPLIT = _bend(_bend(_RADIX, "            if n < len(child[\"key\"]):\n",
                                   "            if n < len(child[\"key\"]) and split:\n"),
                             "return self._walk(tuple(tokens))[1]", "return self._walk(tuple(tokens), split=False)[1]")
# match counts whole edges only: a match ending inside an edge stops before it
RADIX_MATCH_WHOLE_EDGES = _bend(_RADIX, "        return self._walk(tuple(tokens))[1]\n", '''        node, i = self.root, 0
        tokens = tuple(tokens)
        while i < len(tokens) and tokens[i] in node["children"]:
            child = node["children"][tokens[i]]
            if tokens[i:i + len(child["key"])] != child["key"]:
                break
            node, i = child, i + len(child["key"])
        return i
''')
# insert without a split: where it parts from an edge, the rest replaces the edge's child slot
RADIX_INSERT_NO_SPLIT = _bend(_RADIX, '''    def insert(self, tokens):
        tokens = tuple(tokens)
        node, i = self._walk(tokens)''', '''    def insert(self, tokens):
        tokens = tuple(tokens)
        node, i = self.root, 0
        while i < len(tokens) and tokens[i] in node["children"]:
            child = node["children"][tokens[i]]
            if tokens[i:i + len(child["key"])] != child["key"]:
                break
            node, i = child, i + len(child["key"])''')
# an insert that ends on a leaf lengthens the leaf's edge (over-compressing: the cached prefix
# that ended there no longer ends on a node)
RADIX_EXTENDS_LEAF = _bend(_RADIX, '''        if i < len(tokens):
            node["children"][tokens[i]] = {"key": tokens[i:], "children": {}}''', '''        if i < len(tokens) and node is not self.root and not node["children"]:
            node["key"] = node["key"] + tokens[i:]
        elif i < len(tokens):
            node["children"][tokens[i]] = {"key": tokens[i:], "children": {}}''')

VARIANTS = [
    {"schedule_step": SCHEDULE_PREEMPTS_OLDEST,
     "paged_decode": (PAGED_GATHER, "no contiguous copy of a sequence's cache"),
     "speculative_table": SPEC_NO_MIN, "int8_per_token": INT8_PER_TENSOR, "RadixTree": RADIX_TRIE},
    {"schedule_step": SCHEDULE_WHOLE_PROMPTS, "paged_decode": PAGED_BLOCKS_IN_ORDER,
     "speculative_table": SPEC_RESIDUAL_UNCLIPPED, "int8_per_token": INT8_TRUNCATES,
     "RadixTree": RADIX_MATCH_NO_SPLIT},
    {"schedule_step": SCHEDULE_ADMITS_AFTER_PREEMPTION, "paged_decode": PAGED_STALE_SLOTS,
     "speculative_table": SPEC_RESIDUAL_NOT_NORMALISED, "int8_per_token": INT8_ZERO_ROW_NAN,
     "RadixTree": RADIX_MATCH_WHOLE_EDGES},
    {"schedule_step": SCHEDULE_BLOCKS_PER_CHUNK, "paged_decode": PAGED_HEADS_INTERLEAVED,
     "speculative_table": SPEC_RESAMPLE_FROM_P, "int8_per_token": INT8_SCALE_128,
     "RadixTree": RADIX_INSERT_NO_SPLIT},
    {"schedule_step": SCHEDULE_ADMISSION_FIRST, "paged_decode": PAGED_SCALE_BY_DV,
     "speculative_table": SPEC_RESIDUAL_NAN, "int8_per_token": INT8_ASYMMETRIC,
     "RadixTree": RADIX_EXTENDS_LEAF},
]
