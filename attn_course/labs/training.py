"""The optimisation loop the labs' training runs share.

Each training function builds its own optimizer and learning-rate schedule and a closure that
draws a fresh batch and returns its loss; :func:`run_steps` runs the loop around it::

    loss = loss_for_step(i)          # the caller's batch and forward pass
    zero_grad, backward, (clip the gradient norm), optimizer.step(), schedule.step()

:func:`fit` is that loop with Adam at a constant rate on random minibatches of a fixed
training set (the Part III labs: ``language_apps``, ``vision_apps``, ``speech_recsys_graphs``).

:func:`train_side_by_side` runs several independent training runs at once, one process per
core: each run is overhead-bound on one thread (small tensors), so two cores train two models in
the time of one, with the same results as running them one after the other.
"""

from __future__ import annotations

import io
import multiprocessing
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = [
    "TrainHistory",
    "run_steps",
    "fit",
    "train_side_by_side",
]

# Set in a train_side_by_side worker: run_steps reports its progress here instead of drawing a bar.
_report: Callable[[str, int, int, float], None] | None = None


@dataclass
class TrainHistory:
    """What a timed training function returns (e.g. ``reversal.train_seq2seq``, ``head_count.train_model``)."""

    losses: list[float] = field(default_factory=list)  # training loss after each step
    seconds: float = 0.0  # wall-clock training time


def run_steps(
    model: nn.Module,
    loss_for_step: Callable[[int], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    steps: int,
    *,
    grad_clip: float | None = None,
    progress: bool = True,
    desc: str = "training",
    postfix_every: int = 1,
) -> list[float]:
    """Train ``model`` for ``steps`` steps; return the loss of every step.

    Step ``i`` calls ``loss_for_step(i)`` (which draws the batch and runs the forward pass),
    then zeroes the gradients, back-propagates, clips the gradient norm to ``grad_clip``
    (``None``: no clipping), and steps the optimizer and the schedule. The model is in train
    mode during the loop and in eval mode afterwards. With ``progress``, a tqdm bar shows the
    loss every ``postfix_every`` steps and at the last step.
    """
    losses: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress or _report is not None, mininterval=0.5)
    for i in bar:
        loss = loss_for_step(i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if progress and (i % postfix_every == 0 or i == steps - 1):
            if _report is not None:
                _report(desc, i + 1, steps, losses[-1])
            else:
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return losses


def fit(model, loss_for_batch, n: int, steps: int, batch: int = 64, lr: float = 3e-3, seed: int = 0,
        desc: str = "training", progress: bool = True) -> list[float]:
    """Adam on random minibatches of ``n`` training examples: ``loss_for_batch(index)`` gives the loss."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    return run_steps(model, lambda i: loss_for_batch(torch.randint(0, n, (batch,), generator=g)), opt, sched,
                     steps, progress=progress, desc=desc, postfix_every=20)


def _worker(name: str, model: nn.Module, run: Callable[[], Any], queue) -> None:
    """In a forked process: train, then send the trained weights and what ``run`` returned."""
    global _report
    _report = lambda desc, i, steps, loss: queue.put(("step", name, i, steps, loss))  # noqa: E731
    try:
        result = run()
        # As bytes: torch sends tensors through a queue as shared memory that dies with this process.
        buffer = io.BytesIO()
        torch.save((model.state_dict(), result), buffer)
        queue.put(("done", name, buffer.getvalue(), None))
    except BaseException:  # report anything, so that the parent never waits for a dead worker
        queue.put(("error", name, traceback.format_exc(), None))
    queue.close()
    queue.join_thread()


def train_side_by_side(jobs: dict[str, tuple[nn.Module, Callable[[], Any]]], workers: int = 2,
                       progress: bool = True) -> dict[str, Any]:
    """Run independent training runs at once, ``workers`` processes at a time; return each run's result.

    ``jobs[name] = (model, run)``: ``run()`` trains ``model`` in place (e.g. a ``functools.partial``
    of a lab's training function) and returns its history. Each run happens in a forked copy of
    this process, so it starts from exactly the model, data and generator state the caller built,
    and gives the same result as calling ``run()`` here; the trained weights are loaded back into
    ``model``. Jobs start in the given order (put the longest first). One tqdm bar per job shows
    its steps and loss. Where ``fork`` is unavailable (Windows, macOS) or ``workers == 1`` the runs
    simply happen one after the other in this process.
    """
    if workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if workers == 1 or len(jobs) < 2 or sys.platform != "linux":
        return {name: run() for name, (_, run) in jobs.items()}
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    pending, running, results = list(jobs), {}, {}
    bars = {name: tqdm(total=1, desc=str(name), disable=not progress, mininterval=0.5) for name in jobs}
    try:
        while pending or running:
            while pending and len(running) < workers:
                name = pending.pop(0)
                model, run = jobs[name]
                running[name] = ctx.Process(target=_worker, args=(name, model, run, queue), daemon=True)
                running[name].start()
            kind, name, payload, result = _next_message(queue, running)
            if kind == "step":  # payload = steps done; result = (steps, loss)
                bar = bars[name]
                bar.total = result[0]
                bar.update(payload - bar.n)
                bar.set_postfix(loss=f"{result[1]:.3f}", refresh=False)
                continue
            running.pop(name).join()
            if kind == "error":
                raise RuntimeError(f"training run {name!r} failed in its worker process:\n{payload}")
            state, results[name] = torch.load(io.BytesIO(payload), weights_only=False)
            jobs[name][0].load_state_dict(state)
    finally:
        for process in running.values():
            process.kill()
        for bar in bars.values():
            bar.close()
    return {name: results[name] for name in jobs}


def _next_message(queue, running: dict) -> tuple:
    """The next message from the workers, as ``(kind, name, payload, result)``; raises if one died silently."""
    import queue as queue_module

    while True:
        try:
            message = queue.get(timeout=1.0)
        except queue_module.Empty:
            dead = [n for n, p in running.items() if not p.is_alive() and p.exitcode not in (0, None)]
            if dead:
                raise RuntimeError(f"training run {dead[0]!r} died (exit code {running[dead[0]].exitcode})") from None
            continue
        if message[0] == "step":
            _, name, i, steps, loss = message
            return "step", name, i, (steps, loss)
        return message

