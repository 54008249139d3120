"""Periodic work in the training loop, registered with an interval (levanter's
``add_hook(fn, every=n)``, big_vision's ``itstime``), so the loop body stays a screen long."""

from __future__ import annotations

from typing import Callable


class Hooks:
    """``add(fn, every=n)``: call ``fn(step)`` when ``step`` is a multiple of ``n`` (or of any of
    several intervals) and on the last step. Hooks run in the order they were added."""

    def __init__(self) -> None:
        self._hooks: list[tuple[Callable[[int], None], tuple[int, ...]]] = []

    def add(self, fn: Callable[[int], None], every: int | tuple[int, ...]) -> None:
        intervals = (every,) if isinstance(every, int) else tuple(every)
        if not intervals or any(n < 1 for n in intervals):
            raise ValueError(f"hook intervals must be >= 1, got {every!r}")
        self._hooks.append((fn, intervals))

    def run(self, step: int, last: bool) -> None:
        for fn, intervals in self._hooks:
            if last or any(step % n == 0 for n in intervals):
                fn(step)
