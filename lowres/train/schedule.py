"""The learning-rate schedule: linear warm-up, then step drops or a cosine to zero, as a
function of the fraction of steps done (so it fits any run length), stepped per optimizer step.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Any

import torch

from lowres.train.config import TrainConfig


def lr_factor(
    step: int,
    total: int,
    *,
    schedule: str = "step",
    milestones: tuple[int, ...] = (),
    gamma: float = 0.1,
    warmup: float = 0.0,
) -> float:
    """The lr multiplier after ``step`` optimizer steps of ``total``.

    >>> [round(lr_factor(s, 8, schedule="cosine", warmup=0.25), 3) for s in range(8)]
    [0.5, 1.0, 1.0, 0.933, 0.75, 0.5, 0.25, 0.067]
    >>> [lr_factor(s, 8, milestones=(4, 6)) for s in (3, 4, 6)]
    [1.0, 0.1, 0.010000000000000002]
    """
    warm = round(warmup * total)
    if step < warm:
        return (step + 1) / warm
    if schedule == "cosine":
        span = max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / span)))
    return gamma ** sum(1 for m in milestones if step >= m)


def make_scheduler(optimizer: Any, config: TrainConfig, milestones: list[int], total: int) -> Any:
    if config.schedule == "step" and not config.warmup:
        # The original path, kept as it was so cached models and resumed runs stay bit-equal.
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=milestones, gamma=config.lr_gamma
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        functools.partial(
            lr_factor,
            total=total,
            schedule=config.schedule,
            milestones=tuple(milestones),
            gamma=config.lr_gamma,
            warmup=float(config.warmup),
        ),
    )


def scheduler_state(scheduler: Any) -> dict:
    state = scheduler.state_dict()
    # Counter -> plain dict: state.pt holds plain data only.
    if "milestones" in state:
        state["milestones"] = {int(k): int(v) for k, v in state["milestones"].items()}
    state.pop("lr_lambdas", None)
    return state


def restore_scheduler(scheduler: Any, state: dict) -> None:
    state = dict(state)
    if "milestones" in state:
        state["milestones"] = Counter({int(k): int(v) for k, v in state["milestones"].items()})
    if hasattr(scheduler, "lr_lambdas"):
        # The lambda is rebuilt from the config; only the step count comes from the state.
        state["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
    scheduler.load_state_dict(state)
