"""attn_course.utils.num_threads and best_seconds, and attn_course.labs.training.run_steps: the helpers the
training and timing functions share."""

import pytest
import torch
from torch import nn

from attn_course.labs.training import run_steps
from attn_course.utils import best_seconds, num_threads


@pytest.mark.threads(2)  # more than the function under test sets, so that restoring shows
def test_num_threads_sets_and_restores():
    before = torch.get_num_threads()
    with num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with num_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), num_threads(1):
        raise RuntimeError("restored even on an error")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_num_threads_rejects_non_positive_ints(bad):
    with pytest.raises(ValueError, match=r"num_threads must be a positive int or None"):
        with num_threads(bad, name="num_threads"):
            pass


@pytest.mark.parametrize("warmup", [True, False])
def test_best_seconds_runs_warmup_then_repeats_and_keeps_the_best(warmup):
    calls = []
    assert 0 <= best_seconds(lambda: calls.append(1), repeats=4, warmup=warmup) < 1
    assert len(calls) == 4 + warmup


def test_best_seconds_goes_on_until_min_seconds_and_takes_the_clock():
    ticks = iter(range(100))  # a clock that advances one unit per reading: every run takes 1
    calls = []
    assert best_seconds(lambda: calls.append(1), repeats=2, warmup=False, clock=lambda: next(ticks),
                        min_seconds=5) == 1
    assert len(calls) == 5  # past the 2 repeats, until 5 units were timed


@pytest.mark.parametrize("bad", [0, -2, 2.0, True])
def test_best_seconds_rejects_non_positive_repeats(bad):
    with pytest.raises(ValueError, match=r"repeats must be a positive int"):
        best_seconds(lambda: None, repeats=bad)


def _fit(grad_clip, postfix_every=1, progress=False):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(16, 3, generator=torch.Generator().manual_seed(1)), torch.ones(16, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    seen = []

    def loss_for_step(i):
        seen.append(i)
        return ((model(x) - y) ** 2).mean()

    losses = run_steps(model, loss_for_step, optimizer, schedule, 5, grad_clip=grad_clip, progress=progress,
                       postfix_every=postfix_every)
    return model, losses, seen


def test_run_steps_trains_and_returns_every_loss():
    model, losses, seen = _fit(None)
    assert seen == [0, 1, 2, 3, 4] and len(losses) == 5 and all(isinstance(v, float) for v in losses)
    assert losses[-1] < losses[0] and not model.training


def test_run_steps_grad_clip_changes_the_steps():
    _, free, _ = _fit(None)
    _, clipped, _ = _fit(1e-3, postfix_every=2, progress=True)
    assert clipped[0] == free[0] and clipped[1] != free[1]


def _regression_job(seed: int, steps: int = 30):
    """A tiny model and a run that trains it with run_steps (returns the losses)."""
    from attn_course.labs.training import run_steps

    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=g)
    y = x.sum(-1, keepdim=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)

    def run():
        return run_steps(model, lambda i: ((model(x) - y) ** 2).mean(), opt, sched, steps, desc=f"job {seed}",
                         postfix_every=5)
    return model, run


def test_side_by_side_equals_one_after_the_other():
    from attn_course.labs.training import train_side_by_side

    alone = {s: _regression_job(s) for s in (1, 2, 3)}
    expected = {s: run() for s, (_, run) in alone.items()}
    jobs = {s: _regression_job(s) for s in (1, 2, 3)}
    got = train_side_by_side(jobs, workers=2, progress=False)
    assert list(got) == [1, 2, 3]
    for s in (1, 2, 3):
        assert got[s] == expected[s]  # the same losses, step by step
        for p, q in zip(jobs[s][0].parameters(), alone[s][0].parameters()):
            assert torch.equal(p, q)  # the trained weights came back into the caller's model


def test_side_by_side_reports_a_failed_run():
    from attn_course.labs.training import train_side_by_side

    def broken():
        raise ValueError("no data")

    jobs = {"fine": _regression_job(1), "broken": (torch.nn.Linear(1, 1), broken)}
    with pytest.raises(RuntimeError, match="(?s)'broken' failed.*no data"):
        train_side_by_side(jobs, progress=False)
    with pytest.raises(ValueError, match="workers must be a positive int"):
        train_side_by_side(jobs, workers=0)
