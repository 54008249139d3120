"""The pieces of a multi-process run that need no second process: when to join, the
per-process rows of a batch, the FSDP layout."""

from __future__ import annotations

import numpy as np
import pytest

from astroflax.data.pipeline import TrainStream
from astroflax.errors import ConfigError
from astroflax.train.distributed import DistributedOptions, detected_cluster, initialize
from astroflax.train.sharding import fsdp_spec

SLURM = {"SLURM_JOB_ID": "42", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0", "SLURM_STEP_NUM_TASKS": "2"}


def test_cluster_detection(monkeypatch):
    for k in [*SLURM, "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE"]:
        monkeypatch.delenv(k, raising=False)
    assert detected_cluster() is None
    for k, v in SLURM.items():
        monkeypatch.setenv(k, v)
    assert detected_cluster() == "slurm"
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # a batch script, not an srun step of 2 tasks
    assert detected_cluster() is None
    for k in SLURM:
        monkeypatch.delenv(k)
    monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1.0;tcp://10.0.0.1:1")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert detected_cluster() == "ompi"


def test_options_from_flags_and_env(monkeypatch):
    monkeypatch.setenv("ASTROFLAX_COORDINATOR", "h:1")
    monkeypatch.setenv("ASTROFLAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("ASTROFLAX_PROCESS_ID", "3")
    opts = DistributedOptions.from_env(process_id=1)
    assert (opts.coordinator, opts.num_processes, opts.process_id, opts.explicit) == ("h:1", 4, 1, True)
    monkeypatch.setenv("ASTROFLAX_NUM_PROCESSES", "four")
    with pytest.raises(ConfigError, match="ASTROFLAX_NUM_PROCESSES"):
        DistributedOptions.from_env()


@pytest.mark.parametrize("opts, message", [
    (DistributedOptions(coordinator="localhost:1"), "go together"),
    (DistributedOptions(coordinator="localhost:1", num_processes=2, process_id=2), "must be in 0..1"),
    (DistributedOptions(coordinator="localhost", num_processes=2, process_id=0), "HOST:PORT"),
])
def test_bad_flags_are_one_line_errors(monkeypatch, opts, message):
    for k in SLURM:
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ConfigError, match=message):
        initialize(opts)


def test_single_process_does_not_join(monkeypatch):
    for k in [*SLURM, "ASTROFLAX_DISTRIBUTED", "OMPI_MCA_orte_hnp_uri"]:
        monkeypatch.delenv(k, raising=False)
    assert initialize(DistributedOptions()) is False
    assert initialize(DistributedOptions(enabled=False, coordinator="h:1", num_processes=2, process_id=0)) is False


def test_processes_read_their_rows_of_the_same_batches():
    data = {"x": np.arange(100, dtype=np.float32)[:, None], "y": np.arange(100)}
    one = TrainStream(data, 16, seed=3, version="v")
    parts = [TrainStream(data, 16, seed=3, version="v", process_index=p, process_count=4) for p in range(4)]
    for _ in range(9):  # past an epoch boundary
        whole = next(one)
        rows = [next(s) for s in parts]
        assert all(len(r["y"]) == 4 for r in rows)
        np.testing.assert_array_equal(np.concatenate([r["y"] for r in rows]), whole["y"])
    assert {str(s.get_state()) for s in parts} == {str(one.get_state())}  # one state resumes any count
    with pytest.raises(ConfigError, match="multiple of the 3 processes"):
        TrainStream(data, 16, seed=3, version="v", process_index=0, process_count=3)


def test_fsdp_layout():
    from jax.sharding import PartitionSpec as P

    assert fsdp_spec((9, 16), 4) == P(None, "data")
    assert fsdp_spec((16, 2), 4) == P("data")
    assert fsdp_spec((2,), 4) == P()  # indivisible: replicated
    assert fsdp_spec((), 4) == P()
    assert fsdp_spec((8, 8), 1) == P()


def test_a_failed_collective_is_one_line_naming_the_last_checkpoint(tmp_path):
    """When the step's collective fails because another process died, the survivor prints one
    line and exits 1 at once, not a traceback followed by JAX's aborted shutdown."""
    import subprocess
    import sys

    import jax

    from astroflax.train.distributed import is_lost_peer

    assert is_lost_peer(jax.errors.JaxRuntimeError("UNKNOWN: Gloo AllGather failed: Connection reset by peer"))
    assert not is_lost_peer(jax.errors.JaxRuntimeError("INVALID_ARGUMENT: shapes (3,) and (4,) differ"))
    assert not is_lost_peer(ValueError("gloo"))  # only JAX's runtime errors
    for step in (30, 60):
        (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
    (tmp_path / "checkpoints" / "90.orbax-checkpoint-tmp-1").mkdir()  # never committed: not listed
    code = ("import jax; from astroflax.train.distributed import exit_lost_peer; "
            f"exit_lost_peer(jax.errors.JaxRuntimeError('UNKNOWN: Gloo AllGather failed: reset\\nmore'), {str(tmp_path)!r})")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert got.returncode == 1, got.stderr
    lines = [ln for ln in got.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: process 0 of 1 lost contact"), got.stderr
    assert "Gloo AllGather failed: reset" in lines[0] and "last complete checkpoint is step 60" in lines[0]
    assert "--resume" in lines[0]


def test_orbax_barriers_use_the_coordination_service_not_a_collective():
    """An async save's barrier runs on Orbax's background thread; as an XLA collective it could
    interleave with the train step's all-reduce in a different order on each process. After
    joining, Orbax must use the coordination service."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    script = f"""
from orbax.checkpoint._src.multihost import multihost
from astroflax.train.distributed import DistributedOptions, initialize
assert initialize(DistributedOptions(coordinator="localhost:{port}", num_processes=1, process_id=0))
# Orbax reads the flag this way in sync_global_processes (unparsed absl flags raise there).
print("barrier", multihost.EXPERIMENTAL_ORBAX_USE_DISTRIBUTED_BARRIER.value)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "barrier True" in out.stdout, out.stderr[-2000:]
