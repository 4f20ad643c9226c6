"""The optimisation loop the labs' training runs share.

Each training function builds its own optimizer and learning-rate schedule and a closure that
draws a fresh batch and returns its loss; :func:`run_steps` runs the loop around it::

    loss = loss_for_step(i)          # the caller's batch and forward pass
    zero_grad, backward, (clip the gradient norm), optimizer.step(), schedule.step()

:func:`fit` is that loop with Adam at a constant rate on random minibatches of a fixed
training set (the Part III labs: ``language_apps``, ``vision_apps``, ``speech_recsys_graphs``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = [
    "TrainHistory",
    "run_steps",
    "fit",
]


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
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=0.5)
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
