"""Damaged checkpoints are skipped, moved aside and the previous good step is used (issue 9).

One tiny transients run (24 steps, a checkpoint every 8, keep_latest 2, keep_best 1) is trained
once per session. Each corruption mode damages a copy of it the way a crash, a full disk or bit
rot would. Then, through the real CLI (in this process, `run_main`), `evaluate --checkpoint
latest`, `evaluate --checkpoint best` and `train --resume` must exit 0 using the previous good
step, print a warning naming the damaged step and what is wrong, and move the step to
checkpoints/damaged/<step>-<reason>/; the resumed run must finish, bitwise identical to the
undamaged one. Every mode is also checked at the library level (`load_run`, `restore_latest`),
which is fast; the full CLI matrix of all modes is marked slow (one mode runs by default).
"""

from __future__ import annotations

import errno
import json
import math
import random
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_TRANSIENTS, run_main, set_args

STEPS = 24
OVERRIDES = [*TINY_TRANSIENTS, "checkpoint.keep_latest=2", "checkpoint.keep_best=1", "train.progress=false"]


def train_argv(run_dir: Path, *more: str) -> list[str]:
    return ["train", "transients", "--run-dir", str(run_dir), "--no-evaluate", *set_args(OVERRIDES), *more]


def kept_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def val_loss(run_dir: Path, step: int) -> float:
    meta = json.loads((run_dir / "checkpoints" / str(step) / "meta" / "metadata").read_text())
    return float(meta["val_metrics"]["val_loss"])


def best_order(run_dir: Path, steps: list[int]) -> list[int]:
    """Best first, as the checkpointer ranks them (lowest val_loss; on a tie the later step)."""
    return sorted(steps, key=lambda s: (val_loss(run_dir, s), -s))


def params_of(run_dir: Path, step: int) -> dict[str, np.ndarray]:
    import orbax.checkpoint as ocp

    tree = ocp.StandardCheckpointer().restore((run_dir / "checkpoints" / str(step) / "state").absolute())
    leaves = jax.tree_util.tree_flatten_with_path(tree["params"])[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _main(argv: list[str]) -> int:
    from astroflax.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("integrity") / "base"
    assert _main(train_argv(run_dir)) == 0
    steps = kept_steps(run_dir)
    # keep_latest 2 (16, 24) plus the best; 8 is kept only if it is the best.
    assert steps[-2:] == [16, 24] and set(steps) <= {8, 16, 24}, steps
    return run_dir


def copy_of(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest)
    return dest


# ---------------------------------------------------------------------------- corruptions
def _data_file(step_dir: Path) -> Path:
    """The largest array-data file of the step (OCDBT keeps them in `d/` directories)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def truncate_data_file(step_dir: Path) -> None:
    f = _data_file(step_dir)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def random_bytes_data_file(step_dir: Path) -> None:
    f = _data_file(step_dir)
    f.write_bytes(random.Random(9).randbytes(f.stat().st_size))


def delete_metadata(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").unlink()


def empty_step_dir(step_dir: Path) -> None:
    for p in list(step_dir.iterdir()):
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def truncate_meta_json(step_dir: Path) -> None:
    f = step_dir / "meta" / "metadata"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def nan_params(step_dir: Path) -> None:
    """Replace the step by a real checkpoint (written by Checkpointer.save) whose params are NaN."""
    from astroflax.config import CheckpointConfig
    from astroflax.runs import load_run
    from astroflax.train.checkpoint import Checkpointer

    run_dir, step = step_dir.parents[1], int(step_dir.name)
    state = load_run(run_dir, step).state
    state = state.replace(params=jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), state.params))
    meta = json.loads((step_dir / "meta" / "metadata").read_text())
    data = json.loads((step_dir / "data" / "metadata").read_text())
    shutil.rmtree(step_dir)
    ckpt = Checkpointer(step_dir.parent, CheckpointConfig(keep_latest=10, keep_best=0))
    ckpt.save(step, state, data, meta, None, allow_non_finite=True)
    ckpt.close()
    assert (step_dir / "state").is_dir()


def garbage_without_checksums(step_dir: Path) -> None:
    """Random bytes over the OCDBT tree of a step that has no checksum record (an older step, or
    one killed between commit and recording): Orbax itself must notice."""
    (step_dir / "astroflax_checksums.json").unlink()
    for f in (step_dir / "state" / "d").iterdir():
        f.write_bytes(random.Random(3).randbytes(f.stat().st_size))


# mode -> (corrupt, text the warning must contain, reason in the moved directory's name)
MODES = {
    "truncated-data-file": (truncate_data_file, "is truncated (", "truncated"),
    "random-bytes-data-file": (random_bytes_data_file, "does not match the checksum", "checksum"),
    "missing-metadata": (delete_metadata, "metadata file meta/metadata is missing", "missing-meta"),
    "empty-step-dir": (empty_step_dir, "the step directory is empty", "empty"),
    "truncated-meta-json": (truncate_meta_json, "meta/metadata is not readable JSON", "bad-meta"),
    "nan-params": (nan_params, "non-finite values (NaN/Inf) in params", "non-finite"),
    "garbage-without-checksums": (garbage_without_checksums, "its arrays cannot be read", "unreadable-arrays"),
}


def damage(run_dir: Path, step: int, mode: str) -> None:
    MODES[mode][0](run_dir / "checkpoints" / str(step))


def assert_set_aside(run_dir: Path, step: int, mode: str, stderr: str, rewritten: bool = False) -> None:
    """The warning names the step and what is wrong; the step sits in checkpoints/damaged/ and
    is gone from the listing (unless the resumed run has written that step anew)."""
    _, text, reason = MODES[mode]
    ckpts = run_dir / "checkpoints"
    warning = [line for line in stderr.splitlines() if f"checkpoint step {step} in " in line and "is damaged" in line]
    assert warning, stderr
    assert text in warning[0] and "moved to" in warning[0], warning[0]
    assert (ckpts / str(step)).exists() == rewritten
    moved = ckpts / "damaged" / f"{step}-{reason}"
    assert moved.is_dir() and (moved / "DAMAGED.txt").is_file(), sorted(p.name for p in (ckpts / "damaged").iterdir())
    assert "Traceback" not in stderr


# -------------------------------------------------------------- library level, every mode
@pytest.mark.parametrize("mode", list(MODES))
def test_load_run_and_restore_latest_fall_back(base, tmp_path, capsys, mode):
    from astroflax.config import CheckpointConfig
    from astroflax.runs import load_run
    from astroflax.train.checkpoint import Checkpointer, abstract_like

    run_dir = copy_of(base, tmp_path / "run")
    damage(run_dir, 24, mode)
    run = load_run(run_dir, "latest")
    assert run.step == 16
    assert_set_aside(run_dir, 24, mode, capsys.readouterr().err)
    # The resume path on a second copy: the walk newest -> oldest in the writable checkpointer.
    run_dir2 = copy_of(base, tmp_path / "run2")
    damage(run_dir2, 24, mode)
    ckpt = Checkpointer(run_dir2 / "checkpoints", CheckpointConfig(keep_latest=2, keep_best=1))
    step, state, data_state, meta = ckpt.restore_latest(abstract_like(run.state))
    ckpt.close()
    assert (step, meta["step"], data_state["iterator"]["next_index"]) == (16, 16, 16)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(run.state.params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert [e["event"] for e in ckpt.events][:1] == ["checkpoint_damaged"]
    assert_set_aside(run_dir2, 24, mode, capsys.readouterr().err)


# ------------------------------------------------------------------------ the real CLI
# Through the CLI for two kinds of damage, one per detector (checksums; the non-finite check):
# the fallback after detection is one code path, and every mode is detected by the load and
# restore test above (the other five modes cost about 90 s of test time here, measured warm).
@pytest.mark.parametrize("mode", ["random-bytes-data-file", pytest.param("nan-params", marks=pytest.mark.slow)])
def test_cli_resume_and_evaluate_fall_back(base, tmp_path, capsys, mode):
    # evaluate --checkpoint latest: the latest step is damaged, the previous one is used.
    run_dir = copy_of(base, tmp_path / "latest")
    damage(run_dir, 24, mode)
    code, _, err = run_main(["evaluate", str(run_dir), "--checkpoint", "latest"], capsys)
    assert code == 0, err
    assert json.loads((run_dir / "eval" / "test.json").read_text())["checkpoint_step"] == 16
    assert_set_aside(run_dir, 24, mode, err)

    # evaluate --checkpoint best: the best step is damaged, the next best is used.
    order = best_order(base, kept_steps(base))
    run_dir = copy_of(base, tmp_path / "best")
    damage(run_dir, order[0], mode)
    code, _, err = run_main(["evaluate", str(run_dir), "--checkpoint", "best"], capsys)
    assert code == 0, err
    assert json.loads((run_dir / "eval" / "test.json").read_text())["checkpoint_step"] == order[1]
    assert_set_aside(run_dir, order[0], mode, err)

    # train --resume: restarts from step 16 and finishes, bitwise identical to the undamaged run.
    run_dir = copy_of(base, tmp_path / "resume")
    damage(run_dir, 24, mode)
    code, _, err = run_main(train_argv(run_dir, "--resume"), capsys)
    assert code == 0, err
    assert "from checkpoint step 16 of 24" in err and f"Finished at step {STEPS}" in err, err
    assert_set_aside(run_dir, 24, mode, err, rewritten=True)
    reference, resumed = params_of(base, 24), params_of(run_dir, 24)
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert np.array_equal(reference[key], resumed[key]), f"{key} differs after the resume"


# ------------------------------------------------------------------ errors that are not fallbacks
def test_an_explicit_damaged_step_is_an_error_naming_the_good_ones(base, tmp_path, capsys):
    run_dir = copy_of(base, tmp_path / "run")
    damage(run_dir, 24, "truncated-meta-json")
    code, _, err = run_main(["evaluate", str(run_dir), "--checkpoint", "24"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: --checkpoint 24: checkpoint step 24 in ")
    assert "is damaged: its metadata meta/metadata is not readable JSON" in lines[0]
    assert lines[0].endswith(f"checkpoints that pass the file checks: {[s for s in kept_steps(base) if s != 24]}")
    assert (run_dir / "checkpoints" / "24").is_dir()  # asked for explicitly: reported, not moved


def test_a_checkpoint_of_another_config_does_not_match_and_is_not_called_damaged(base, tmp_path, capsys):
    run_dir = copy_of(base, tmp_path / "run")
    cfg = run_dir / "config.yaml"
    text = cfg.read_text()
    assert "d_model: 16" in text
    cfg.write_text(text.replace("d_model: 16", "d_model: 24"))
    code, _, err = run_main(["evaluate", str(run_dir), "--checkpoint", "latest"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"checkpoint step 24 in {run_dir.absolute() / 'checkpoints'} does not match this model/config" in lines[0]
    assert "damaged" not in lines[0]
    assert kept_steps(run_dir) == kept_steps(base) and not (run_dir / "checkpoints" / "damaged").exists()


def test_no_good_checkpoint_left_is_one_clear_error(base, tmp_path, capsys):
    run_dir = copy_of(base, tmp_path / "run")
    for step in kept_steps(run_dir):
        damage(run_dir, step, "empty-step-dir")
    code, _, err = run_main(["evaluate", str(run_dir), "--checkpoint", "best"], capsys)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: no usable checkpoint in {run_dir.absolute() / 'checkpoints'}: ")
    for step in kept_steps(base):
        assert f"step {step}: the step directory is empty" in last
        assert (run_dir / "checkpoints" / "damaged" / f"{step}-empty").is_dir()


# --------------------------------------------------- ranking, retention and backups (no model)
def _tiny_state(value: float) -> dict:
    return {"params": {"w": jnp.full((4,), value, jnp.float32)}, "step": jnp.int32(int(value))}


def _cfg(**kw):
    from astroflax.config import CheckpointConfig

    return CheckpointConfig(**{"every": 1, "keep_latest": 2, "keep_best": 1, **kw})


def _save(ckpt, step: int, val: float | None) -> None:
    metrics = {"val_loss": val} if val is not None else None
    ckpt.save(step, _tiny_state(step), {"iterator": {"next_index": step}},
              {"step": step, "val_metrics": metrics}, metrics)


def test_best_skips_nan_metrics_and_unreadable_metadata_and_survives_a_reopen(tmp_path):
    from astroflax.train.checkpoint import Checkpointer

    d = tmp_path / "checkpoints"
    ckpt = Checkpointer(d, _cfg(keep_latest=3), warn=lambda m: None)
    for step, val in [(1, 0.30), (2, 0.20), (3, float("nan")), (4, float("inf"))]:
        _save(ckpt, step, val)
    ckpt.close()
    assert Checkpointer(d, read_only=True).steps() == [2, 3, 4]  # latest 3 + best (2)
    (d / "2" / "meta" / "metadata").write_text('{"step": 2, "val_metr')  # the best one's metadata breaks
    ro = Checkpointer(d, _cfg(), read_only=True, warn=lambda m: None)
    assert ro.best_step("val_loss", "min") is None  # 3 is NaN, 4 is Inf, 2 is unreadable
    # Reopened for a resume, the best checkpoint is still known and kept by the retention.
    (d / "2" / "meta" / "metadata").write_text(json.dumps({"step": 2, "val_metrics": {"val_loss": 0.2}}))
    ckpt = Checkpointer(d, _cfg(), warn=lambda m: None)
    for step, val in [(5, 0.5), (6, 0.6)]:
        _save(ckpt, step, val)
    ckpt.close()
    assert Checkpointer(d, read_only=True).steps() == [2, 5, 6]
    assert Checkpointer(d, read_only=True).best_step("val_loss", "min") == 2


def test_backup_receives_every_kth_checkpoint_and_restore_falls_back_to_it(tmp_path):
    from astroflax.train.checkpoint import Checkpointer, abstract_like

    d, b = tmp_path / "checkpoints", tmp_path / "backup"
    warnings: list[str] = []
    ckpt = Checkpointer(d, _cfg(keep_latest=2, keep_best=0), backup_dir=b, backup_every=2, warn=warnings.append)
    for step in range(1, 7):
        _save(ckpt, step, 1.0 / step)
    ckpt.close()
    assert Checkpointer(d, read_only=True).steps() == [5, 6]
    assert sorted(int(p.name) for p in b.iterdir() if p.name.isdigit()) == [4, 6]  # commits 2, 4, 6; latest 2 kept
    assert not [p for p in b.iterdir() if not p.name.isdigit()]  # no partial copies left
    target = abstract_like(_tiny_state(0.0))

    # The primary copy of step 6 is damaged: the backup's copy of step 6 is used.
    empty_step_dir(d / "6")
    ckpt = Checkpointer(d, _cfg(keep_latest=2, keep_best=0), backup_dir=b, warn=warnings.append)
    step, state, _, _ = ckpt.restore_latest(target)
    ckpt.close()
    assert step == 6 and float(state["params"]["w"][0]) == 6.0
    assert any("checkpoint step 6" in w and "is damaged" in w for w in warnings)
    assert any(f"using the backup copy of checkpoint step 6 from {b}" in w for w in warnings)
    assert (d / "damaged" / "6-empty").is_dir()

    # The primary directory is gone altogether: restore from the backup alone.
    shutil.rmtree(d)
    ro = Checkpointer(d, read_only=True, backup_dir=b, warn=warnings.append)
    assert ro.available_steps() == [4, 6]
    assert ro.restore_latest(target)[0] == 6


def test_checksums_and_backups_are_made_beside_the_loop_and_reported_on_its_thread(tmp_path, monkeypatch):
    """Hashing a committed step (and copying it to the backup) runs in a thread, not in the next
    ``save``; what that thread notes (a failed backup) reaches the caller's warnings and events."""
    import threading

    import astroflax.train.checkpoint as checkpoint

    hashed_on = []
    real = checkpoint.write_checksums

    def recording(step_dir):
        hashed_on.append(threading.current_thread())
        real(step_dir)

    monkeypatch.setattr(checkpoint, "write_checksums", recording)
    backup = tmp_path / "backup"
    backup.write_text("a file where the backup directory should be")  # every backup fails
    warnings: list[str] = []
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", _cfg(keep_latest=3, keep_best=0),
                                   backup_dir=backup, backup_every=1, warn=warnings.append)
    for step in (1, 2):
        _save(ckpt, step, 1.0)
    ckpt.wait()
    assert len(hashed_on) == 2 and threading.current_thread() not in hashed_on
    for step in (1, 2):  # recorded in full once wait() returns
        assert (tmp_path / "checkpoints" / str(step) / checkpoint.CHECKSUM_FILE).is_file()
    assert [w for w in warnings if "could not back up checkpoint step" in w and str(backup) in w] != []
    assert {e["step"] for e in ckpt.events if e["event"] == "backup_failed"} == {1, 2}
    ckpt.close()
    assert checkpoint.Checkpointer(tmp_path / "checkpoints", read_only=True).verify(
        2, checkpoint.abstract_like(_tiny_state(0.0))).step == 2


def test_error_classification_for_retries_and_full_disks():
    from astroflax.train.checkpoint import is_disk_full, is_transient

    enospc = OSError(errno.ENOSPC, "No space left on device")
    assert is_disk_full(enospc) and not is_transient(enospc)
    tensorstore_full = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/x/d/1": [OS error 28: No space left on device]')
    assert is_disk_full(tensorstore_full) and not is_transient(tensorstore_full)
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = enospc
    assert is_disk_full(wrapped)
    for transient in (OSError(errno.EIO, "Input/output error"), OSError(errno.EAGAIN, "try again"),
                      ValueError("UNAVAILABLE: connection reset by peer"), TimeoutError(errno.ETIMEDOUT, "timed out")):
        assert is_transient(transient) and not is_disk_full(transient), transient
    for permanent in (ValueError("Requested shape (3,) is not compatible"), PermissionError(errno.EACCES, "denied"),
                      KeyError("params")):
        assert not is_transient(permanent) and not is_disk_full(permanent), permanent


def test_a_non_finite_state_is_never_written(tmp_path):
    from astroflax.errors import CheckpointError
    from astroflax.train.checkpoint import Checkpointer

    d = tmp_path / "checkpoints"
    ckpt = Checkpointer(d, _cfg(), warn=lambda m: None)
    bad = {"params": {"w": jnp.array([1.0, math.nan, math.inf, 2.0], jnp.float32)}, "step": jnp.int32(1)}
    with pytest.raises(CheckpointError, match=r"refusing to write checkpoint step 1 .*non-finite values \(NaN/Inf\) in params/w \(2 of 4\)"):
        ckpt.save(1, bad, {}, {"step": 1}, None)
    ckpt.close()
    assert Checkpointer(d, read_only=True).steps() == []


def test_the_non_finite_check_flags_nan_and_inf_and_nothing_else():
    """A cheap gate (``sum(leaf * 0)``) decides whether to count: no NaN or Inf may slip past it,
    in any float type, and finite values whose plain sum overflows are not reported."""
    from astroflax.train.checkpoint import nonfinite_leaves

    tree = {
        "big": jnp.array([3e38, 3e38, 3e38], jnp.float32),  # sum(x) is Inf; the values are finite
        "nan": jnp.array([1.0, math.nan, 2.0, math.nan], jnp.float32),
        "inf": jnp.array([[-math.inf, 0.0]], jnp.float32),
        "half": jnp.array([math.nan, 1.0], jnp.bfloat16),
        "empty": jnp.zeros((0, 3), jnp.float32),
        "ints": jnp.array([1, 2], jnp.int32),
        "fine": jnp.ones((5, 5), jnp.float32),
    }
    assert sorted(nonfinite_leaves(tree)) == [("half", 1, 2), ("inf", 1, 2), ("nan", 2, 4)]
    assert nonfinite_leaves({k: tree[k] for k in ("big", "empty", "ints", "fine")}) == []


def _flip_a_byte(step_dir: Path) -> None:
    f = _data_file(step_dir)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def test_checksum_records_of_older_versions_are_still_verified(tmp_path):
    """Steps record xxh3-128 digests; a record of sha256 digests (astroflax before it) is still
    checked with sha256, and a flipped byte is caught under either."""
    import hashlib

    from astroflax.train.checkpoint import CHECKSUM_FILE, Checkpointer, DamagedCheckpoint, abstract_like

    d = tmp_path / "checkpoints"
    ckpt = Checkpointer(d, _cfg(keep_latest=3, keep_best=0), warn=lambda m: None)
    for step in (1, 2):
        _save(ckpt, step, 1.0)
    ckpt.close()
    target = abstract_like(_tiny_state(0.0))
    record = json.loads((d / "1" / CHECKSUM_FILE).read_text())
    assert record["version"] == 2 and all(set(v) == {"xxh3_128", "bytes"} for v in record["files"].values())

    old = {name: {"sha256": hashlib.sha256((d / "1" / name).read_bytes()).hexdigest(), "bytes": v["bytes"]}
           for name, v in record["files"].items()}
    (d / "1" / CHECKSUM_FILE).write_text(json.dumps({"version": 1, "files": old}))
    assert Checkpointer(d, read_only=True).verify(1, target).step == 1
    for step in (1, 2):
        _flip_a_byte(d / str(step))
        with pytest.raises(DamagedCheckpoint, match="does not match the checksum"):
            Checkpointer(d, read_only=True).check_files(step)


def test_steps_dropped_by_retention_are_removed_beside_the_loop(tmp_path, monkeypatch):
    """Orbax renames a step that retention drops into ``obsolete/``; it is removed in a thread
    (not in the save, nor in the commit ``wait`` reports), before the next save or read, and what
    a killed run left there goes when the directory is opened again."""
    import threading

    import astroflax.train.checkpoint as checkpoint

    purged_on = []
    real = checkpoint.Checkpointer._purge_obsolete

    def recording(self):
        purged_on.append(threading.current_thread())
        real(self)

    monkeypatch.setattr(checkpoint.Checkpointer, "_purge_obsolete", recording)
    d = tmp_path / "checkpoints"
    ckpt = checkpoint.Checkpointer(d, _cfg(keep_latest=2, keep_best=0), warn=lambda m: None)
    purged_on.clear()  # the purge on opening
    for step in range(1, 5):
        _save(ckpt, step, 1.0)
        ckpt.wait()
        assert (d / str(step)).is_dir() and not (d / str(step - 2)).exists()
    _save(ckpt, 5, 1.0)  # joins the removal of what step 4's commit made obsolete
    assert not (d / checkpoint.OBSOLETE_DIR / "2").exists()
    ckpt.close()
    assert sorted(p.name for p in d.iterdir()) == ["4", "5"]
    main = threading.current_thread()
    assert purged_on[-1] is main and len(purged_on) >= 3 and main not in purged_on[:-1], purged_on  # close's own last

    (d / checkpoint.OBSOLETE_DIR / "3" / "state").mkdir(parents=True)  # left by a killed run
    checkpoint.Checkpointer(d, _cfg(keep_latest=2, keep_best=0), warn=lambda m: None).close()
    assert sorted(p.name for p in d.iterdir()) == ["4", "5"]


# ------------------------------------------- the array tree Orbax is handed (train/checkpoint.py)
def _nnx_state(seed: int):
    """A real train state: NNX Variables, an optax chain with EmptyStates, batch statistics."""
    import optax
    from flax import nnx

    from astroflax.train.state import create_state

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(3, 400, rngs=rngs), nnx.Linear(400, 2, rngs=rngs)])
            self.norm = nnx.BatchNorm(400, rngs=rngs)

    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    _, state = create_state(Net(nnx.Rngs(seed)), tx, seed)
    return jax.tree.map(lambda x: x + seed, state)  # values that differ from a fresh init


def _assert_same(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (pa, xa), (pb, xb) in zip(jax.tree_util.tree_flatten_with_path(a)[0],
                                  jax.tree_util.tree_flatten_with_path(b)[0]):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(xa), np.asarray(xb), err_msg=jax.tree_util.keystr(pa))


def test_the_array_tree_round_trips_a_train_state():
    from astroflax.train.checkpoint import from_arrays, to_arrays

    state = _nnx_state(3)
    arrays = to_arrays(state)
    assert set(arrays["params"]["layers"]) == {0, 1}  # under the names Orbax gives them
    assert isinstance(arrays["opt_state"], list)  # a tuple's positions stay positions
    assert not any(hasattr(x, "value") for x in jax.tree.leaves(arrays))  # no Variables left
    assert len(jax.tree.leaves(arrays)) == len(jax.tree.leaves(state))
    _assert_same(from_arrays(arrays, state), state)


@pytest.mark.parametrize("saved_as", ["variables", "arrays"])
def test_checkpoints_of_either_tree_form_restore_exactly(tmp_path, monkeypatch, saved_as):
    """Runs saved before the save handed Orbax plain, uncompressed arrays (a Variable tree,
    zstd-compressed) still resume, and the tree metadata of both forms agree."""
    import astroflax.train.checkpoint as checkpoint

    state = _nnx_state(2)
    dirs = {}
    for form in ("variables", "arrays"):
        with monkeypatch.context() as m:
            if form == "variables":  # as saved before: Variables in the tree, compressed arrays
                m.setattr(checkpoint, "to_arrays", lambda tree: tree)
                handler = checkpoint.ocp.PyTreeCheckpointHandler
                m.setattr(checkpoint.ocp, "PyTreeCheckpointHandler",
                          lambda **kw: handler(**{**kw, "use_compression": True}))
            ckpt = checkpoint.Checkpointer(tmp_path / form, _cfg(), warn=lambda m: None)
            ckpt.save(7, state, {"iterator": {"next_index": 7}}, {"step": 7}, {"val_loss": 0.5})
            ckpt.close()
        dirs[form] = tmp_path / form / "7" / "state"
    size = {form: sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) for form, d in dirs.items()}
    assert size["variables"] < size["arrays"], size  # the optimiser's constant moments compress
    assert (json.loads((dirs["variables"] / "_METADATA").read_text())
            == json.loads((dirs["arrays"] / "_METADATA").read_text()))
    restored, _, _ = checkpoint.Checkpointer(tmp_path / saved_as, read_only=True).restore(
        7, checkpoint.abstract_like(_nnx_state(0)))
    _assert_same(restored, state)
