"""The bracket-language lab: the rule-checker, the grammar, and a short training run."""

import random

import pytest

from attn_course.gpt import GPT
from attn_course.labs.bracket_language import (
    BracketTask,
    check_brackets,
    default_model_config,
    sample_sentences,
    train_bracket_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("text, error", [
    ("( [ ] ) [ ( ) ] .", None),
    ("( ) .", None),
    ("( [ ) ] .", "')' at position 2 closes '[' from position 1"),
    (") .", "')' at position 0 closes nothing"),
    ("( ( .", "'.' at position 2 while '(' from position 1 is still open"),
    ("( )", "no '.' at the end"),
    ("( [", "'[' from position 1 is never closed"),
    (".", "empty sentence"),
    ("( ) . (", "tokens after '.' at position 2"),
    ("( x ) .", "unknown token 'x' at position 1"),
])
def test_check_brackets(text, error):
    assert check_brackets(text) == error


def test_check_brackets_limits():
    assert check_brackets("( ( ( ) ) ) .", max_depth=2) == "nested 3 deep at position 2, more than max_depth = 2"
    assert check_brackets("( ) ( ) ( ) .", max_pairs=2) == "more than max_pairs = 2 pairs"


def test_grammar_sentences_follow_the_rules():
    task = BracketTask(max_pairs=6, max_depth=3)
    rng = random.Random(0)
    sentences = [task.sentence(rng) for _ in range(300)]
    assert all(check_brackets(s, 3, 6) is None for s in sentences)
    assert max(len(s.split()) for s in sentences) == task.seq_len - 1
    batch = task.batch(4, rng)
    assert batch.shape == (4, task.seq_len)
    assert task.decode(task.encode(sentences[0])) == sentences[0]
    assert task.encode(task.decode(batch[0])) == [i for i in batch[0].tolist() if i != 0]


def test_short_training_learns_some_rules():
    task = BracketTask(max_pairs=4, max_depth=3)
    untrained = sample_sentences(GPT(default_model_config(task)).eval(), task, 100)
    model, history = train_bracket_model(task, steps=250, progress=False)
    assert history.losses[-1] < history.losses[0] - 0.5
    trained = sample_sentences(model, task, 100, temperature=0.7)
    assert trained.valid_fraction > untrained.valid_fraction + 0.3
    windowed = sample_sentences(model, task, 100, temperature=0.7, window=2)
    assert len(windowed.sentences) == 100
