"""A rich progress bar (epoch, step, samples/s, loss, ETA); plain log lines when not on a terminal."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainProgress:
    def __init__(self, total: int, start: int, batch_size: int, steps_per_epoch: int, enabled: bool, console: Console):
        self.console = console
        self.batch_size = batch_size
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.enabled = enabled and console.is_terminal
        self._last_t = time.perf_counter()
        self._last_step = start
        self.rate = 0.0
        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>7.0f} samples/s"),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not self.enabled,
        )
        self._task = self._progress.add_task("train", total=total, completed=start, epoch=self._epoch(start), rate=0.0, loss="-")

    def _epoch(self, step: int) -> int:
        return step // self.steps_per_epoch + 1

    def __enter__(self) -> "TrainProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def advance(self, step: int) -> None:
        self._progress.update(self._task, completed=step, epoch=self._epoch(step))

    def logged(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        if step > self._last_step:
            self.rate = (step - self._last_step) * self.batch_size / max(now - self._last_t, 1e-9)
        self._last_t, self._last_step = now, step
        self._progress.update(self._task, rate=self.rate, loss=f"{loss:.4f}")

    def line(self, text: str) -> None:
        self.console.print(text, highlight=False)
