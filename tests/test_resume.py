"""Exact resume with real processes and real signals.

An uninterrupted run is the reference. Other runs of the same config are stopped with SIGTERM
(graceful: finish the step, save, exit) or killed with SIGKILL (no warning, possibly while an
async save is being written), then resumed. Final parameters must be bitwise identical.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import run_cli, set_args

pytestmark = pytest.mark.slow  # real training processes, killed and resumed (~15 s each)

STEPS = 120
# The photoz MLP with dropout and noise augmentation: the resume must restore the data order, the
# augmentation and dropout keys and the optimiser; the trainer is the same for every task, and
# this model starts and compiles in a fraction of the transformer's time (these three tests took
# 225 s of the suite with the tiny transients run; bitwise resume of transients is still checked
# by tests/reliability/test_disk_full.py).
OVERRIDES = [
    "model.hidden=[16,16]", "model.head=gaussian", "model.dropout=0.1", "data.noise_augment=true",
    "train.batch_size=64", "train.eval_batch_size=512", "schedule.warmup_steps=4",
    f"train.steps={STEPS}",
    "train.log_every=1",
    "train.eval_every=20",
    "checkpoint.every=10",
    "checkpoint.keep_latest=3",
]


def train_args(run_dir: Path) -> list[str]:
    return ["train", "photoz", "--run-dir", str(run_dir), "--no-evaluate", *set_args(OVERRIDES)]


def final_params(run_dir: Path) -> dict[str, np.ndarray]:
    step_dir = run_dir / "checkpoints" / str(STEPS) / "state"
    assert step_dir.is_dir(), f"no final checkpoint in {run_dir}"
    restored = ocp.StandardCheckpointer().restore(step_dir.absolute())
    tree = {"params": restored["params"], "opt_state": restored["opt_state"], "step": restored["step"]}
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def last_logged_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            pass  # the line the trainer is writing right now
    return max(steps, default=0)


def start(run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "astroflax", *train_args(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300.0, poll: float = 0.0005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def assert_same(reference: dict, other: dict) -> None:
    assert reference.keys() == other.keys()
    for key in reference:
        assert reference[key].dtype == other[key].dtype, key
        assert np.array_equal(reference[key], other[key]), f"{key} differs after resume"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, np.ndarray]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_cli(*train_args(run_dir), check=True)
    return final_params(run_dir)


def test_sigterm_saves_and_resumes_bitwise(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    assert wait_for(lambda: last_logged_step(run_dir) >= 37, proc), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Stopped by SIGTERM" in stderr and "--resume" in stderr
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    stopped_at = steps[-1]
    assert 37 <= stopped_at < STEPS, steps  # saved at the step it stopped, not only at an interval
    # Resume with exactly the command the stopped run printed (no config flags needed).
    printed = stderr.split("Resume with:")[1].split()
    assert printed[:2] == ["astroflax", "train"] and "--resume" in printed
    resumed = run_cli(*printed[1:], check=True)
    assert f"from checkpoint step {stopped_at}" in resumed.stderr
    assert_same(reference, final_params(run_dir))
    # metrics.jsonl has each train step exactly once after the resume
    train_steps = [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()
                   if json.loads(l)["split"] == "train"]
    assert train_steps == list(range(1, STEPS + 1))


def test_sigkill_during_async_save_then_resume_bitwise(tmp_path, reference):
    run_dir = tmp_path / "run"
    ckpt_dir = run_dir / "checkpoints"
    proc = start(run_dir)
    # Kill the moment a checkpoint is being written (a temporary directory exists), after a
    # random number of completed checkpoints.
    rng = random.Random(os.getpid())
    wanted = rng.randint(2, 6)

    def saving_after_some() -> bool:
        if not ckpt_dir.is_dir():
            return False
        in_flight = [p.name for p in ckpt_dir.iterdir() if "tmp" in p.name]
        return any(int(n.split(".")[0]) >= 10 * wanted for n in in_flight)

    # An Orbax save of this model takes a few hundred ms; polling every 0.5 ms catches it.
    assert wait_for(saving_after_some, proc, timeout=300), "never saw a checkpoint being written"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert last_logged_step(run_dir) < STEPS
    # The interrupted save is not listed as a checkpoint.
    from astroflax.train.checkpoint import Checkpointer

    interrupted = [p.name for p in ckpt_dir.iterdir() if "tmp" in p.name]
    complete = Checkpointer(ckpt_dir, read_only=True).steps()
    assert all(int(n.split(".")[0]) not in complete for n in interrupted)
    resumed = run_cli(*train_args(run_dir), check=True)
    assert "Resuming" in resumed.stderr
    assert_same(reference, final_params(run_dir))
    leftovers = [p.name for p in ckpt_dir.iterdir() if "tmp" in p.name]
    assert not leftovers, leftovers


def test_sigkill_at_random_step_then_resume_bitwise(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    target = random.Random(os.getpid() + 1).randint(5, STEPS - 10)
    assert wait_for(lambda: last_logged_step(run_dir) >= target, proc), proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    run_cli(*train_args(run_dir), check=True)
    assert_same(reference, final_params(run_dir))
