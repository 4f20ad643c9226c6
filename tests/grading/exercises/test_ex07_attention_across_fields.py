"""Exercise 7 (attention across fields): the references match the library, and plausible wrong
submissions lose their points, for any draw of the cases, with a message that says where to look.

The wrong submissions are those of tests/submissions/wrong/ex07_attention_across_fields.py,
graded there through the sandboxed grader (one draw); here each is called in-process on several
draws, since the grader's seed is secret. Whole notebooks (the solution source: full marks; the
learner notebook: 0) are graded in tests/grading/test_grading.py.
"""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attn_course.apps.graphs import GATLayer, GATv2Layer
from attn_course.apps.text import AttentionPooling
from attn_course.apps.vision import PatchEmbedding, hungarian_match
from attn_course.exercises.ex07_attention_across_fields import (
    EXERCISE,
    _cost_reference,
    _gat_reference,
    _gatv2_reference,
    _match_reference,
    _patch_reference,
    _pooling_reference,
    _readout_reference,
    _sentence_reference,
)
from attn_course.grading.compare import evaluate
from attn_course.grading.harness import call_local
from attn_course.multihead import MultiHeadAttention

WRONG = Path(__file__).resolve().parents[2] / "submissions" / "wrong" / "ex07_attention_across_fields.py"
SEEDS = range(6)  # draws per wrong submission: the grader's seed is secret, so no draw may let one pass


def _wrong_variants() -> list:
    spec = importlib.util.spec_from_file_location("wrong_ex07", WRONG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = []
    for k, variant in enumerate(module.VARIANTS):
        for task, entry in variant.items():
            source, words = (entry, "") if isinstance(entry, str) else entry
            out.append(pytest.param(f"{task}-{k + 1}", task, source, words, id=f"{task}-{k + 1}"))
    return out


def _grade(task_name, fn, seed, watch_forbidden=True):
    task = EXERCISE.task(task_name)
    forbidden = task.forbidden if watch_forbidden else ()  # the references call the library itself
    return evaluate(task, lambda cases: [call_local(fn, c, forbidden) for c in cases], seed=seed)


# ----------------------------------------------------------------------------- references = library


def test_pooling_references_are_the_library_attention_pooling():
    g = torch.Generator().manual_seed(0)
    pool = AttentionPooling(8)
    with torch.no_grad():
        pool.key.bias.zero_()  # the task's W_k has no bias
    x, mask = torch.randn(3, 6, 8, generator=g), torch.arange(6)[None] < torch.tensor([6, 2, 4])[:, None]
    pooled, weights = pool(x, mask)
    with torch.no_grad():
        assert torch.allclose(_pooling_reference(x, pool.query, pool.key.weight, mask), pooled, atol=1e-6)
        # full sentences: the summariser's weights are attention pooling over the mean word vectors
        words = torch.randn(3, 6, 4, 8, generator=g)
        _, w = pool(words.mean(2))
        full = torch.ones(3, 6, 4, dtype=torch.bool)
        assert torch.allclose(_sentence_reference(words, full, pool.query, pool.key.weight), w, atol=1e-6)


def test_padded_words_and_sentences_are_left_out_of_the_sentence_weights():
    g = torch.Generator().manual_seed(1)
    words, query, W_k = torch.randn(1, 3, 4, 6, generator=g), torch.randn(6, generator=g), torch.randn(6, 6, generator=g)
    word_mask = torch.tensor([[[True, True, False, False], [False] * 4, [True] * 4]])
    got = _sentence_reference(words, word_mask, query, W_k)
    # the same document without its padding: sentence 0 of 2 words, sentence 2 whole, no sentence 1
    kept = torch.stack([words[0, 0, :2].mean(0), words[0, 2].mean(0)])  # (2, D)
    want = torch.softmax((kept @ W_k.T) @ query / 6**0.5, -1)
    assert got[0, 1] == 0 and torch.allclose(got[0, [0, 2]], want, atol=1e-6)


def test_patch_reference_is_the_library_patch_embedding():
    g = torch.Generator().manual_seed(2)
    embed = PatchEmbedding(img_size=12, patch_size=4, in_chans=3, embed_dim=5)
    images = torch.randn(2, 3, 12, 12, generator=g)
    with torch.no_grad():
        want = embed(images)
        assert torch.allclose(_patch_reference(images, embed.proj.weight, embed.proj.bias, 4), want, atol=1e-5)


def test_readout_reference_is_one_head_of_the_library_cross_attention():
    g = torch.Generator().manual_seed(3)
    mha = MultiHeadAttention(8, 1, bias=False, kdim=6, vdim=6)
    with torch.no_grad():
        mha.out_proj.weight.copy_(torch.eye(8))  # the task stops before the output projection
        queries, memory = torch.randn(2, 4, 8, generator=g), torch.randn(2, 16, 6, generator=g)
        want, _ = mha(queries, memory, memory)
        got = _readout_reference(queries, memory, mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight)
    assert torch.allclose(got, want, atol=1e-5)


def test_cost_and_match_references_are_the_library_hungarian_match():
    g = torch.Generator().manual_seed(4)
    for Q, K, M in [(4, 3, 2), (6, 3, 3), (5, 2, 5), (3, 3, 0)]:
        logits, boxes = torch.randn(Q, K + 1, generator=g), torch.rand(Q, 4, generator=g)
        classes, targets = torch.randint(0, K, (M,), generator=g), torch.rand(M, 4, generator=g)
        want = hungarian_match(logits[None], boxes[None], classes[None], targets[None])[0]  # (M,)
        assert torch.equal(_match_reference(_cost_reference(logits, boxes, classes, targets, 5.0)), want)


def test_match_cases_have_one_cheapest_pairing_that_greedy_misses():
    """Every case's optimum is unique (the grader compares query indices exactly), by a margin."""
    from itertools import permutations

    for seed in range(5):
        cases = EXERCISE.task("detr_match").cases(torch.Generator().manual_seed(seed))
        for case in cases:
            cost = case.args[0]
            Q, M = cost.shape
            totals = sorted(float(cost[list(p), list(range(M))].sum()) for p in permutations(range(Q), M))
            assert len(totals) == 1 or totals[1] - totals[0] > 1e-3, case.name
        greedy = cases[0].args[0].argmin(0)  # the trap: every target's cheapest query is one query
        assert len(set(greedy.tolist())) == 1


def test_graph_references_are_the_library_gat_and_gatv2_layers():
    g = torch.Generator().manual_seed(5)
    n, F_in, C = 6, 4, 3
    x = torch.randn(n, F_in, generator=g)
    adj = (torch.rand(n, n, generator=g) < 0.4) | torch.eye(n, dtype=torch.bool)
    adj[2] = False  # a node that reads nobody
    gat, gatv2 = GATLayer(F_in, C), GATv2Layer(F_in, C)
    with torch.no_grad():
        _, w = gat(x, adj)  # (1, n, n)
        _, w2 = gatv2(x, adj)
        for i in range(n):
            for j in range(n):
                got = _gat_reference(x, gat.lin.weight, gat.att_src[0], gat.att_dst[0], adj, i, j)
                assert torch.allclose(got, w[0, i, j], atol=1e-6)
                got2 = _gatv2_reference(x, gatv2.lin_src.weight, gatv2.lin_dst.weight, gatv2.att[0], adj, i, j)
                assert torch.allclose(got2, w2[0, i, j], atol=1e-6)  # the layer's biases start at zero


# ----------------------------------------------------------------------------- the grading


@pytest.mark.parametrize("task", [t.name for t in EXERCISE.tasks])
def test_each_reference_passes_every_draw(task):
    reference = EXERCISE.task(task).reference
    for seed in SEEDS:
        assert _grade(task, reference, seed, watch_forbidden=False).passed, (task, seed)


@pytest.mark.parametrize(("name", "task", "source", "words"), _wrong_variants())
def test_every_wrong_submission_fails_every_draw(name, task, source, words):
    namespace: dict = {}
    exec(source, namespace)  # our own test submissions
    for seed in SEEDS:
        result = _grade(task, namespace[task], seed)
        assert result.points == 0, (name, seed, result.message)
        assert words in result.message, (name, seed, result.message)  # the case that says what is wrong


def test_greedy_matching_is_told_what_is_special_about_the_case(check):
    def detr_match(cost):
        return cost.argmin(0)

    result = check("detr_match", detr_match, quiet=True)
    assert result.points == 0 and "cheapest query is the same query" in result.message


def test_a_node_that_reads_nobody_must_not_give_nan(check):
    def gatv2_coefficient(h, W_src, W_dst, a, adj, i, j):
        e = F.leaky_relu(h[i] @ W_dst.T + h @ W_src.T, 0.2) @ a
        return torch.softmax(e.masked_fill(~adj[i], float("-inf")), -1)[j]

    result = check("gatv2_coefficient", gatv2_coefficient, quiet=True)
    assert result.points == 0 and "NaN" in result.message and "reads no node at all" in result.message


def test_scaling_by_the_query_width_fails_where_the_widths_differ(check):
    def query_readout(queries, memory, W_q, W_k, W_v):
        q, k, v = queries @ W_q.T, memory @ W_k.T, memory @ W_v.T
        return torch.softmax(q @ k.transpose(-2, -1) / queries.shape[-1] ** 0.5, -1) @ v

    assert check("query_readout", query_readout, quiet=True).points == 0


def test_hints_come_only_on_request(check, capsys):
    def detr_cost(class_logits, pred_boxes, target_classes, target_boxes, box_weight):
        return -class_logits[:, target_classes] + box_weight * torch.cdist(pred_boxes, target_boxes, p=1)

    result = check("detr_cost", detr_cost, quiet=True)
    hint = EXERCISE.task("detr_cost").hint
    assert result.points == 0 and hint not in result.message
    assert check.hint("detr_cost") == hint and hint in capsys.readouterr().out


def test_the_library_matcher_is_refused(check):
    def detr_match(cost):
        import attn_course.apps.vision as vision

        # a made-up image whose cost is `cost`: all classes equally likely, the boxes in one line
        Q, M = cost.shape
        return vision.hungarian_match(torch.zeros(1, Q, 2), torch.zeros(1, Q, 4), torch.zeros(1, M, dtype=torch.long),
                                      torch.zeros(1, M, 4))[0]

    result = check("detr_match", detr_match, quiet=True)
    assert result.points == 0 and "hungarian_match" in result.message
