"""Graceful stop on SIGINT/SIGTERM: finish the step, checkpoint, then exit.

A single-process run needs its own handler: Orbax's preemption check relies on
``jax.distributed``. A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class GracefulStop:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""
