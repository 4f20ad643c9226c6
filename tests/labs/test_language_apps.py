"""attn_course.labs.language_apps: the interventions and breakdowns chapter 11 measures, on tiny runs."""

import pytest
import torch

from attn_course.labs.language_apps import (
    accuracy_by_moves,
    accuracy_with_uniform_weights,
    erase_sentences,
    mean_readout_guesses,
    mixed_cue_probe,
    run_sentiment,
    run_story_qa,
    run_summaries,
)


@pytest.fixture(scope="module")
def qa():
    return run_story_qa(steps=30, n_train=300, n_test=100, progress=False)


def test_uniform_weights_are_the_mean_read_out_of_the_same_trained_model(qa):
    model, d = qa.models["attention"], qa.data
    with torch.no_grad():
        m = model.sentence(torch.cat([model.person(d.people), model.place(d.places)], -1))
        m = m + model.time(torch.arange(d.people.shape[1]))  # (N, T, D)
        q = model.person(d.question)  # (N, D)
        logits = model.out(torch.cat([(model.value(m) / m.shape[1]).sum(1), q], -1))  # weights 1/T
    expected = (logits.argmax(-1) == d.answer).float().mean().item()
    assert accuracy_with_uniform_weights(qa) == pytest.approx(expected)
    assert model.attention  # the intervention is undone


def test_breakdowns_split_the_questions_and_stay_in_range(qa):
    moves = accuracy_by_moves(qa)
    assert set(moves.accuracy) == {"attention", "mean"} and 0 < moves.share_several < 1
    assert all(0 <= v <= 1 for acc in moves.accuracy.values() for v in acc.values())
    assert 0 < moves.random_pick < 1 and 0 < moves.support_share <= 1
    guesses = mean_readout_guesses(qa)
    assert 0 <= guesses["of_person"] <= guesses["in_story"] <= 1
    assert 1 / 6 <= guesses["guess_in_story"] <= guesses["guess_of_person"] <= 1


def test_the_time_ablation_keeps_the_time_embedding_at_zero():
    r = run_story_qa(steps=10, n_train=200, n_test=50, progress=False, time_embedding=False, readouts=("attention",))
    assert set(r.models) == {"attention"} and (r.models["attention"].time.weight == 0).all()
    with pytest.raises(ValueError, match="readouts"):
        run_story_qa(steps=1, readouts=("mean",))


def test_erasing_the_most_attended_sentences_hurts_most():
    r = run_summaries(steps=150, n_train=600, n_test=200, progress=False)
    erased = erase_sentences(r)
    assert set(erased) == {"none", "most attended", "least attended", "random"}
    assert erased["none"] == pytest.approx(r.topic_accuracy)
    assert erased["most attended"] < erased["least attended"]


def test_mixed_cue_reviews_hold_both_polarities():
    r = run_sentiment(steps=20, n_train=200, n_test=50, progress=False)
    assert r.accuracy_short.keys() == r.accuracy.keys() == r.models.keys() and r.cue_share["long"] < r.cue_share["short"]
    mixed = mixed_cue_probe(r, n=40)
    assert set(mixed.positive) == {"attention", "mean"}
    assert 0 < mixed.cue_weight <= 1 and 0 <= mixed.minority_share <= 0.5
