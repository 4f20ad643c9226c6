"""Part III language, speech and recommendation models: shapes, masks and what the data plants."""

import pytest
import torch

from attn_course.apps.recsys import SASRec, hit_rate, last_item_scores, make_histories, popularity_scores
from attn_course.apps.speech import FrameEncoder, ListenAttendSpell, make_speech_data
from attn_course.apps.text import (
    AttentionPooling,
    MeanPooling,
    PoolingClassifier,
    SentenceScorer,
    StoryReader,
    make_cue_word_data,
    make_document_data,
    make_story_data,
)
from attn_course.attention import scaled_dot_product_attention


def test_attention_pooling_is_the_library_attention_with_one_learned_query():
    torch.manual_seed(0)
    pool = AttentionPooling(6)
    x = torch.randn(3, 5, 6)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])
    pooled, w = pool(x, mask)
    q = pool.query.expand(3, 1, 6)
    ref, ref_w = scaled_dot_product_attention(q, pool.key(x), x, mask[:, None])
    torch.testing.assert_close(pooled, ref[:, 0])
    torch.testing.assert_close(w, ref_w[:, 0])
    assert (w[~mask] == 0).all()
    torch.testing.assert_close(pooled[2], x[2, 0])  # one real token: the pool is that token


def test_mean_pooling_ignores_padding_and_bad_masks_are_named():
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [True] * 4])
    pooled, w = MeanPooling(3)(x, mask)
    torch.testing.assert_close(pooled[0], x[0, :2].mean(0))
    with pytest.raises(ValueError, match="mask"):
        MeanPooling(3)(x, mask[:, :3])
    with pytest.raises(ValueError, match="x"):
        AttentionPooling(4)(x)


def test_cue_word_data_plants_cues_of_the_label_polarity():
    d = make_cue_word_data(50, torch.Generator().manual_seed(0))
    assert d.cue.any(-1).all() and not (d.cue & ~d.mask).any()
    cue_ids = d.tokens[d.cue]
    rows = d.cue.nonzero()[:, 0]
    positive = cue_ids <= 3
    assert (positive == (d.labels[rows] == 1)).all()
    logits, w = PoolingClassifier(len(d.vocab), 2)(d.tokens, d.mask)
    assert logits.shape == (50, 2) and w.shape == d.tokens.shape


def test_story_support_is_the_last_sentence_about_the_person():
    d = make_story_data(40, torch.Generator().manual_seed(0))
    for i in range(40):
        about = [t for t in range(6) if d.people[i, t] == d.question[i]]
        assert int(d.support[i]) == about[-1]
        assert d.answer[i] == d.places[i, about[-1]]
    for attention in (True, False):
        logits, w = StoryReader(8, 6, attention=attention)(d.people, d.places, d.question)
        assert logits.shape == (40, 6)
        torch.testing.assert_close(w.sum(-1), torch.ones(40))


def test_documents_plant_the_topic_word_in_the_key_sentences():
    d = make_document_data(20, torch.Generator().manual_seed(0))
    assert d.key.sum(-1).eq(2).all()
    has_topic = (d.words == d.topic[:, None, None]).any(-1)
    assert (has_topic == d.key).all()
    logits, w = SentenceScorer(d.vocab_size, d.num_topics)(d.words)
    assert logits.shape == (20, 4) and w.shape == (20, 10)


def test_speech_frames_follow_the_labels_and_both_spellers_run():
    d = make_speech_data(8, torch.Generator().manual_seed(0))
    assert (d.frame_lengths >= 3 * d.label_lengths).all() and (d.frame_lengths <= 6 * d.label_lengths).all()
    out, final, mask = FrameEncoder(12, 16)(d.frames, d.frame_lengths)
    assert out.shape[1] == d.frames.shape[1] // 2 and (out[~mask] == 0).all()
    for attention in (True, False):
        model = ListenAttendSpell(d.vocab_size, attention=attention)
        logits, w = model(d.frames, d.frame_lengths, d.labels)
        assert logits.shape == (8, d.labels.shape[1], d.vocab_size)
        assert (w is None) != attention
        tokens, _ = model.transcribe(d.frames, d.frame_lengths, 3)
        assert tokens.shape == (8, 3)


def test_histories_interleave_two_series_and_baselines_score():
    h = make_histories(30, torch.Generator().manual_seed(0), noise=0.0)
    V = h.num_items
    assert ((h.items[:, 2:] - 1 - (h.items[:, :-2] - 1 + 1) % (V - 1)) == 0).all()
    scores, maps = SASRec(V)(h.items)
    assert scores.shape == (30, h.items.shape[1], V) and maps[0].shape == (30, 2, 12, 12)
    assert torch.triu(maps[0][0, 0], 1).abs().max() == 0  # causal: no weight on the future
    assert popularity_scores(h.items, V)[0] < 0 and last_item_scores(h.items, V).shape == (V, V)
    assert hit_rate(torch.eye(5), torch.arange(5), k=1) == 1.0
