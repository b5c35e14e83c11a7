"""Learning-rate schedules as pure functions of the step: resuming needs only the step count."""

from __future__ import annotations

import math

from elunet.errors import ElunetError

# The paper's CIFAR-100 schedule (Sect. 4.3), by iteration at mini-batch 100: lr 0.01 until 35k,
# 0.005 until 85k, 0.0005 until 135k, 0.00005 until 165k. Factors of the base --lr.
PAPER_CIFAR_BOUNDARIES = (35_000, 85_000, 135_000)
PAPER_CIFAR_FACTORS = (1.0, 0.5, 0.05, 0.005)
ONECYCLE_WARMUP = 0.2  # fraction of all steps spent warming up
ONECYCLE_START = 1 / 25  # warm-up starts at lr/25
STEP_MILESTONES = (0.5, 0.75)  # fractions of all steps after which the step schedule divides lr by 10

SCHEDULES = {
    "onecycle": "linear warm-up from lr/25 over the first 20% of steps, then cosine decay to 0 (the default)",
    "cosine": "cosine decay from lr to 0",
    "step": "lr x0.1 after 50% and again after 75% of the steps",
    "paper-cifar": "the paper's CIFAR schedule by iteration: lr until 35k, lr/2 until 85k, lr/20 until 135k, lr/200 after (use --lr 0.01 --batch-size 100 --epochs 330)",
    "constant": "lr throughout",
}


def lr_at(schedule: str, step: int, total_steps: int, lr: float) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    progress = step / max(1, total_steps)
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        if progress < ONECYCLE_WARMUP:
            return lr * (ONECYCLE_START + (1 - ONECYCLE_START) * progress / ONECYCLE_WARMUP)
        return lr * 0.5 * (1 + math.cos(math.pi * (progress - ONECYCLE_WARMUP) / (1 - ONECYCLE_WARMUP)))
    if schedule == "step":
        # By step, not by epoch: whole-epoch milestones collapse to epoch 0 in runs shorter than 4 epochs.
        return lr * (0.1 ** sum(progress >= m for m in STEP_MILESTONES))
    if schedule == "paper-cifar":
        return lr * PAPER_CIFAR_FACTORS[sum(step >= b for b in PAPER_CIFAR_BOUNDARIES)]
    raise ElunetError(f"unknown schedule {schedule!r}", hint="choose one of: " + ", ".join(SCHEDULES))
