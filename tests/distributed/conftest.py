"""Real multi-process training on localhost: launchers, readers and the shared reference runs.

Each process gets its own ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` and joins
with ``--coordinator localhost:<free port> --num-processes P --process-id I``. The reference
runs (1 process x 4 devices, 2 processes x 2 devices) are trained once per session and shared
by the xdist workers (a file lock, as in ``tests/reliability/conftest.py``).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

_PARENT = Path(__file__).resolve().parents[1] / "conftest.py"
_NAME = "astroflax_tests_conftest"
if _NAME not in sys.modules:  # the parent conftest sets the session's cache directory
    _spec = importlib.util.spec_from_file_location(_NAME, _PARENT)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)

from astroflax_tests_conftest import *  # noqa: E402,F401,F403
from astroflax_tests_conftest import set_args  # noqa: E402

# The tiniest photoz run. Steps take a few ms, so a signal needs enough of them to land mid-run
# (measured: a SIGTERM at step ~30 stops both processes 6 steps later). Each validation and
# checkpoint costs ~0.8 s, a process start ~10 s (imports): launches are what the tests cost.
STEPS = 90
OVERRIDES = ["model.hidden=[16]", "model.head=gaussian", "train.batch_size=64", f"train.steps={STEPS}",
             "train.eval_every=30", "checkpoint.every=30", "checkpoint.keep_latest=3", "train.log_every=1",
             "train.progress=false", "train.eval_batch_size=512"]

# One process needs no CLI: the run alone, as the CLI resolves it, without the HTML report
# that ``astroflax train --no-evaluate`` still writes (~7 s).
RUNNER = """
import sys
from pathlib import Path
from astroflax.cli.common import resolve_config
from astroflax.train.loop import train
run_dir, resume, overrides = Path(sys.argv[1]), sys.argv[2] == "resume", sys.argv[3:]
train(resolve_config("photoz", None, None, overrides, run_dir=run_dir, resume=resume or None),
      resume=resume or None)
"""
HEARTBEAT_S = 5  # the dead-process timeout of the SIGKILL test (the default is 60 s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_args(run_dir: Path, extra: list[str] | None = None) -> list[str]:
    return ["train", "photoz", "--run-dir", str(run_dir), "--no-evaluate", *set_args(OVERRIDES + (extra or []))]


def launch(run_dir: Path, processes: int, devices: int, *flags: str, extra: list[str] | None = None,
           env: dict | None = None, heartbeat: int | None = None) -> list[subprocess.Popen]:
    """Start one run of ``processes`` processes x ``devices`` devices (one process: no flags).
    ``heartbeat``: the dead-process timeout (default: astroflax's 60 s, which a loaded CI
    machine never trips)."""
    port = free_port()
    procs = []
    for pid in range(processes):
        full_env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **(env or {})}
        if processes == 1:
            resume = "resume" if "--resume" in flags else "auto"
            cmd = [sys.executable, "-c", RUNNER, str(run_dir), resume, *OVERRIDES, *(extra or [])]
        else:
            dist = ["--coordinator", f"localhost:{port}", "--num-processes", str(processes), "--process-id", str(pid),
                    *(["--heartbeat-timeout", str(heartbeat)] if heartbeat else [])]
            cmd = [sys.executable, "-m", "astroflax", *train_args(run_dir, extra), *dist, *flags]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env))
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    """(exit code, stderr) of every process; all are killed if one hangs past ``timeout``."""
    out = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            _, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append((p.returncode, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


def run(run_dir: Path, processes: int, devices: int, *flags: str, extra: list[str] | None = None,
        env: dict | None = None) -> list[str]:
    return run_together([(run_dir, processes, devices, flags, extra, env)])[0]


def run_together(runs: list[tuple]) -> list[list[str]]:
    """Several runs at once, each (run_dir, processes, devices, flags, extra, env): the tests'
    cost is mostly process start-up (imports), which overlaps well on 2 cores."""
    launched = [launch(d, p, n, *flags, extra=extra, env=env) for d, p, n, flags, extra, env in runs]
    out = []
    for procs in launched:
        results = finish(procs)
        for code, stderr in results:
            assert code == 0, f"exit {code}:\n{stderr[-3000:]}"
        out.append([stderr for _, stderr in results])
    return out


def train_losses(run_dir: Path, split: str = "train") -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] if split == "train" else r["val_loss"] for r in rows if r["split"] == split]


def last_logged_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    steps = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                steps.append(json.loads(line)["step"])
            except (ValueError, KeyError):
                pass
    return max(steps, default=0)


def wait_for(predicate, procs: list[subprocess.Popen], timeout: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if any(p.poll() is not None for p in procs):
            return False
        time.sleep(0.02)
    return False


def checkpoint_steps(run_dir: Path) -> list[int]:
    ckpt = run_dir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


def final_state(run_dir: Path, step: int = STEPS) -> dict[str, np.ndarray]:
    """Every array of a checkpoint as numpy, whatever topology wrote it."""
    import jax
    import orbax.checkpoint as ocp

    path = (run_dir / "checkpoints" / str(step) / "state").absolute()
    assert path.is_dir(), f"no checkpoint {step} in {run_dir}"
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(path)
    meta = getattr(getattr(meta, "item_metadata", meta), "tree", getattr(meta, "item_metadata", meta))
    args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), meta, is_leaf=lambda x: hasattr(x, "shape"))
    tree = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_close(a: list[float], b: list[float], what: str, rel: float = 1e-5) -> None:
    """Relative difference <= ``rel``: of the loss itself over the first 20 steps, then of
    max(|loss|, 1), since this Gaussian NLL crosses zero (measured: 7.6e-7 absolute at a loss
    of 0.037 after 34 steps, 1 x 4 vs 2 x 2; 3.7e-7 relative at most over the first 20)."""
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} losses"
    for step, (x, y) in enumerate(zip(a, b), start=1):
        scale = abs(x) if step <= 20 else max(abs(x), 1.0)
        assert abs(x - y) <= rel * scale, f"{what}, step {step}: {x} vs {y}"


def assert_states_close(a: dict, b: dict, what: str, rel: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if "params" in k:
            scale = max(float(np.max(np.abs(a[k]))), 1e-12)
            assert float(np.max(np.abs(a[k] - b[k]))) <= rel * scale, f"{what}: {k} differs"


def _shared_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    return (base.parent if base.name.startswith("popen-gw") else base) / "distributed-runs"


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """``reference(name) -> run directory``: "1x4" (one process, 4 devices) or "2x2" (two
    processes, 2 devices each), uninterrupted; both trained at once, once per session."""
    root = _shared_root(tmp_path_factory)
    root.mkdir(parents=True, exist_ok=True)

    def get(name: str) -> Path:
        with open(root / "references.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (root / "TRAINED").is_file():
                run_together([(root / "1x4", 1, 4, (), None, None), (root / "2x2", 2, 2, (), None, None)])
                (root / "TRAINED").write_text("ok\n")
        return root / name

    return get


__all__ = ["HEARTBEAT_S", "OVERRIDES", "STEPS", "assert_close", "assert_states_close", "checkpoint_steps",
           "final_state", "finish", "launch", "last_logged_step", "run", "run_together", "signal", "train_losses",
           "wait_for"]
