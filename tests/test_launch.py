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
