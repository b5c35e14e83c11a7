"""Progress within an epoch: a bar on a terminal, periodic lines everywhere else.

An epoch of the default recipe takes 40 s to several minutes on a CPU; where output goes to a
file, a pipe (`make demo | tee log`) or a CI log, a bar is invisible and the run would look hung,
so a line is logged instead at each tenth of the epoch, at most one per LINE_MIN_SECONDS.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

LINE_FRACTION = 0.1  # of the epoch's steps, between two progress lines
LINE_MIN_SECONDS = 10.0  # short epochs stay quiet: their per-epoch line comes soon enough
BAR_POSTFIX_EVERY = 50  # steps; reading the loss syncs a GPU


def on_a_terminal() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


class EpochProgress:
    """``update(done, mean_loss, lr)`` after each step; ``mean_loss`` is called only when it is shown."""

    def __init__(self, total: int, desc: str, images_per_step: int, log: Callable[[str], None]):
        self.total, self.desc, self.images_per_step, self.log = total, desc, images_per_step, log
        self.every = max(1, round(total * LINE_FRACTION))
        self.start = self.last_line = time.perf_counter()
        self.bar = None
        if on_a_terminal():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)

    def update(self, done: int, mean_loss: Callable[[], float], lr: float) -> None:
        if self.bar is not None:
            self.bar.update()
            if done % BAR_POSTFIX_EVERY == 0:
                self.bar.set_postfix(loss=f"{mean_loss():.4f}", lr=f"{lr:.4g}")
            return
        now = time.perf_counter()
        if done % self.every or done == self.total or now - self.last_line < LINE_MIN_SECONDS:
            return
        self.last_line = now
        elapsed = now - self.start
        self.log(
            f"{self.desc}  step {done}/{self.total} ({done / self.total:.0%})  train loss {mean_loss():.4f}  lr {lr:.4g} | "
            f"{done * self.images_per_step / elapsed:.0f} img/s, {elapsed:.0f}s, about {elapsed * (self.total - done) / done:.0f}s left"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
