"""Each chapter shows the source of the mechanism it teaches, where it teaches it.

A chapter shows a mechanism with ``show_source(name)`` (``attn_course.utils``), which renders the
package's own code in Jupyter, Colab and the HTML book. The table lists what each page must
show; the static checks read the notebooks, the ``book`` checks read the built HTML. Where an
exercise practises the mechanism, the page points to the exercise before it shows the code, so
the exercise is not spoiled.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from attn_course.utils import show_source, source_of

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))

# (chapter, the name as the page passes it to show_source, the exercise that practises it or None)
MECHANISMS = [
    ("03_scoring", "AdditiveScore.forward", "ex02_masks_and_scores"),
    ("04_scores_to_context", "masked_softmax", "ex01_softmax_attention"),
    ("04_scores_to_context", "scaled_dot_product_attention", "ex01_softmax_attention"),
    ("05_attention_seq2seq", "BahdanauDecoder.step", "ex04_decoder_step"),
    ("05_attention_seq2seq", "LuongDecoder.attend", None),
    ("07_multihead_attention", "split_heads", "ex03_multihead_positions"),
    ("07_multihead_attention", "merge_heads", "ex03_multihead_positions"),
    ("07_multihead_attention", "MultiHeadAttention.forward", "ex03_multihead_positions"),
    ("08_positional_information", "apply_rope", "ex03_multihead_positions"),
    ("08_positional_information", "alibi_bias", None),
    ("10_encoder_vs_decoder", "TransformerBlock.forward", "ex05_transformer_block"),
    ("10_encoder_vs_decoder", "next_token_batch", "ex05_transformer_block"),
    ("10_encoder_vs_decoder", "TransformerDecoder.generate", "ex05_transformer_block"),
    ("11_attention_in_language", "AttentionPooling.forward", "ex07_attention_across_fields"),
    ("11_attention_in_language", "StoryReader.forward", None),
    ("12_attention_in_vision", "PatchEmbedding.forward", "ex07_attention_across_fields"),
    ("12_attention_in_vision", "VisionTransformer.forward", "ex07_attention_across_fields"),
    ("12_attention_in_vision", "SpatialCaptioner._step", None),
    ("12_attention_in_vision", "ObjectQueryDetector.forward", "ex07_attention_across_fields"),
    ("12_attention_in_vision", "hungarian_match", "ex07_attention_across_fields"),
    ("13_speech_recsys_graphs", "FrameEncoder.forward", None),
    ("13_speech_recsys_graphs", "SASRec.forward", None),
    ("13_speech_recsys_graphs", "GATLayer.scores", "ex07_attention_across_fields"),
    ("13_speech_recsys_graphs", "GATLayer.forward", "ex07_attention_across_fields"),
    ("13_speech_recsys_graphs", "GATv2Layer.scores", "ex07_attention_across_fields"),
    ("14_autoregressive_decoding", "Block.forward", None),
    ("14_autoregressive_decoding", "generate", None),
    ("14_autoregressive_decoding", "top_p_filter", "ex08_kv_cache"),
    ("14_autoregressive_decoding", "sampling_distribution", "ex08_kv_cache"),
    ("15_kv_cache", "KVCache.update", "ex08_kv_cache"),
    ("15_kv_cache", "DynamicCache", "ex08_kv_cache"),
    ("15_kv_cache", "StaticCache", "ex08_kv_cache"),
    ("15_kv_cache", "GroupedQueryAttention.forward", "ex08_kv_cache"),
    ("15_kv_cache", "GPT._attention_mask", None),
    ("15_kv_cache", "PackedLinear.forward", None),
    ("16_shrinking_the_cache", "kv_cache_bytes", None),
    ("16_shrinking_the_cache", "repeat_kv", None),
    ("16_shrinking_the_cache", "grouped_query_attention", None),
    ("16_shrinking_the_cache", "SlidingWindowCache._store", "ex08_kv_cache"),
    ("16_shrinking_the_cache", "PagedCache.fork", "ex08_kv_cache"),
    ("16_shrinking_the_cache", "PagedCache._prepare_append", "ex08_kv_cache"),
    ("16_shrinking_the_cache", "PagedCache._slots", "ex08_kv_cache"),
    ("17_loading_gpt2", "load_gpt2_state_dict", None),
    ("18_quadratic_wall", "attention_flops", "ex09_efficient_attention"),
    ("18_quadratic_wall", "naive_attention", None),
    ("19_sparse_attention", "sliding_window_mask", "ex09_efficient_attention"),
    ("19_sparse_attention", "mask_to_layout", "ex09_efficient_attention"),
    ("19_sparse_attention", "block_sparse_attention", "ex09_efficient_attention"),
    ("20_linear_attention", "linear_attention", "ex09_efficient_attention"),
    ("20_linear_attention", "linear_attention_step", "ex09_efficient_attention"),
    ("20_linear_attention", "causal_linear_attention_chunkwise", "ex09_efficient_attention"),
    ("21_online_softmax_tiling", "online_softmax_update", "ex10_flash_attention"),
    ("21_online_softmax_tiling", "merge_partials", "ex10_flash_attention"),
    ("21_online_softmax_tiling", "tiled_attention_numpy", "ex10_flash_attention"),
    ("21_online_softmax_tiling", "blockwise_attention", "ex10_flash_attention"),
    ("21_online_softmax_tiling", "flash._tiled_rows", "ex10_flash_attention"),
    ("22_flash_attention_triton", "flash_attention", "ex11_triton_flash"),
    ("22_flash_attention_triton", "ta._attn_fwd", "ex11_triton_flash"),
    ("22_flash_attention_triton", "ta._attn_fwd_inner", "ex11_triton_flash"),
    ("22_flash_attention_triton", "tw.vector_add", None),
    ("22_flash_attention_triton", "tw._softmax_kernel", None),
    ("22_flash_attention_triton", "ta._attn_bwd_dkdv_inner", None),
    ("22_flash_attention_triton", "ta._attn_bwd_dq_inner", None),
    ("22_flash_attention_triton", "ta._attn_bwd_dkdv", None),
    ("22_flash_attention_triton", "FlashAttentionFunction", None),
    ("23_ring_attention", "ring_attention", "ex12_ring_attention"),
    ("25_decode_attention", "split_k_partials", None),
    ("25_decode_attention", "merge_splits", None),
    ("25_decode_attention", "paged_decode", "ex13_serving"),
    ("25_decode_attention", "td._split_k_kernel", None),
    ("25_decode_attention", "td._paged_kernel", None),
    ("24_continuous_batching", "StaticScheduler.schedule", None),
    ("24_continuous_batching", "ContinuousScheduler.schedule", "ex13_serving"),
    ("24_continuous_batching", "ContinuousScheduler._preempt_last", "ex13_serving"),
    ("24_continuous_batching", "BlockAllocator.grow", "ex13_serving"),
    ("24_continuous_batching", "PagedRunner.step", None),
    ("28_prefix_caching", "RadixCache.match_prefix", "ex13_serving"),
    ("28_prefix_caching", "RadixCache.insert", "ex13_serving"),
    ("28_prefix_caching", "RadixCache.evict", None),
    ("28_prefix_caching", "generate_with_prefix_cache", None),
]


def cells(chapter: str) -> list[dict]:
    nb = json.loads((ROOT / "chapters" / f"{chapter}.ipynb").read_text(encoding="utf-8"))
    return [{**c, "text": "".join(c["source"])} for c in nb["cells"]]


def _shows(cell: dict, name: str) -> bool:
    if cell["cell_type"] != "code":
        return False
    calls = re.findall(r"show_source\(([^)]*)\)", cell["text"])
    return any(re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", args) for args in calls)


@pytest.mark.parametrize("chapter, name, exercise", MECHANISMS)
def test_chapter_shows_the_mechanism_after_pointing_to_its_exercise(chapter, name, exercise):
    cs = cells(chapter)
    shown = [i for i, c in enumerate(cs) if _shows(c, name)]
    assert shown, f"chapters/{chapter}.ipynb does not call show_source({name}) in any code cell"
    if exercise:
        pointers = [i for i, c in enumerate(cs) if c["cell_type"] == "markdown" and exercise in c["text"]]
        assert pointers, f"chapters/{chapter}.ipynb never points to its exercise {exercise}"
        assert pointers[0] < shown[0], f"{chapter} shows {name} before it points to {exercise}"


def test_source_of_heads_each_object_with_its_file_and_keeps_indentation():
    from attn_course.scoring import AdditiveScore

    text = source_of(AdditiveScore.forward)
    assert text.startswith("# AdditiveScore.forward: attn_course/scoring.py, line ")
    assert "\ndef forward(self" in text and "\n    " in text
    assert "def forward" in re.sub(r"<[^>]+>", "", show_source(AdditiveScore.forward)._repr_html_())
    with pytest.raises(TypeError, match="cannot show the source"):
        source_of(len)
    with pytest.raises(TypeError, match="at least one"):
        source_of()


@pytest.mark.book
@pytest.mark.skipif(not (HTML / "index.html").exists(), reason=f"no built book at {HTML}")
@pytest.mark.parametrize("chapter, name, exercise", MECHANISMS)
def test_the_built_page_shows_the_code(chapter, name, exercise):
    html = (HTML / "chapters" / f"{chapter}.html").read_text(encoding="utf-8")
    words = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))
    defined = name.split(".")[-1]
    assert re.search(rf"# [\w.]*\b{defined}: attn_course/", words), f"{chapter}.html does not show the source of {name}"
    assert f"def {defined}(" in words or f"class {defined}" in words  # a function/method or a class
