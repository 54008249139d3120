"""The ``astroflax`` program's entry point: give the process a better allocator setting, then run
the CLI.

Why: XLA:CPU takes each step's temporary buffers from malloc and frees them at the end of the step.
glibc serves blocks this large with fresh ``mmap`` s, so every step touches newly mapped memory
and page-faults on each 4 KiB page (tens of thousands of minor faults a step, a third of the
transients step spent in the kernel). With ``glibc.malloc.hugetlb=1`` glibc asks for transparent
huge pages on that memory (``madvise``), so a fault maps 2 MiB instead of 4 KiB. glibc reads its
tunables only when a process starts, so the first process re-executes itself once with the
setting in its environment (the same PID: signals, srun and process managers are not disturbed).

Measured (transients train step, this 2-core machine, median of 3 rounds): quick preset on one
core 302 -> 173 ms a step (minor faults 32,546 -> 353 a step, kernel time 38% -> 12%), on two
cores 212 -> 124 ms; full preset on one core 853 -> 717 ms. Alternatives tried: jemalloc as
preloaded (a Debian package, not something pip can give every user) 293 ms with its defaults,
147 ms with page purging off; glibc with one arena, no mmap and no trimming 160 ms on quick but
745 ms on full and +29% peak RSS on two cores; large mmap/trim thresholds alone 292 ms (blocks
above 32 MiB are always mmap'd). Later (December 2026, step bench of tests' size, one run each):
adding ``arena_max=1:mmap_max=0:trim_threshold=4294967295`` to hugetlb removes the faults
(XLA runs a step on a worker thread, whose arena falls back to mmap for blocks over 64 MiB
whatever ``mmap_max`` says, so one arena is needed): full preset 238 -> 206 ms on one core and
169 -> 149 ms on two, but quick 60 -> 57 ms on one core and 41 -> 43 ms on two, the CNN 26.5 ->
27.5 ms, and peak RSS +5% to +36%; not adopted. ``benchmarks/vs_torch.py --allocator default``
re-measures it.

Kept out of :func:`astroflax.cli.main`, which tests and notebooks call in-process, where
re-executing would replace the caller. Set ``ASTROFLAX_ALLOCATOR=default`` to keep glibc's defaults;
a ``glibc.malloc.hugetlb`` already in ``GLIBC_TUNABLES`` is left as the user set it.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping

TUNABLES = "glibc.malloc.hugetlb=1"
_LAUNCHED = "ASTROFLAX_LAUNCHED"


def _on_glibc_linux() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:  # os.confstr is cheaper than platform.libc_ver(), which reads the interpreter binary
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError):
        return False


def allocator_env(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The environment to run JAX under, or None when ``environ`` needs no change (already set,
    opted out, or not glibc on Linux)."""
    environ = os.environ if environ is None else environ
    if environ.get("ASTROFLAX_ALLOCATOR", "").lower() == "default" or not _on_glibc_linux():
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in current:
        return None
    return {**environ, "GLIBC_TUNABLES": f"{current}:{TUNABLES}" if current else TUNABLES}


_START = {"interrupted": False}


def interrupted_at_start(signum, frame) -> None:
    """Ctrl-C while the program is still starting: nothing has started, so stop quietly with 130."""
    # Recorded as well as raised: a handler that runs inside a __del__ or a weakref callback
    # during an import has its exception printed and dropped, and the run would go on.
    _START["interrupted"] = True
    os.write(2, b"interrupted\n")
    raise SystemExit(130)


def interrupted_during_start_up() -> bool:
    """Whether :func:`interrupted_at_start` ran (and its exit was swallowed); true only once."""
    seen, _START["interrupted"] = _START["interrupted"], False
    return seen


def main() -> None:
    """Console entry point (``astroflax`` and ``python -m astroflax``)."""
    # A Ctrl-C before the CLI is imported must not print a traceback (astroflax.cli installs the
    # same handler when it is imported without this entry point, and replaces it in main()).
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupted_at_start)
    if os.environ.get(_LAUNCHED) == "1":
        # Re-executed: a Ctrl-C that came during the exec is pending (blocked below); now that the
        # handler is in place it is delivered and stops the program with 130.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    env = allocator_env()
    # _LAUNCHED: once only, even if something between exec and here drops GLIBC_TUNABLES again.
    if env is not None and sys.orig_argv and not os.environ.get(_LAUNCHED):
        # Block SIGINT over the exec. Unblocked, a Ctrl-C that reached Python's C-level handler
        # just before execve set a flag in the image execve then discarded: the signal was lost
        # and the run trained on (seen once in CI, three runs starting on two loaded cores). The
        # kernel keeps a blocked signal pending across execve; the new image unblocks it above.
        # pthread_sigmask runs any handler already due, so nothing is lost before the block.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**env, _LAUNCHED: "1"})
        except OSError:
            # cannot re-execute (an unusual interpreter or sandbox): run with glibc's defaults
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    from astroflax.cli import main as cli_main

    try:
        cli_main()
    finally:
        # The command is over, however it ended (its exit code is set): a Ctrl-C now lands in
        # the interpreter's shutdown (JAX's atexit clean-up) and printed a KeyboardInterrupt
        # traceback from inside an atexit callback. There is nothing left to stop or save.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
