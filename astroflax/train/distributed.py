"""Joining a multi-process run: ``jax.distributed.initialize`` and who is the primary process.

JAX's multi-controller runtime does the coordination: every process runs the same program,
``jax.distributed`` joins them (a coordinator on process 0, heartbeats, a preemption service),
``jax.devices()`` then lists the devices of all processes and one ``Mesh`` spans them.
astroflax adds no coordination of its own; this module only decides whether to join and with
which arguments, and must run before anything creates a JAX backend.

When to join: ``--distributed`` (JAX's cluster detection: SLURM, Open MPI, Cloud TPU,
Kubernetes, mpi4py), explicit ``--coordinator/--num-processes/--process-id``, the matching
``ASTROFLAX_*`` environment variables, or automatically inside a SLURM step or an Open MPI job
with more than one task (the environment variables JAX's own detection reads). A single
process never joins: its numbers stay bitwise those of a plain run.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any

from astroflax.errors import ConfigError

#: Seconds without a heartbeat after which JAX declares a process dead and stops the others.
#: JAX's default is 100 s; 60 s keeps a dead node from holding a cluster allocation for long
#: while tolerating the pauses of a busy host (a long compile does not stop heartbeats).
DEFAULT_HEARTBEAT_TIMEOUT_S = 60
DEFAULT_INIT_TIMEOUT_S = 300

ENV_PREFIX = "ASTROFLAX_"


@dataclasses.dataclass
class DistributedOptions:
    """What the command line (or the ``ASTROFLAX_*`` environment) asked for."""

    enabled: bool | None = None  # True: join (auto-detect missing arguments); None: join if a cluster is detected
    coordinator: str | None = None  # HOST:PORT of process 0
    num_processes: int | None = None
    process_id: int | None = None
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT_S
    init_timeout: int = DEFAULT_INIT_TIMEOUT_S

    @classmethod
    def from_env(cls, **given: Any) -> "DistributedOptions":
        """Flags win over ``ASTROFLAX_DISTRIBUTED``, ``ASTROFLAX_COORDINATOR``,
        ``ASTROFLAX_NUM_PROCESSES``, ``ASTROFLAX_PROCESS_ID``, ``ASTROFLAX_HEARTBEAT_TIMEOUT``."""
        env = os.environ

        def pick(name: str, key: str, cast: Any) -> Any:
            if given.get(name) is not None:
                return given[name]
            raw = env.get(ENV_PREFIX + key)
            if raw in (None, ""):
                return None
            try:
                return cast(raw)
            except ValueError:
                raise ConfigError(f"environment variable {ENV_PREFIX + key}={raw!r}: expected {cast.__name__}") from None

        enabled = given.get("enabled")
        if enabled is None and env.get(ENV_PREFIX + "DISTRIBUTED"):
            enabled = env[ENV_PREFIX + "DISTRIBUTED"].lower() not in ("0", "false", "no")
        return cls(
            enabled=enabled,
            coordinator=pick("coordinator", "COORDINATOR", str),
            num_processes=pick("num_processes", "NUM_PROCESSES", int),
            process_id=pick("process_id", "PROCESS_ID", int),
            heartbeat_timeout=pick("heartbeat_timeout", "HEARTBEAT_TIMEOUT", int) or DEFAULT_HEARTBEAT_TIMEOUT_S,
            init_timeout=pick("init_timeout", "INIT_TIMEOUT", int) or DEFAULT_INIT_TIMEOUT_S,
        )

    @property
    def explicit(self) -> bool:
        return any(v is not None for v in (self.coordinator, self.num_processes, self.process_id))


def detected_cluster() -> str | None:
    """A multi-task SLURM step or Open MPI job, judged by the variables JAX's detection reads
    (``jax._src.clusters``). Cloud TPU and Kubernetes detection queries a metadata server or
    needs the ``kubernetes`` package, so those join only with ``--distributed``."""
    env = os.environ

    def many(key: str) -> bool:
        try:
            return int(env.get(key, "1")) > 1
        except ValueError:
            return False

    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    # SLURM_STEP_NUM_TASKS is srun's: a batch script calling astroflax directly (one process
    # in an allocation of several tasks) must not wait for partners that never start.
    if all(k in env for k in slurm) and many("SLURM_NTASKS") and many("SLURM_STEP_NUM_TASKS"):
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and many("OMPI_COMM_WORLD_SIZE"):
        return "ompi"
    return None


def initialize(opts: DistributedOptions | None = None) -> bool:
    """Join the run when asked or detected; returns whether this process is part of one.

    Must come before any JAX computation. Errors (a coordinator that never answers, a bad
    address, a backend already started) become one-line :class:`ConfigError`.
    """
    import jax

    opts = opts or DistributedOptions.from_env()
    if jax.distributed.is_initialized():
        return True
    if opts.enabled is False:
        return False
    cluster = detected_cluster()
    if not (opts.enabled or opts.explicit or cluster):
        return False
    if opts.explicit and (opts.coordinator is None or opts.num_processes is None or opts.process_id is None):
        # Partial flags would fall back to auto-detection that cannot work outside a cluster.
        if cluster is None:
            raise ConfigError("--coordinator HOST:PORT, --num-processes N and --process-id I go together "
                              "(outside SLURM/Open MPI/TPU all three are needed)")
    if opts.num_processes is not None and opts.process_id is not None and not 0 <= opts.process_id < opts.num_processes:
        raise ConfigError(f"--process-id {opts.process_id}: must be in 0..{opts.num_processes - 1}")
    if opts.coordinator is not None and ":" not in opts.coordinator:
        raise ConfigError(f"--coordinator {opts.coordinator!r}: expected HOST:PORT")
    try:
        jax.distributed.initialize(
            coordinator_address=opts.coordinator,
            num_processes=opts.num_processes,
            process_id=opts.process_id,
            initialization_timeout=opts.init_timeout,
            heartbeat_timeout_seconds=opts.heartbeat_timeout,
        )
    except Exception as exc:  # noqa: BLE001 - JAX raises RuntimeError/ValueError/XlaRuntimeError here
        line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        where = f" (coordinator {opts.coordinator})" if opts.coordinator else ""
        raise ConfigError(f"could not join the distributed run{where}: {line[:240]}") from exc
    _orbax_barriers_over_coordination_service()
    from astroflax.train import signals

    # With JAX's preemption service (on by default) SIGTERM is its notifier's, see signals.py.
    signals.use_preemption_service(bool(jax.config.jax_enable_preemption_service))
    _hand_on_early_sigterm()
    return True


def _orbax_barriers_over_coordination_service() -> None:
    """Make Orbax's barriers wait on JAX's coordination service rather than on an XLA collective.

    By default Orbax syncs processes with ``multihost_utils.sync_global_devices``, a psum over
    every device. An async save runs that barrier from its background thread while the main
    thread keeps launching train steps with their own gradient all-reduce, so two processes can
    enter the collectives in different orders and wait on each other for ever. (The hang we
    measured had another cause, see ``MAX_STEPS_AHEAD`` in train/loop.py; this one is the same
    kind of hazard, removed rather than waited for.) Orbax's own switch
    ``experimental_orbax_use_distributed_barrier`` uses the coordination service, with a
    timeout, instead; it is an absl flag, which we set without parsing anyone's argv.
    """
    from absl import flags
    from orbax.checkpoint._src.multihost import multihost  # noqa: F401 - defines the flag

    flag = flags.FLAGS["experimental_orbax_use_distributed_barrier"]
    flag.value = True
    flag.present = 1  # absl otherwise refuses to read a flag before argv was parsed


def _hand_on_early_sigterm() -> None:
    """A SIGTERM recorded by a start-up guard before JAX's preemption notifier existed is sent
    again, now to the notifier, so that every process stops at the same step."""
    from astroflax.train.signals import _Received

    if _Received.signum == signal.SIGTERM:
        _Received.signum = None
        os.kill(os.getpid(), signal.SIGTERM)


def process_index() -> int:
    import jax

    return jax.process_index()


def process_count() -> int:
    import jax

    return jax.process_count()


def is_primary() -> bool:
    """Process 0 writes the run's files (logs, TensorBoard, reports) and commits checkpoints."""
    return process_index() == 0


def is_multiprocess() -> bool:
    return process_count() > 1


def is_lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective or barrier that failed because another process of the
    run died (gloo/NCCL connection reset, a coordination-service error), not a bug of ours."""
    import jax

    if not isinstance(exc, jax.errors.JaxRuntimeError):
        return False
    text = str(exc).lower()
    return any(k in text for k in ("gloo", "nccl", "connection reset", "heartbeat", "unavailable", "barrier",
                                   "coordination", "task died", "unhealthy"))


def exit_lost_peer(exc: BaseException, run_dir: Any, code: int = 1) -> None:
    """One line on stderr and exit ``code`` now, in place of a traceback and JAX's shutdown.

    ``os._exit`` on purpose: at interpreter exit JAX's ``distributed.shutdown`` waits on a
    barrier that the dead process never reaches, then aborts the process with a fatal log and a
    C++ stack trace (measured: exit 134 about 4 s after a SIGKILL of the other process). The
    checkpoints are safe: Orbax only lists a step once it is committed.
    """
    import sys
    from pathlib import Path

    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    ckpt = Path(run_dir) / "checkpoints" if run_dir is not None else None
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt and ckpt.is_dir() else []
    last = (f"the last complete checkpoint is step {steps[-1]}" if steps else "no checkpoint was completed")
    sys.stdout.flush()
    sys.stderr.write(f"error: process {process_index()} of {process_count()} lost contact with another process "
                     f"of the run ({first[:200]}); {last}: when every process is back, run the same launch "
                     "with --resume\n")
    sys.stderr.flush()
    os._exit(code)
