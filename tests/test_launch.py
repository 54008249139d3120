"""The program's entry point re-executes itself once with glibc's huge-page tunable (astroflax/launch.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from astroflax.launch import TUNABLES, allocator_env

REPO = Path(__file__).resolve().parents[1]
# Prints what the process sees at start-up, then runs the CLI as the console script does. Run
# with -c, so a re-executed process runs this code again and prints a second line.
PROBE = (
    "import os, sys; print('start', os.getpid(), os.environ.get('GLIBC_TUNABLES'), file=sys.stderr, flush=True); "
    "sys.argv = ['astroflax', 'tasks']; from astroflax.launch import main; main()"
)


def _start_lines(env: dict[str, str]) -> tuple[list[list[str]], subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120)
    return [line.split() for line in proc.stderr.splitlines() if line.startswith("start ")], proc


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ASTROFLAX_ALLOCATOR", "ASTROFLAX_LAUNCHED")}


GLIBC = allocator_env({}) is not None  # glibc on Linux: the only place the tunable exists


def test_the_program_re_executes_once_with_the_tunable_in_the_same_process():
    lines, proc = _start_lines(_base_env())
    assert proc.returncode == 0, proc.stderr
    assert "photoz" in proc.stdout  # the command itself ran, after the re-execution
    if not GLIBC:  # elsewhere the program starts once, untouched
        assert [line[2] for line in lines] == ["None"], proc.stderr
        return
    assert len(lines) == 2, proc.stderr
    (_, pid0, first), (_, pid1, second) = lines
    assert first == "None" and second == TUNABLES
    assert pid0 == pid1  # exec, not a child process: signals and process managers see one PID


def test_user_tunables_are_kept_and_an_opt_out_is_respected():
    env = _base_env()
    lines, proc = _start_lines({**env, "ASTROFLAX_ALLOCATOR": "default"})
    assert proc.returncode == 0 and [line[2] for line in lines] == ["None"], proc.stderr
    lines, proc = _start_lines({**env, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert proc.returncode == 0 and [line[2] for line in lines] == ["glibc.malloc.hugetlb=0"], proc.stderr


def test_allocator_env_appends_to_other_tunables():
    if not GLIBC:  # no glibc: astroflax leaves the allocator alone
        assert allocator_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) is None
        return
    assert allocator_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"}) == {
        "GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{TUNABLES}", "X": "1"}
    assert allocator_env({"GLIBC_TUNABLES": TUNABLES}) is None
    assert allocator_env({"ASTROFLAX_ALLOCATOR": "DEFAULT"}) is None


# Blocks SIGINT, sends it to itself (so it is pending, as a Ctrl-C that arrives during the
# launcher's exec is), then becomes the program as its console script would.
PENDING_CTRL_C = (
    "import os, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}); "
    "os.kill(os.getpid(), signal.SIGINT); "
    "os.execv(sys.executable, [sys.executable, '-m', 'astroflax', 'tasks'])"
)


def test_a_ctrl_c_pending_over_the_exec_stops_the_program_with_130():
    """The launcher blocks SIGINT over its execve (a signal caught just before it would be lost
    with the old image); the new image must unblock it so it still stops the program."""
    proc = subprocess.run([sys.executable, "-c", PENDING_CTRL_C], capture_output=True, text=True,
                          env=_base_env(), cwd=REPO, timeout=120)
    if not GLIBC:  # no re-execution, so nothing unblocks what the probe blocked: the command runs
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 130, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.strip() == "interrupted" and "photoz" not in proc.stdout, proc.stderr


def test_the_launcher_blocks_sigint_only_over_its_exec(monkeypatch):
    """An exec that fails leaves SIGINT as it was, and the mask at the exec has SIGINT blocked."""
    import signal

    import astroflax.cli
    from astroflax import launch

    seen: dict[str, object] = {}

    def failing_execve(path, args, env):
        seen["mask"] = signal.pthread_sigmask(signal.SIG_BLOCK, set())
        raise OSError("exec refused")

    monkeypatch.setattr(launch.os, "execve", failing_execve)
    monkeypatch.setattr(astroflax.cli, "main", lambda: seen.setdefault("cli", True))
    monkeypatch.setattr(launch, "allocator_env", lambda: {"GLIBC_TUNABLES": TUNABLES})
    monkeypatch.delenv("ASTROFLAX_LAUNCHED", raising=False)
    previous = signal.getsignal(signal.SIGINT)
    try:
        launch.main()
    finally:
        signal.signal(signal.SIGINT, previous)  # main() installs its start-up handler
    assert seen.get("cli") is True
    assert signal.SIGINT in seen["mask"]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_a_start_up_ctrl_c_whose_exit_a_library_swallowed_still_stops_the_command(monkeypatch):
    """The start-up handler raising inside a __del__ (run by a garbage collection during an
    import) has its SystemExit printed and dropped by Python; the command must still not run."""
    import signal

    import pytest

    import astroflax.cli
    from astroflax.launch import interrupted_at_start

    dropped: list[BaseException] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_value))

    class Collected:
        def __del__(self):
            interrupted_at_start(signal.SIGINT, None)

    Collected()  # no reference kept: __del__ runs at once
    assert [type(e) for e in dropped] == [SystemExit]  # Python itself swallowed the exit
    ran: list[str] = []
    monkeypatch.setattr(astroflax.cli, "_main", lambda argv: ran.append("command"))
    with pytest.raises(SystemExit) as stopped:
        astroflax.cli.main(["tasks"])
    assert stopped.value.code == 130 and ran == []
    astroflax.cli.main(["tasks"])  # once only: the next command runs
    assert ran == ["command"]
