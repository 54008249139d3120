"""Multi-process training with real processes on localhost (jax.distributed, gloo on CPU).

Same global batch whatever the process count: 2 processes x 2 devices train like 1 process x
4 devices (losses and parameters to 1e-5); a SIGTERM to one process stops both at the same
step with a checkpoint, which resumes bitwise on 2 processes and reshards onto 1 x 4 (and a
1 x 4 checkpoint onto 2 x 2); a
SIGKILL makes the survivor fail within the heartbeat timeout, and the last checkpoint resumes
on 1 process x 1 device; FSDP (on 2 x 2) trains like replicated parameters.
"""

from __future__ import annotations

import re
import shutil
import signal
import time

import pytest

from conftest import (
    HEARTBEAT_S,
    OVERRIDES,
    STEPS,
    assert_close,
    assert_states_close,
    checkpoint_steps,
    final_state,
    finish,
    launch,
    last_logged_step,
    run_together,
    train_losses,
    wait_for,
)

pytestmark = pytest.mark.slow  # real multi-process training runs


def test_two_processes_train_like_one(reference):
    one, two = reference("1x4"), reference("2x2")
    assert_close(train_losses(one), train_losses(two), "1 x 4 vs 2 x 2")
    # Validation: each process read its rows of every batch, the predictions were gathered.
    assert_close(train_losses(one, "val"), train_losses(two, "val"), "val_loss, 1 x 4 vs 2 x 2")
    assert_states_close(final_state(one), final_state(two), "final parameters, 1 x 4 vs 2 x 2")
    losses = train_losses(one)
    assert len(losses) == STEPS and losses[-1] < losses[0]  # it trained
    # Process 0 alone wrote the run's files, once.
    assert (two / "metrics.jsonl").read_text().count('"split": "train"') == STEPS


def _fsdp() -> tuple[list[str], dict | None]:
    """Overrides and environment that select FSDP parameter sharding."""
    return ["train.param_sharding=fsdp"], None


def _stopped_step(stderr: str) -> int:
    match = re.search(r"Stopped by SIGTERM at step (\d+)/", stderr)
    assert match, stderr[-3000:]
    return int(match.group(1))


def test_sigterm_to_one_process_stops_both_at_one_step_then_resumes(reference, tmp_path):
    run_dir = tmp_path / "run"
    procs = launch(run_dir, 2, 2)
    assert wait_for(lambda: last_logged_step(run_dir) >= 25, procs), finish(procs)
    procs[1].send_signal(signal.SIGTERM)  # not the coordinator
    results = finish(procs)
    assert [code for code, _ in results] == [143, 143], [e[-2000:] for _, e in results]
    stopped = {_stopped_step(stderr) for _, stderr in results}
    assert len(stopped) == 1, stopped  # both saved the same step
    step = stopped.pop()
    assert 25 <= step < STEPS and checkpoint_steps(run_dir)[-1] == step
    # Resumed at once on 2 processes and, from a copy, on 1 process x 4 devices (resharded); and
    # the reverse: the 1 x 4 reference's checkpoint at step 60 resumed on 2 processes x 2 devices.
    one = tmp_path / "one-process"
    shutil.copytree(run_dir, one)
    grown = tmp_path / "grown"
    shutil.copytree(reference("1x4"), grown)
    shutil.rmtree(grown / "checkpoints" / str(STEPS))
    two_err, one_err, grown_err = run_together([(run_dir, 2, 2, ("--resume",), None, None),
                                                (one, 1, 4, ("--resume",), None, None),
                                                (grown, 2, 2, ("--resume",), None, None)])
    assert f"from checkpoint step {step}" in one_err[0] and f"from checkpoint step {step}" in two_err[0]
    assert_close(train_losses(reference("2x2")), train_losses(one), "2 x 2 resumed on 1 x 4")
    assert "from checkpoint step 60" in grown_err[0], grown_err[0][-2000:]
    assert_close(train_losses(reference("1x4")), train_losses(grown), "1 x 4 resumed on 2 x 2")
    assert_states_close(final_state(reference("1x4")), final_state(grown), "1 x 4 resumed on 2 x 2")
    # On 2 processes: bitwise the uninterrupted 2-process run.
    ref, got = final_state(reference("2x2")), final_state(run_dir)
    assert ref.keys() == got.keys()
    for key in ref:
        assert ref[key].dtype == got[key].dtype and (ref[key] == got[key]).all(), f"{key} differs after resume"
    assert train_losses(run_dir) == train_losses(reference("2x2"))


def test_sigkill_of_one_fsdp_process_fails_the_other_fast_then_resume_on_one(reference, tmp_path):
    """Also FSDP vs replicated: this run splits parameters and optimiser state over the 4
    devices of 2 processes (each process writes its own shards of the checkpoint); its losses
    match the replicated 2 x 2 reference, before the kill and after the 1 x 1 resume."""
    run_dir = tmp_path / "run"
    extra, env = _fsdp()
    procs = launch(run_dir, 2, 2, extra=extra, env=env, heartbeat=HEARTBEAT_S)
    assert wait_for(lambda: 1 <= len(checkpoint_steps(run_dir)) and last_logged_step(run_dir) >= 35, procs), \
        finish(procs)
    procs[1].send_signal(signal.SIGKILL)
    t_kill = time.monotonic()
    results = finish(procs, timeout=HEARTBEAT_S + 60)
    waited = time.monotonic() - t_kill
    code, stderr = results[0]
    assert code != 0, stderr[-2000:]
    # Two ways to learn of the death, whichever comes first: the step's collective fails (gloo:
    # connection reset; astroflax's one-line error, exit 1) or JAX's coordination service misses
    # its heartbeats (JAX's fatal message, exit 134).
    assert ("lost contact with another process" in stderr and code == 1) or "another task died" in stderr \
        or "unhealthy" in stderr, stderr[-3000:]
    assert waited < HEARTBEAT_S + 30, f"the survivor took {waited:.0f} s to stop"
    last = checkpoint_steps(run_dir)[-1]
    before = train_losses(run_dir)[:last]
    assert_close(train_losses(reference("2x2"))[:last], before, "fsdp vs replicated, 2 x 2")
    # The last complete checkpoint (FSDP shards of 2 processes) resumes in this test process
    # (1 process, its 1 CPU device: no start-up to pay), replicated.
    import io

    import jax
    from rich.console import Console

    from astroflax.cli.common import resolve_config
    from astroflax.train.loop import train

    out = io.StringIO()
    cfg = resolve_config("photoz", None, None, [*OVERRIDES, *[o.replace("fsdp", "replicated") for o in extra]],
                         run_dir=run_dir, resume=True)
    result = train(cfg, resume=True, console=Console(file=out, width=200))
    assert f"from checkpoint step {last}" in out.getvalue() and result.step == STEPS
    assert_close(train_losses(reference("2x2")), train_losses(run_dir), f"2 x 2 fsdp resumed on 1 x {jax.device_count()}")
