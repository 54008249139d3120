"""Shared test fixtures: tiny configs so that real training runs take seconds on 2 cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A compile cache private to the test session keeps runs independent of the user's cache.
os.environ.setdefault("ASTROFLAX_CACHE_DIR", str(REPO / ".pytest_cache" / "astroflax-cache"))

# CI starts with that cache empty, so compiling is much of the suite's time on a fresh machine
# (1300 s cold vs 810 s warm, measured). The tests' models are tiny, so XLA's CPU backend
# compiles with fewer LLVM passes (one CLI train/evaluate/predict test: 72 s -> 55 s cold,
# measured). Every run of a test session, in-process or in a subprocess, gets the same flags;
# subprocesses that set their own XLA_FLAGS (fake device counts) compile as a user's would.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

TINY_TRANSIENTS = [
    "data.max_len=32",
    "model.d_model=16",
    "model.num_heads=2",
    "model.num_layers=1",
    "train.batch_size=16",
    "train.eval_batch_size=256",
    "train.steps=24",
    "train.eval_every=8",
    "train.log_every=4",
    "checkpoint.every=8",
    "schedule.warmup_steps=4",
]


def set_args(overrides: list[str]) -> list[str]:
    args: list[str] = []
    for o in overrides:
        args += ["--set", o]
    return args


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "astroflax", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"astroflax {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """The real CLI entry point in this process (no second JAX start-up): (exit code, stdout, stderr)."""
    from astroflax.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY_TRANSIENTS)
