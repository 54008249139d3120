"""Graceful stop on SIGINT/SIGTERM: finish the step, checkpoint, then exit.

A single-process run needs its own handler: Orbax's preemption check relies on
``jax.distributed``. The handler only records the signal; the training loop looks at
:attr:`GracefulStop.requested` after every step. A second Ctrl-C raises
:class:`InterruptedTwice` (a ``KeyboardInterrupt``) at once.

No signal may be lost between the start of a command and the first step: the CLI enters a
``GracefulStop`` before it builds anything (data, model, compilation), and the loop's own
``GracefulStop`` is nested inside it. Nested instances share one record of the signals received,
so a Ctrl-C during start-up (which would otherwise raise ``KeyboardInterrupt`` wherever the
main thread happens to be, where a library may swallow it) is seen by the loop, which then
stops before (or right after) its first step with a checkpoint. The record is cleared when the outermost
instance is entered.

In a multi-process run (``jax.distributed``) SIGTERM belongs to JAX's preemption service: its
notifier tells every process, and the loop stops where
``CheckpointManager.reached_preemption`` agrees, so all processes save the same step. There
the guard handles SIGINT only, and a first Ctrl-C is handed on to that service as a SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

__all__ = ["GracefulStop", "InterruptedTwice", "cancel_deferred", "defer_while_importing", "use_preemption_service"]

#: Seconds between retries of an interrupt that arrived while a module was being imported.
IMPORT_RETRY_S = 0.05


def _importing(frame: FrameType | None) -> bool:
    """Whether the main thread is inside an import (a KeyboardInterrupt raised there can break
    the initialisation of a native extension such as jaxlib: ImportError or a crash) or inside a
    garbage-collector callback or finaliser, where Python prints "Exception ignored" and drops
    the exception (seen in CI: a second Ctrl-C raised in jax's ``_xla_gc_callback`` was lost)."""
    import gc

    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith("<frozen importlib") or code.co_name == "__del__" or code in callbacks:
            return True
        frame = frame.f_back
    return False


def defer_while_importing(frame: FrameType | None) -> bool:
    """True (and the SIGINT is delivered again ~50 ms later) when ``frame`` is inside an import;
    a handler that would raise returns instead, and raises on the later delivery."""
    if not _importing(frame):
        return False
    import _thread

    cancel_deferred()
    timer = threading.Timer(IMPORT_RETRY_S, _thread.interrupt_main)
    timer.daemon = True
    _DEFERRED.append(timer)
    timer.start()
    return True


_DEFERRED: list[threading.Timer] = []


def cancel_deferred() -> None:
    """Drop an interrupt still waiting for an import to finish (the command is ending anyway)."""
    while _DEFERRED:
        _DEFERRED.pop().cancel()


class InterruptedTwice(KeyboardInterrupt):
    """A second SIGINT while a stop was already pending: abort without saving."""


_PREEMPTION = {"service": False}  # SIGTERM is JAX's (a multi-process run): see use_preemption_service


def use_preemption_service(on: bool) -> None:
    """Leave SIGTERM to JAX's preemption notifier (set once ``jax.distributed`` is initialised)."""
    _PREEMPTION["service"] = on


def preemption_service() -> bool:
    return _PREEMPTION["service"]


class _Received:
    """The signals received while any GracefulStop is active (shared by nested instances)."""

    signum: int | None = None
    depth: int = 0
    in_loop: int = 0  # how many active instances are training loops (the rest are start-up guards)
    loops_entered: int = 0  # training loops entered since the outermost instance was
    silenced: bool = False  # absl's log silenced by a second Ctrl-C (see _handle)


def _handle(signum: int, frame: FrameType | None) -> None:
    if _Received.signum == signal.SIGINT and signum == signal.SIGINT:
        if defer_while_importing(frame):
            return
        # The exception may surface inside a library that logs what it catches before re-raising
        # (Orbax's wait_until_finished logs a traceback through absl): the user asked to abort,
        # the CLI prints one line, so those libraries' error logs are silenced until the
        # outermost GracefulStop exits (a notebook gets them back).
        logging.getLogger("absl").disabled = _Received.silenced = True
        raise InterruptedTwice
    if _Received.signum is None:
        _Received.signum = signum
        name = signal.Signals(signum).name
        again = " (Ctrl-C again to abort without saving)" if signum == signal.SIGINT else ""
        if _PREEMPTION["service"]:
            # Handed to JAX's preemption notifier: every process stops at the same step.
            _write_stderr(f"\n{name} received: all processes stop at a common step and save a checkpoint{again}\n")
            os.kill(os.getpid(), signal.SIGTERM)
        elif _Received.in_loop:
            _write_stderr(f"\n{name} received: finishing this step and saving a checkpoint{again}\n")
        elif not _Received.loops_entered:
            _write_stderr(f"{name} received during start-up: stopping (with a checkpoint) as soon as the run is "
                          f"set up{again}\n")
        else:
            _write_stderr(f"{name} received: stopping{again}\n")


def _write_stderr(text: str) -> None:
    try:
        os.write(2, text.encode())
    except OSError:
        pass


class GracefulStop:
    """Context manager that turns SIGINT/SIGTERM into :attr:`requested` (main thread only).

    ``startup=True`` marks the guard a command enters before building the run (the loop uses
    the default): it changes only the message printed when a signal arrives.
    """

    def __init__(self, startup: bool = False) -> None:
        self.startup = startup
        self._old: dict[int, object] = {}
        self._active = False

    @property
    def signum(self) -> int | None:
        return _Received.signum

    @property
    def requested(self) -> bool:
        return _Received.signum is not None

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is not threading.main_thread():
            return self
        if _Received.depth == 0:
            _Received.signum = None
            _Received.loops_entered = 0
        _Received.depth += 1
        _Received.in_loop += 0 if self.startup else 1
        _Received.loops_entered += 0 if self.startup else 1
        self._active = True
        # A Python SIGTERM handler would replace JAX's preemption notifier (a C handler).
        for sig in (signal.SIGINT,) if _PREEMPTION["service"] else (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, _handle)
        return self

    def __exit__(self, *exc) -> None:
        if not self._active:
            return
        for sig, old in self._old.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)  # type: ignore[arg-type]
        self._old.clear()
        _Received.depth -= 1
        _Received.in_loop -= 0 if self.startup else 1
        self._active = False
        if _Received.depth == 0 and _Received.silenced:
            logging.getLogger("absl").disabled = _Received.silenced = False

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""
