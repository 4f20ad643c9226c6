"""Plausible wrong solutions of exercise 7, each skipping or bending the idea of its task in a
different way; every one must score 0 through the sandboxed grader
(tests/grading/test_wrong_submissions.py) and, for any draw of the cases, in-process
(tests/grading/exercises/test_ex07_attention_across_fields.py).
"""

# ----------------------------------------------------------------------------- attention_pooling

POOL_NO_MASK = '''
def attention_pooling(x, query, W_k, mask):
    import math, torch
    scores = (x @ W_k.T) @ query / math.sqrt(x.shape[-1])  # the padding is never masked
    return (torch.softmax(scores, -1)[..., None] * x).sum(1)
'''

POOL_NO_SCALE = '''
def attention_pooling(x, query, W_k, mask):
    import torch
    scores = ((x @ W_k.T) @ query).masked_fill(~mask, float("-inf"))  # no 1/sqrt(D)
    return (torch.softmax(scores, -1)[..., None] * x).sum(1)
'''

POOL_MASK_AFTER = '''
def attention_pooling(x, query, W_k, mask):
    import math, torch
    w = torch.softmax((x @ W_k.T) @ query / math.sqrt(x.shape[-1]), -1) * mask  # zeroed, not renormalised
    return (w[..., None] * x).sum(1)
'''

POOL_LENGTHS = '''
def attention_pooling(x, query, W_k, mask):
    import math, torch
    lengths = mask.sum(-1)  # reads the mask as lengths: right only for a prefix mask
    keep = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    scores = ((x @ W_k.T) @ query / math.sqrt(x.shape[-1])).masked_fill(~keep, float("-inf"))
    return (torch.softmax(scores, -1)[..., None] * x).sum(1)
'''

POOL_KEY_VALUES = '''
def attention_pooling(x, query, W_k, mask):
    import math, torch
    k = x @ W_k.T
    scores = (k @ query / math.sqrt(x.shape[-1])).masked_fill(~mask, float("-inf"))
    return (torch.softmax(scores, -1)[..., None] * k).sum(1)  # pools the keys, not the inputs
'''

# ----------------------------------------------------------------------------- sentence_weights

SENT_MEAN_ALL = '''
def sentence_weights(words, word_mask, query, W_k):
    import math, torch
    s = words.mean(2)  # every word slot, padding included
    real = word_mask.any(-1)
    scores = ((s @ W_k.T) @ query / math.sqrt(s.shape[-1])).masked_fill(~real, float("-inf"))
    return torch.softmax(scores, -1)
'''

SENT_DIVIDE_BY_W = '''
def sentence_weights(words, word_mask, query, W_k):
    import math, torch
    s = (words * word_mask[..., None]).sum(2) / words.shape[2]  # divided by W, not by the real words
    real = word_mask.any(-1)
    scores = ((s @ W_k.T) @ query / math.sqrt(s.shape[-1])).masked_fill(~real, float("-inf"))
    return torch.softmax(scores, -1)
'''

SENT_NO_SENTENCE_MASK = '''
def sentence_weights(words, word_mask, query, W_k):
    import math, torch
    counts = word_mask.sum(-1, keepdim=True).clamp(min=1)
    s = (words * word_mask[..., None]).sum(2) / counts  # an empty sentence is a zero vector ...
    return torch.softmax((s @ W_k.T) @ query / math.sqrt(s.shape[-1]), -1)  # ... and still gets weight
'''

SENT_FLAT_WORDS = '''
def sentence_weights(words, word_mask, query, W_k):
    import math, torch
    scores = ((words @ W_k.T) @ query / math.sqrt(words.shape[-1])).masked_fill(~word_mask, float("-inf"))
    B, T, W = word_mask.shape
    w = torch.softmax(scores.reshape(B, T * W), -1).reshape(B, T, W)  # attention over words ...
    return w.sum(-1)  # ... summed per sentence
'''

SENT_SUM = '''
def sentence_weights(words, word_mask, query, W_k):
    import math, torch
    s = (words * word_mask[..., None]).sum(2)  # the sum of the real words, not their mean
    real = word_mask.any(-1)
    scores = ((s @ W_k.T) @ query / math.sqrt(s.shape[-1])).masked_fill(~real, float("-inf"))
    return torch.softmax(scores, -1)
'''

# ----------------------------------------------------------------------------- patch_embedding

PATCH_COLUMNS_FIRST = '''
def patch_embedding(images, weight, bias, patch_size):
    B, C, side, _ = images.shape
    P, n = patch_size, side // patch_size
    p = images.reshape(B, C, n, P, n, P).permute(0, 4, 2, 1, 3, 5)  # column of patches first
    return p.reshape(B, n * n, C * P * P) @ weight.reshape(weight.shape[0], -1).T + bias
'''

PATCH_CHANNELS_LAST = '''
def patch_embedding(images, weight, bias, patch_size):
    B, C, side, _ = images.shape
    P, n = patch_size, side // patch_size
    p = images.reshape(B, C, n, P, n, P).permute(0, 2, 4, 3, 5, 1)  # (P, P, C): channels last
    return p.reshape(B, n * n, C * P * P) @ weight.reshape(weight.shape[0], -1).T + bias
'''

PATCH_PLAIN_RESHAPE = '''
def patch_embedding(images, weight, bias, patch_size):
    B, C, side, _ = images.shape
    P = patch_size
    p = images.reshape(B, (side // P) ** 2, C * P * P)  # consecutive pixels, not patches
    return p @ weight.reshape(weight.shape[0], -1).T + bias
'''

PATCH_NO_BIAS = '''
def patch_embedding(images, weight, bias, patch_size):
    B, C, side, _ = images.shape
    P, n = patch_size, side // patch_size
    p = images.reshape(B, C, n, P, n, P).permute(0, 2, 4, 1, 3, 5)
    return p.reshape(B, n * n, C * P * P) @ weight.reshape(weight.shape[0], -1).T  # no bias
'''

# ----------------------------------------------------------------------------- query_readout

READ_SCALE_D = '''
def query_readout(queries, memory, W_q, W_k, W_v):
    import math, torch
    q, k, v = queries @ W_q.T, memory @ W_k.T, memory @ W_v.T
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(queries.shape[-1]), -1) @ v  # the queries' width D
'''

READ_SCALE_E = '''
def query_readout(queries, memory, W_q, W_k, W_v):
    import math, torch
    q, k, v = queries @ W_q.T, memory @ W_k.T, memory @ W_v.T
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(memory.shape[-1]), -1) @ v  # the memory's width E
'''

READ_NO_SCALE = '''
def query_readout(queries, memory, W_q, W_k, W_v):
    import torch
    q, k, v = queries @ W_q.T, memory @ W_k.T, memory @ W_v.T
    return torch.softmax(q @ k.transpose(-2, -1), -1) @ v
'''

READ_QUERY_AXIS = '''
def query_readout(queries, memory, W_q, W_k, W_v):
    import math, torch
    q, k, v = queries @ W_q.T, memory @ W_k.T, memory @ W_v.T
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -2) @ v  # over the queries
'''

# ----------------------------------------------------------------------------- detr_cost

COST_LOGITS = '''
def detr_cost(class_logits, pred_boxes, target_classes, target_boxes, box_weight):
    import torch
    return -class_logits[:, target_classes] + box_weight * torch.cdist(pred_boxes, target_boxes, p=1)
'''

COST_LOG_PROB = '''
def detr_cost(class_logits, pred_boxes, target_classes, target_boxes, box_weight):
    import torch
    nll = -class_logits.log_softmax(-1)[:, target_classes]  # the loss's -log p, not the matcher's -p
    return nll + box_weight * torch.cdist(pred_boxes, target_boxes, p=1)
'''

COST_L2 = '''
def detr_cost(class_logits, pred_boxes, target_classes, target_boxes, box_weight):
    import torch
    dist = (pred_boxes[:, None, :] - target_boxes[None, :, :]).norm(dim=-1)  # Euclidean, not L1
    return -class_logits.softmax(-1)[:, target_classes] + box_weight * dist
'''

COST_NO_EMPTY_CLASS = '''
def detr_cost(class_logits, pred_boxes, target_classes, target_boxes, box_weight):
    import torch
    prob = class_logits[:, :-1].softmax(-1)  # "no object" left out of the softmax
    return -prob[:, target_classes] + box_weight * torch.cdist(pred_boxes, target_boxes, p=1)
'''

COST_FIXED_WEIGHT = '''
def detr_cost(class_logits, pred_boxes, target_classes, target_boxes, box_weight):
    import torch
    return -class_logits.softmax(-1)[:, target_classes] + 5.0 * torch.cdist(pred_boxes, target_boxes, p=1)
'''

# ----------------------------------------------------------------------------- detr_match

MATCH_ARGMIN = '''
def detr_match(cost):
    return cost.argmin(0)  # each target its cheapest query: one query may take two targets
'''

MATCH_GREEDY_TARGETS = '''
def detr_match(cost):
    import torch
    Q, M = cost.shape
    taken, out = set(), []
    for t in range(M):  # each target in turn takes its cheapest free query
        q = min((q for q in range(Q) if q not in taken), key=lambda q: float(cost[q, t]))
        taken.add(q)
        out.append(q)
    return torch.tensor(out, dtype=torch.long)
'''

MATCH_GREEDY_PAIRS = '''
def detr_match(cost):
    import torch
    Q, M = cost.shape
    out = torch.full((M,), -1, dtype=torch.long)
    pairs = sorted((float(cost[q, t]), q, t) for q in range(Q) for t in range(M))
    used = set()
    for _, q, t in pairs:  # the cheapest free pair first
        if q not in used and out[t] < 0:
            out[t] = q
            used.add(q)
    return out
'''

MATCH_ROWS = '''
def detr_match(cost):
    import torch
    from scipy.optimize import linear_sum_assignment
    rows, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(rows, dtype=torch.long)  # the matched queries in their own order, not per target
'''

MATCH_COLS = '''
def detr_match(cost):
    import torch
    from scipy.optimize import linear_sum_assignment
    rows, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(cols, dtype=torch.long)  # the target of each matched query
'''

# ----------------------------------------------------------------------------- gat_coefficient

GAT_NO_LEAKY = '''
def gat_coefficient(h, W, a_src, a_dst, adj, i, j):
    import torch
    wh = h @ W.T
    e = (wh[i] @ a_dst + wh @ a_src).masked_fill(~adj[i], float("-inf"))  # no LeakyReLU
    return torch.softmax(e, -1)[j]
'''

GAT_DEFAULT_SLOPE = '''
def gat_coefficient(h, W, a_src, a_dst, adj, i, j):
    import torch
    wh = h @ W.T
    e = torch.nn.functional.leaky_relu(wh[i] @ a_dst + wh @ a_src)  # torch's default slope 0.01
    return torch.softmax(e.masked_fill(~adj[i], float("-inf")), -1)[j]
'''

GAT_NO_MASK = '''
def gat_coefficient(h, W, a_src, a_dst, adj, i, j):
    import torch
    wh = h @ W.T
    e = torch.nn.functional.leaky_relu(wh[i] @ a_dst + wh @ a_src, 0.2)
    return torch.softmax(e, -1)[j]  # over every node, neighbours or not
'''

GAT_COLUMN = '''
def gat_coefficient(h, W, a_src, a_dst, adj, i, j):
    import torch
    wh = h @ W.T
    e = torch.nn.functional.leaky_relu(wh @ a_dst + wh[j] @ a_src, 0.2)  # every k's score for j
    return torch.softmax(e.masked_fill(~adj[:, j], float("-inf")), -1)[i]  # normalised over who reads j
'''

GAT_SWAPPED = '''
def gat_coefficient(h, W, a_src, a_dst, adj, i, j):
    import torch
    wh = h @ W.T
    e = torch.nn.functional.leaky_relu(wh[i] @ a_src + wh @ a_dst, 0.2)  # the two vectors swapped
    return torch.softmax(e.masked_fill(~adj[i], float("-inf")), -1)[j]
'''

# ----------------------------------------------------------------------------- gatv2_coefficient

GATV2_GAT_ORDER = '''
def gatv2_coefficient(h, W_src, W_dst, a, adj, i, j):
    import torch
    e = torch.nn.functional.leaky_relu((h[i] @ W_dst.T + h @ W_src.T) @ a, 0.2)  # a before the bend: GAT
    w = torch.softmax(e.masked_fill(~adj[i], float("-inf")), -1)
    return torch.nan_to_num(w[j])
'''

GATV2_NO_MASK = '''
def gatv2_coefficient(h, W_src, W_dst, a, adj, i, j):
    import torch
    e = torch.nn.functional.leaky_relu(h[i] @ W_dst.T + h @ W_src.T, 0.2) @ a
    return torch.softmax(e, -1)[j] * adj[i, j]  # softmax over every node, then zero the non-neighbours
'''

GATV2_COLUMN = '''
def gatv2_coefficient(h, W_src, W_dst, a, adj, i, j):
    import torch
    e = torch.nn.functional.leaky_relu(h @ W_dst.T + h[j] @ W_src.T, 0.2) @ a  # every k reading j
    w = torch.softmax(e.masked_fill(~adj[:, j], float("-inf")), -1)  # normalised over who reads j
    return torch.nan_to_num(w[i])
'''

GATV2_SWAPPED = '''
def gatv2_coefficient(h, W_src, W_dst, a, adj, i, j):
    import torch
    e = torch.nn.functional.leaky_relu(h[i] @ W_src.T + h @ W_dst.T, 0.2) @ a  # i projected by W_src
    w = torch.softmax(e.masked_fill(~adj[i], float("-inf")), -1)
    return torch.nan_to_num(w[j])
'''

GATV2_NAN = '''
def gatv2_coefficient(h, W_src, W_dst, a, adj, i, j):
    import torch
    e = torch.nn.functional.leaky_relu(h[i] @ W_dst.T + h @ W_src.T, 0.2) @ a
    return torch.softmax(e.masked_fill(~adj[i], float("-inf")), -1)[j]  # NaN for a node that reads nobody
'''

MATCH_TRAP = "cheapest query is the same query"  # the case every greedy matching fails first

VARIANTS = [
    {"attention_pooling": (POOL_NO_MASK, "Padded positions"),
     "sentence_weights": (SENT_MEAN_ALL, "1 to 5 real words"),
     "patch_embedding": PATCH_COLUMNS_FIRST,
     "query_readout": (READ_SCALE_D, "all differ here"),
     "detr_cost": COST_LOGITS,
     "detr_match": (MATCH_ARGMIN, MATCH_TRAP),
     "gat_coefficient": GAT_NO_LEAKY,
     "gatv2_coefficient": (GATV2_GAT_ORDER, "both signs")},
    {"attention_pooling": POOL_NO_SCALE,
     "sentence_weights": SENT_DIVIDE_BY_W,
     "patch_embedding": (PATCH_CHANNELS_LAST, "3 channels"),
     "query_readout": (READ_SCALE_E, "all differ here"),
     "detr_cost": COST_LOG_PROB,
     "detr_match": (MATCH_GREEDY_TARGETS, MATCH_TRAP),
     "gat_coefficient": (GAT_DEFAULT_SLOPE, "both sides of zero"),
     "gatv2_coefficient": GATV2_NO_MASK},
    {"attention_pooling": POOL_MASK_AFTER,
     "sentence_weights": (SENT_NO_SENTENCE_MASK, "no real word"),
     "patch_embedding": PATCH_PLAIN_RESHAPE,
     "query_readout": READ_NO_SCALE,
     "detr_cost": COST_L2,
     "detr_match": (MATCH_GREEDY_PAIRS, MATCH_TRAP),
     "gat_coefficient": GAT_NO_MASK,
     "gatv2_coefficient": GATV2_COLUMN},
    {"attention_pooling": (POOL_LENGTHS, "not a prefix"),
     "sentence_weights": SENT_FLAT_WORDS,
     "patch_embedding": PATCH_NO_BIAS,
     "query_readout": READ_QUERY_AXIS,
     "detr_cost": COST_NO_EMPTY_CLASS,
     "detr_match": MATCH_ROWS,
     "gat_coefficient": GAT_COLUMN,
     "gatv2_coefficient": GATV2_SWAPPED},
    {"attention_pooling": POOL_KEY_VALUES,
     "sentence_weights": SENT_SUM,
     "detr_cost": (COST_FIXED_WEIGHT, "box_weight = 2"),
     "detr_match": MATCH_COLS,
     "gat_coefficient": GAT_SWAPPED,
     "gatv2_coefficient": (GATV2_NAN, "reads no node at all")},
]
