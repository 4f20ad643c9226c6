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
    "ex04_decoder_step": {"additive_context": 2, "bahdanau_step": 3},
    "ex05_transformer_block": {"pre_norm_block": 3, "mask_for_mlm": 2, "next_token_batch": 1, "greedy_generate": 2},
    "ex08_kv_cache": {"top_p_filter": 2, "cache_append": 1, "attend_one_query": 2, "kv_cache_bytes": 1, "repeat_kv": 1},
    "ex09_efficient_attention": {
        "attention_flops": 1, "block_layout": 1, "block_sparse_attention": 3, "chunkwise_linear_attention": 3,
        "linear_attention_step": 1},
    "ex10_flash_attention": {"online_softmax_update": 2, "merge_partials": 1, "tiled_attention": 3, "flash_io": 1},
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
