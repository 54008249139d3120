"""Ordinary mistakes that are not input files, and Ctrl-C, through the real CLI.

Config mistakes (binary, malformed or mistyped YAML, directories, unknown keys, tasks and
presets, bad ``--set``) run in this process (``run_main``): one line, exit code 2, no traceback.
Signals use real processes: a Ctrl-C during start-up is never lost (the run stops after its
first step with a checkpoint and exit code 130 instead of training to the end), and a second
Ctrl-C aborts at once with a message saying which checkpoints are intact.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_main, set_args

NOISE = ("WARNING", "W1", "I1", "E1")


def assert_one_line_error(code: int, err: str, fragments: list[str]) -> str:
    assert "Traceback" not in err, err
    assert code == 2, (code, err)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(NOISE)]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------ config
CONFIGS = [
    ("binary", b"\x00\x01\xff\xfe\x89PNG binary", ["not a text file", "expected a YAML config"]),
    ("nul-bytes", b"train:\x00 {}\n", ["not a text file", "NUL"]),
    ("malformed", b"train: [1, 2\n", ["not valid YAML at line 2"]),
    ("bad-indent", b"train:\n  steps: 3\n bad: 1\n", ["not valid YAML at line 3"]),
    ("tab-indent", b"train:\n\tsteps: 3\n", ["not valid YAML"]),
    ("mistyped-value", b"train:\n  batch_size: abc\n", ["config key 'train.batch_size' = 'abc'", "integer"]),
    ("negative-value", b"train:\n  batch_size: -4\n", ["config key 'train.batch_size' = -4"]),
    ("section-not-mapping", b"train: 5\n", ["config key 'train' = 5"]),
    ("unknown-key", b"trian:\n  steps: 3\n", ["unknown config key 'trian'"]),
    ("unknown-nested-key", b"optim:\n  lr: 1e-3\n  momentun: 0.9\n", ["unknown config key 'optim.momentun'"]),
    ("top-level-list", b"- a\n- b\n", ["expected a mapping at the top level, got list"]),
    ("top-level-scalar", b"42\n", ["expected a mapping at the top level, got int"]),
    ("bad-date", b"name: 2024-13-45\n", ["a value cannot be read", "month must be in 1..12"]),
    ("python-tag", b"train: !!python/object/apply:os.system ['echo pwned']\n", ["not valid YAML"]),
]


@pytest.mark.parametrize("name, content, fragments", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_bad_config_file_is_one_line(name, content, fragments, tmp_path, capsys):
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    for argv in (["config", "show", "photoz", "--config", str(path)], ["train", "photoz", "--config", str(path),
                                                                         "--run-dir", str(tmp_path / "run")]):
        code, _, err = run_main(argv, capsys)
        line = assert_one_line_error(code, err, fragments)
        assert str(path) in line or "config key" in line, line
    assert not (tmp_path / "run").exists() and not (tmp_path / "pwned").exists()


def test_yaml_target_that_is_binary_or_has_no_task(tmp_path, capsys):
    """Commands that take a TARGET (task, YAML file or run directory) read the YAML first."""
    binary = tmp_path / "cfg.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = run_main(["schedule", str(binary), "--out", str(tmp_path / "lr.png")], capsys)
    assert_one_line_error(code, err, [str(binary), "not a text file"])
    no_task = tmp_path / "notask.yaml"
    no_task.write_text("train:\n  steps: 3\n")
    code, _, err = run_main(["schedule", str(no_task), "--out", str(tmp_path / "lr.png")], capsys)
    assert_one_line_error(code, err, [str(no_task), "'task' key"])
    assert not (tmp_path / "lr.png").exists()


ARGUMENTS = [
    (["config", "show", "photoz", "--config", "{tmp}"], ["--config {tmp}: is a directory"]),
    (["config", "show", "photoz", "--config", "{tmp}/missing.yaml"], ["--config {tmp}/missing.yaml: no such file"]),
    (["train", "nosuchtask"], ["unknown task 'nosuchtask'", "photoz"]),
    (["config", "show", "nosuchtask"], ["unknown task 'nosuchtask'"]),
    (["config", "show", "photoz", "--preset", "huge"], ["preset 'huge' is not defined for task 'photoz'"]),
    (["config", "show", "photoz", "--set", "train.steps"], ["--set 'train.steps': expected KEY=VALUE"]),
    (["config", "show", "photoz", "--set", "train.stepz=3"], ["unknown config key 'train.stepz'"]),
    (["config", "show", "photoz", "--set", "train.steps=many"], ["config key 'train.steps' = 'many'"]),
    (["config", "show", "photoz", "--set", "optim.lr=-1"], ["config key 'optim.lr' = -1"]),
    (["evaluate", "{tmp}"], ["{tmp} is not an astroflax run directory"]),
    (["evaluate", "{tmp}/nope"], ["{tmp}/nope"]),
    (["predict", "{tmp}", "--input", "{tmp}/missing.csv"], ["--input {tmp}/missing.csv: no such file"]),
    (["predict", "{tmp}", "--input", "{tmp}", "--output", "{tmp}/no/such/dir/p.csv"], ["directory {tmp}/no/such/dir"]),
    (["sample", "{tmp}", "--out", "{tmp}"], ["--out {tmp}: expected a .png file name"]),
    (["train", "photoz", "--steps", "3"], ["No such option: --steps"]),
]


@pytest.mark.parametrize("argv, fragments", ARGUMENTS, ids=[" ".join(a[:3]) for a, _ in ARGUMENTS])
def test_bad_arguments_are_one_line(argv, fragments, tmp_path, capsys):
    fill = lambda s: s.replace("{tmp}", str(tmp_path))  # noqa: E731
    code, _, err = run_main([fill(a) for a in argv], capsys)
    assert_one_line_error(code, err, [fill(f) for f in fragments])


def test_huge_batch_size_is_one_line_and_writes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run_main(["train", "photoz", "--run-dir", str(run_dir), "--set", "train.batch_size=1000000"], capsys)
    assert_one_line_error(code, err, ["config key 'train.batch_size' = 1000000",
                                      "larger than the training split (6988 examples)"])
    assert not run_dir.exists()


def test_debug_still_shows_the_traceback(tmp_path, capsys):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(Exception) as exc:
        run_main(["--debug", "config", "show", "photoz", "--config", str(path)], capsys)
    assert "not a text file" in str(exc.value)


def test_checkpoint_and_split_mistakes_on_a_real_run(tiny_run, tmp_path, capsys):
    run_dir = tiny_run("photoz")
    code, _, err = run_main(["evaluate", str(run_dir), "--checkpoint", "newest"], capsys)
    assert_one_line_error(code, err, ["newest"])
    code, _, err = run_main(["evaluate", str(run_dir), "--checkpoint", "999"], capsys)
    assert_one_line_error(code, err, ["999"])
    code, _, err = run_main(["evaluate", str(run_dir), "--split", "holdout"], capsys)
    assert_one_line_error(code, err, ["holdout"])


# ----------------------------------------------------------------------------- signals
# photoz reads its data in ~1 s, so start-up is short; 100,000 steps would take minutes.
LONG_RUN = ["model.hidden=[8]", "train.batch_size=64", "train.steps=100000", "train.eval_every=50000",
            "train.log_every=50000", "checkpoint.every=50000", "schedule.warmup_steps=1", "train.progress=false"]


def start_training(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "astroflax", "train", "photoz", "--run-dir", str(run_dir), *set_args(LONG_RUN)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def steps_on_disk(run_dir: Path) -> list[int]:
    ckpt = run_dir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


def test_ctrl_c_during_start_up_stops_after_the_first_step(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_training(run_dir)
    wait_for(lambda: (run_dir / "config.yaml").is_file(), proc)  # data and model built, not yet compiled
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert time.monotonic() - sent < 90, "did not stop promptly"
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert "SIGINT received during start-up" in err
    stopped = re.search(r"Stopped by SIGINT at step (\d+)/100000; checkpoint saved", err)
    assert stopped and int(stopped.group(1)) <= 1, err  # the loop stops before (or after) its first step
    assert "Finished at step" not in err
    assert steps_on_disk(run_dir) == [int(stopped.group(1))]


def test_ctrl_c_at_any_moment_of_start_up_is_never_swallowed(tmp_path):
    """Signals sent at different moments, from Python's start to the first step: every run stops
    with exit code 130 and no traceback, long before it could have trained to the end."""
    # Not earlier than 0.5 s: before the interpreter reaches astroflax's entry point (tens of ms,
    # more on a loaded machine) Python itself handles SIGINT, which no package code can change.
    # The three runs start together (one start-up's wall time instead of three), each signalled
    # at its own delay after the common start.
    delays = (0.5, 2.0, 4.0)
    procs, t0 = [start_training(tmp_path / f"run{k}") for k in range(len(delays))], time.monotonic()
    try:
        for proc, delay in zip(procs, delays):
            time.sleep(max(0.0, t0 + delay - time.monotonic()))
            proc.send_signal(signal.SIGINT)
        for k, (proc, delay) in enumerate(zip(procs, delays)):
            run_dir = tmp_path / f"run{k}"
            _, err = proc.communicate(timeout=120)
            # 130, or ended by the signal itself (what shells also report as 130): 5 of 60 runs
            # signalled at random moments 0.03-0.35 s after start, and once in CI at 0.5 s with
            # "interrupted" printed; which path ends it by the signal is not known yet.
            assert proc.returncode in (130, -signal.SIGINT), (delay, err)
            assert "Traceback" not in err, (delay, err)
            assert "Finished at step" not in err, (delay, err)
            assert err.strip().endswith("interrupted") or re.search(r"Stopped by SIGINT at step [01]/100000", err), err
            assert steps_on_disk(run_dir) in ([], [0], [1]), (delay, steps_on_disk(run_dir))
    finally:
        # A run that swallowed its Ctrl-C would otherwise train for the rest of the suite on one
        # of CI's two cores (seen once: the suite took 33 min instead of 17).
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_double_ctrl_c_exits_at_once_with_a_message(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_training(run_dir)
    wait_for(lambda: (run_dir / "config.yaml").is_file(), proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(NOISE)]
    # Either the second Ctrl-C cut the stop short, or the stop had already saved and the program
    # was exiting (seen in CI: the run set up, stopped and saved within the 0.2 s); then it ends
    # with "interrupted" or, in the interpreter's shutdown, is ignored. No traceback either way.
    twice = re.fullmatch(r"interrupted twice: stopped without saving; (no checkpoint had been written yet|"
                         r"checkpoints up to step [01] are intact)", lines[-1])
    stopped = any(re.fullmatch(r"Stopped by SIGINT at step [01]/100000; checkpoint saved\. Resume with:", line)
                  for line in lines)
    assert twice or stopped, err
    assert "Finished at step" not in err and steps_on_disk(run_dir) in ([], [0], [1])


def test_a_second_ctrl_c_silences_library_error_logs_until_the_guard_exits():
    """The second SIGINT may land inside Orbax's wait, which logs what it catches (a traceback)
    through absl before re-raising: absl is silenced then, and given back when the outermost
    guard exits (a notebook keeps its logs)."""
    import logging

    from astroflax.train.signals import GracefulStop, InterruptedTwice

    absl = logging.getLogger("absl")
    assert not absl.disabled
    with pytest.raises(InterruptedTwice):
        with GracefulStop():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            try:
                with GracefulStop(startup=True):  # nested guards: only the outermost gives it back
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.5)
            except InterruptedTwice:
                assert absl.disabled
                raise
    assert not absl.disabled


def test_double_ctrl_c_while_training_names_the_intact_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_training(run_dir)
    seen = ""
    while "Training photoz" not in seen:  # compiled; the loop starts right after this line
        line = proc.stderr.readline()
        assert line, proc.communicate()
        seen += line
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = seen + err
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert "SIGINT received: finishing this step and saving a checkpoint (Ctrl-C again to abort without saving)" in err
    last = [line for line in err.splitlines() if line.strip() and not line.startswith(NOISE)][-1]
    twice = re.fullmatch(r"interrupted twice: stopped without saving; (checkpoints up to step (\d+) are intact|"
                         r"no checkpoint had been written yet)", last)
    if twice:  # the second signal came before the stop's checkpoint was complete
        on_disk = steps_on_disk(run_dir)
        assert (int(twice.group(2)) == on_disk[-1]) if twice.group(2) else on_disk == [], (last, on_disk)
    else:  # the stop's checkpoint was written before the second signal arrived
        assert re.search(r"Stopped by SIGINT at step \d+/100000; checkpoint saved", err), err
    assert "Finished at step" not in err


def test_ctrl_c_while_the_program_exits_after_a_stop_keeps_exit_code_130(tmp_path):
    """Ctrl-C pressed again and again once the run has stopped and saved: the command is over, so
    the interpreter's shutdown ignores it (before, the process died of the signal, or printed a
    KeyboardInterrupt traceback from JAX's atexit clean-up)."""
    run_dir = tmp_path / "run"
    proc = start_training(run_dir)
    wait_for(lambda: (run_dir / "config.yaml").is_file(), proc)
    proc.send_signal(signal.SIGINT)
    seen = ""
    while "--resume" not in seen:  # the stop is saved and reported; the program is exiting
        line = proc.stderr.readline()
        assert line, proc.communicate()
        seen += line
    for _ in range(20):
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, seen + rest
    assert "Traceback" not in seen + rest, seen + rest
