'''Plausible wrong solutions of exercise 8 (decoding with a KV cache), each skipping or bending
the idea of its task in its own way; every one must score 0 through the sandboxed grader
(tests/grading/test_wrong_submissions.py).
'''

# --------------------------------------------------------------------------- top_p_filter

TOP_P_CROSSING_DROPPED = '''
def top_p_filter(logits, p):
    import torch
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    mass = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # includes the token itself: the one crossing p goes
    drop = mass > p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
'''

TOP_P_NOT_UNSORTED = '''
def top_p_filter(logits, p):
    import torch
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    drop = probs.cumsum(dim=-1) - probs >= p
    return logits.masked_fill(drop, float("-inf"))  # decisions made in rank order, applied in vocabulary order
'''

TOP_P_SORTED_OUTPUT = '''
def top_p_filter(logits, p):
    import torch
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    drop = probs.cumsum(dim=-1) - probs >= p
    return sorted_logits.masked_fill(drop, float("-inf"))  # the ranked logits, not the vocabulary's
'''

TOP_P_THRESHOLD = '''
def top_p_filter(logits, p):
    import torch
    probs = logits.softmax(dim=-1)
    keep = probs >= probs.amax(dim=-1, keepdim=True) * (1 - p)  # a probability threshold, not a mass
    return logits.masked_fill(~keep, float("-inf"))
'''

# --------------------------------------------------------------------------- offset_causal_mask

MASK_UPPER_LEFT = '''
def offset_causal_mask(T, S_cached):
    import torch
    return torch.ones(T, S_cached + T, dtype=torch.bool).tril()  # the diagonal starts top left: ignores the cache
'''

MASK_INVERTED = '''
def offset_causal_mask(T, S_cached):
    import torch
    q_pos = torch.arange(S_cached, S_cached + T)
    k_pos = torch.arange(S_cached + T)
    return k_pos[None, :] > q_pos[:, None]  # True where masked: the opposite convention
'''

MASK_DIAGONAL_OFF = '''
def offset_causal_mask(T, S_cached):
    import torch
    q_pos = torch.arange(S_cached, S_cached + T)
    k_pos = torch.arange(S_cached + T)
    return q_pos[:, None] > k_pos[None, :]  # a query does not see itself
'''

MASK_NEW_KEYS_ONLY = '''
def offset_causal_mask(T, S_cached):
    import torch
    return torch.ones(T, T, dtype=torch.bool).tril()  # the new keys only: (T, T)
'''

# --------------------------------------------------------------------------- cached_attention_step

STEP_UPPER_LEFT = '''
def cached_attention_step(x, cache_k, cache_v, w_q, w_k, w_v):
    import math
    import torch
    keys, values = torch.cat([cache_k, x @ w_k]), torch.cat([cache_v, x @ w_v])
    scores = (x @ w_q) @ keys.T / math.sqrt(w_q.shape[1])
    mask = torch.ones(scores.shape, dtype=torch.bool).tril()  # the prefill mask, reused after a cache
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ values, keys, values
'''

STEP_BEFORE_APPEND = '''
def cached_attention_step(x, cache_k, cache_v, w_q, w_k, w_v):
    import math
    import torch
    scores = (x @ w_q) @ cache_k.T / math.sqrt(w_q.shape[1])  # the cache only: no query sees itself
    out = torch.softmax(scores, dim=-1) @ cache_v
    return out, torch.cat([cache_k, x @ w_k]), torch.cat([cache_v, x @ w_v])
'''

STEP_NO_MASK = '''
def cached_attention_step(x, cache_k, cache_v, w_q, w_k, w_v):
    import math
    import torch
    keys, values = torch.cat([cache_k, x @ w_k]), torch.cat([cache_v, x @ w_v])
    scores = (x @ w_q) @ keys.T / math.sqrt(w_q.shape[1])  # "the cache holds only the past": no mask
    return torch.softmax(scores, dim=-1) @ values, keys, values
'''

STEP_CACHE_NOT_GROWN = '''
def cached_attention_step(x, cache_k, cache_v, w_q, w_k, w_v):
    import math
    import torch
    keys, values = torch.cat([cache_k, x @ w_k]), torch.cat([cache_v, x @ w_v])
    T, S = x.shape[0], cache_k.shape[0]
    scores = (x @ w_q) @ keys.T / math.sqrt(w_q.shape[1])
    mask = torch.ones(T, S + T, dtype=torch.bool).tril(S)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ values, cache_k, cache_v
'''

STEP_CACHES_INPUTS = '''
def cached_attention_step(x, cache_k, cache_v, w_q, w_k, w_v):
    import math
    import torch
    xs = torch.cat([cache_k, x])  # caches the inputs and projects them all again at every step
    keys, values = xs @ w_k, xs @ w_v
    T, S = x.shape[0], cache_k.shape[0]
    scores = (x @ w_q) @ keys.T / math.sqrt(w_q.shape[1])
    mask = torch.ones(T, S + T, dtype=torch.bool).tril(S)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ values, xs, xs
'''

# --------------------------------------------------------------------------- RingCache

# Shared by the ring variants: everything right but the piece each one bends.
_RING = '''
class RingCache:
    def __init__(self, window, head_dim):
        import torch
        self.window, self.seen = window, 0
        self.keys, self.values = torch.zeros(window, head_dim), torch.zeros(window, head_dim)

    def update(self, k, v):
        import torch
        W, past = self.window, self.seen
        end = past + k.shape[0]
        if end <= W:
            self.keys[past:end], self.values[past:end] = k, v
            self.seen = end
            return self.keys[:end], self.values[:end], torch.arange(end)
        if k.shape[0] == 1:
            {decode}
        kept = torch.arange(max(0, past - W), past)
        keys, values = torch.cat([self.keys[kept % W], k]), torch.cat([self.values[kept % W], v])
        last = torch.arange(end - W, end)
        self.keys[last % W], self.values[last % W] = keys[-W:], values[-W:]
        self.seen = end
        return keys, values, torch.arange(max(0, past - W), end)
'''

RING_NO_MODULO = _RING.replace("{decode}", '''self.keys[past], self.values[past] = k[0], v[0]  # position, not position % window
            self.seen = end
            return self.keys, self.values, torch.arange(end - W, end)''')

RING_SLOT_ORDER_AS_CHRONOLOGICAL = _RING.replace("{decode}", '''self.keys[past % W], self.values[past % W] = k[0], v[0]
            self.seen = end
            return self.keys, self.values, torch.arange(end - W, end)  # slot order, labelled oldest first''')

RING_POSITIONS_NOT_WRAPPED = _RING.replace("{decode}", '''self.keys[past % W], self.values[past % W] = k[0], v[0]
            self.seen = end
            return self.keys, self.values, torch.arange(W)  # the slots, not the positions they hold''')

RING_KEEPS_EVERYTHING = '''
class RingCache:
    def __init__(self, window, head_dim):
        import torch
        self.keys, self.values = torch.zeros(0, head_dim), torch.zeros(0, head_dim)

    def update(self, k, v):
        import torch
        self.keys, self.values = torch.cat([self.keys, k]), torch.cat([self.values, v])  # never forgets
        return self.keys, self.values, torch.arange(self.keys.shape[0])
'''

RING_CHUNK_STORED_FIRST = '''
class RingCache:
    def __init__(self, window, head_dim):
        import torch
        self.window, self.seen = window, 0
        self.keys, self.values = torch.zeros(window, head_dim), torch.zeros(window, head_dim)

    def update(self, k, v):
        import torch
        W, past = self.window, self.seen
        end = past + k.shape[0]
        pos = torch.arange(past, end)
        self.keys[pos % W], self.values[pos % W] = k, v  # write first: a long chunk overwrites its own early keys
        self.seen = end
        held = torch.arange(max(0, end - W), end)
        return self.keys[held % W], self.values[held % W], held
'''

# --------------------------------------------------------------------------- PagedCache

_PAGED = '''
class PagedCache:
    def __init__(self, block_size, num_blocks, head_dim):
        import torch
        self.block_size = block_size
        self.key_pool = torch.zeros(num_blocks * block_size, head_dim)
        self.value_pool = torch.zeros(num_blocks * block_size, head_dim)
        self.free_blocks = list(range(num_blocks - 1, -1, -1))
        self.ref_counts = [0] * num_blocks
        self.block_tables = []
        self.lengths = []

    def _allocate(self):
        if not self.free_blocks:
            raise RuntimeError("PagedCache is out of blocks")
        block = self.free_blocks.pop()
        self.ref_counts[block] = 1
        return block

    def new_sequence(self):
        self.block_tables.append([])
        self.lengths.append(0)
        return len(self.block_tables) - 1

    def fork(self, seq):
        for block in self.block_tables[seq]:
            self.ref_counts[block] += 1
        self.block_tables.append(list(self.block_tables[seq]))
        self.lengths.append(self.lengths[seq])
        return len(self.block_tables) - 1

    def update(self, seq, k, v):
        import torch
        P, table = self.block_size, self.block_tables[seq]
        start, end = self.lengths[seq], self.lengths[seq] + k.shape[0]
        if {cow}:
            old, new = table[-1], self._allocate()
            self.key_pool[new * P:(new + 1) * P] = self.key_pool[old * P:(old + 1) * P]
            self.value_pool[new * P:(new + 1) * P] = self.value_pool[old * P:(old + 1) * P]
            self.ref_counts[old] -= 1
            table[-1] = new
        while {more_blocks}:
            table.append(self._allocate())
        blocks = torch.tensor(table)
        new_pos = torch.arange(start, end)
        rows = {row_new}
        self.key_pool[rows], self.value_pool[rows] = k, v
        self.lengths[seq] = end
        pos = torch.arange(end)
        rows = {row_all}
        return self.key_pool[rows], self.value_pool[rows], pos
'''


def _paged(cow="start % P and self.ref_counts[table[-1]] > 1", more_blocks="len(table) * P < end",
           row="blocks[{p} // P] * P + {p} % P"):
    return (_PAGED.replace("{cow}", cow).replace("{more_blocks}", more_blocks)
            .replace("{row_new}", row.format(p="new_pos")).replace("{row_all}", row.format(p="pos")))


PAGED_NO_COPY_ON_WRITE = _paged(cow="False")  # the fork's sibling writes into the shared block
PAGED_FLOOR_BLOCKS = _paged(more_blocks="len(table) < end // P")  # floor: the last, partial block is missing
PAGED_BLOCK_ID_AS_ROW = _paged(row="blocks[{p} // P] + {p} % P")  # the block id used as a row: blocks overlap
PAGED_COPIES_FULL_BLOCKS = _paged(cow="table and self.ref_counts[table[-1]] > 1")  # a full shared block copied too
PAGED_ONE_BLOCK_TOO_MANY = _paged(more_blocks="len(table) * P <= end")  # an extra block at each boundary


VARIANTS = [
    {"top_p_filter": TOP_P_CROSSING_DROPPED, "offset_causal_mask": MASK_UPPER_LEFT,
     "cached_attention_step": STEP_UPPER_LEFT, "RingCache": RING_NO_MODULO, "PagedCache": PAGED_NO_COPY_ON_WRITE},
    {"top_p_filter": TOP_P_NOT_UNSORTED, "offset_causal_mask": MASK_INVERTED,
     "cached_attention_step": STEP_BEFORE_APPEND, "RingCache": RING_SLOT_ORDER_AS_CHRONOLOGICAL,
     "PagedCache": PAGED_FLOOR_BLOCKS},
    {"top_p_filter": TOP_P_SORTED_OUTPUT, "offset_causal_mask": MASK_DIAGONAL_OFF,
     "cached_attention_step": STEP_NO_MASK, "RingCache": RING_POSITIONS_NOT_WRAPPED,
     "PagedCache": PAGED_BLOCK_ID_AS_ROW},
    {"top_p_filter": TOP_P_THRESHOLD, "offset_causal_mask": MASK_NEW_KEYS_ONLY,
     "cached_attention_step": STEP_CACHE_NOT_GROWN,
     "RingCache": (RING_KEEPS_EVERYTHING, "keeps only the last `window` positions"),
     "PagedCache": PAGED_COPIES_FULL_BLOCKS},
    {"cached_attention_step": STEP_CACHES_INPUTS, "RingCache": RING_CHUNK_STORED_FIRST,
     "PagedCache": PAGED_ONE_BLOCK_TOO_MANY},
]
