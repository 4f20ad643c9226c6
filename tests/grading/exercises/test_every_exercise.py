"""What every exercise promises, in one test per exercise: its tasks' points, enough cases with a
hint among them, forbidden calls and a hint for each task.

Each exercise's own file checks its references against the library and that plausible wrong
submissions lose their points; whole notebooks (the solution source: full marks; the learner
notebook: 0) are graded in tests/grading/test_grading.py.
"""

import pytest
import torch

from attn_course.grading.catalog import load_exercises

POINTS = {
    "ex01_softmax_attention": {"softmax": 2, "dot_scores": 1, "scaled_dot_scores": 1, "context_vector": 1, "attend": 2},
    "ex02_masks_and_scores": {"masked_softmax": 2, "general_score": 1, "additive_score": 2, "masked_attention": 2},
    "ex03_multihead_positions": {
        "split_heads": 1, "merge_heads": 1, "causal_mask": 1, "padding_mask": 1, "multi_head_self_attention": 2,
        "sinusoidal_encoding": 1, "apply_rope": 2},
    "ex04_decoder_step": {"additive_context": 2, "bahdanau_step": 3},
    "ex05_transformer_block": {"pre_norm_block": 3, "mask_for_mlm": 2, "next_token_batch": 1, "greedy_generate": 2},
    "ex06_find_the_bug": {"leakage_test": 4},
    "ex07_attention_across_fields": {
        "attention_pooling": 1, "sentence_weights": 2, "patch_embedding": 1, "query_readout": 1, "detr_cost": 2,
        "detr_match": 1, "gat_coefficient": 1, "gatv2_coefficient": 1},
    "ex08_kv_cache": {"top_p_filter": 2, "offset_causal_mask": 1, "cached_attention_step": 2, "RingCache": 3,
                      "PagedCache": 3},
    "ex09_efficient_attention": {
        "attention_flops": 1, "block_layout": 1, "block_sparse_attention": 3, "chunkwise_linear_attention": 3,
        "linear_attention_step": 1},
    "ex10_flash_attention": {"online_softmax_update": 2, "merge_partials": 1, "tiled_attention": 3, "flash_io": 1},
    "ex11_triton_flash": {"flash_forward": 4, "flash_lse": 2},
    "ex12_ring_attention": {"ring_step": 3, "zigzag_chunks": 1, "ring_attention_sim": 3},
    "ex13_serving": {"schedule_step": 3, "paged_decode": 2, "speculative_table": 2, "int8_per_token": 1,
                     "RadixTree": 3},
}
MIN_CASES: dict[str, int] = {}  # an exercise drawing fewer than 4 cases for a task (none now)


@pytest.mark.parametrize("exercise_id", list(POINTS))
def test_points_cases_and_hints(exercise_id):
    exercise = load_exercises()[exercise_id]
    assert {t.name: t.points for t in exercise.tasks} == POINTS[exercise_id]
    for task in exercise.tasks:
        cases = task.cases(torch.Generator().manual_seed(0))
        assert len(cases) >= MIN_CASES.get(exercise_id, 4) and any(c.hint for c in cases), task.name
        assert task.forbidden and task.hint, task.name
