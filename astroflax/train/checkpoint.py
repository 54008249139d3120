"""Orbax checkpoints: one step = train state + data-iterator state + metadata (config, metrics).

Retention uses Orbax's preservation policies: the latest N plus the best K by a validation
metric. Orbax writes each step to a temporary directory and renames it when complete, so a
checkpoint interrupted by a crash is never listed (and its leftovers are cleaned up).

Integrity: a step is verified before it is used -- Orbax's commit record, its items, the
metadata and data-iterator JSON, and the arrays, restored onto the live model's shapes and
all finite. A damaged step (truncated or garbage files, missing metadata, an empty directory,
non-finite values) is skipped with a warning naming it and what is wrong, moved aside to
``checkpoints/damaged/<step>-<reason>/`` (Orbax lists only digit-named directories, so it
never sees it again; nothing is deleted) and the previous good step is used -- for resume,
``latest`` and ``best`` alike. A readable checkpoint of another model or config is a
different error: "does not match this model/config".

Disaster recovery: a save that fails with a transient I/O error is retried with back-off; a
full disk is refused before writing (free space against the last checkpoint's size) or, when
the write itself runs out of space, reported as one line, with the partial step removed and
earlier checkpoints intact. ``checkpoint.backup_dir`` receives a copy of every k-th committed
checkpoint (``checkpoint.backup_every``); restore falls back to it when the primary copy of a
step is damaged or missing.

Several processes (``jax.distributed``): Orbax's CheckpointManager does the multi-host work
-- every process writes its shards of the arrays, process 0 writes the JSON items and commits
the step. What astroflax adds on disk (checksums, backups, moving a damaged step aside,
removing a partial one) is done by process 0 alone; every process runs the same checks, so
all take the same decisions. A restore reads onto the shardings of the live state, so a
checkpoint of 2 processes x 2 devices opens on 1 x 1 or 1 x 4 (Orbax reshards).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import mmap
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from astroflax.config import CheckpointConfig
from astroflax.errors import CheckpointError

DAMAGED_DIR = "damaged"  # checkpoints/damaged/<step>-<reason>/: steps moved aside, never deleted
OBSOLETE_DIR = "obsolete"  # checkpoints/obsolete/<step>/: steps retention dropped, until removed
COMMIT_FILE = "commit_success.txt"  # Orbax's commit record (with _CHECKPOINT_METADATA's commit time)
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"
ITEMS = ("state", "data", "meta")
CHECKSUM_FILE = "astroflax_checksums.json"  # digests of the step's files, written when it commits
TMP_MARKER = ".orbax-checkpoint-tmp"
_STEP_NAME = re.compile(r"0|[1-9]\d*")  # the names Orbax lists as steps

SAVE_ATTEMPTS = 4  # a save failing with a transient I/O error is tried this many times ...
RETRY_DELAY_S = 0.5  # ... waiting 0.5, 1, 2 s in between
SPACE_MARGIN = 1.1  # free space needed for a save: the last checkpoint's size x margin + slack
SPACE_SLACK = 64 * 1024

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "[errno 28]", "os error 28")
_TRANSIENT_ERRNOS = {
    errno.EIO, errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED,
    errno.ECONNREFUSED, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ESTALE,
}
_TRANSIENT_TEXT = (
    "unavailable:", "deadline_exceeded", "aborted:", "input/output error", "resource temporarily unavailable",
    "stale file handle", "connection reset", "interrupted system call", "device or resource busy", "timed out",
)


class DamagedCheckpoint(CheckpointError):
    """A checkpoint step whose files are incomplete, unreadable or hold non-finite values."""

    def __init__(self, step: int, directory: Path, reason: str, detail: str):
        self.step, self.directory, self.reason, self.detail = step, directory, reason, detail
        super().__init__(f"checkpoint step {step} in {directory} is damaged: {detail}")


@dataclasses.dataclass
class Restored:
    step: int
    state: Any
    data_state: dict
    meta: dict
    directory: Path  # the checkpoints directory it came from (the primary or the backup)


# ---------------------------------------------------------------------------- helpers
def abstract_like(state: Any) -> Any:
    """Shape/dtype/sharding skeleton of a live pytree, the restore target Orbax needs."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def _entry(key: Any) -> Any:
    """One step of a pytree key path as a dict key, named as Orbax names it on disk."""
    if isinstance(key, jax.tree_util.DictKey):
        return key.key
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        return key.idx
    raise TypeError(f"cannot checkpoint a pytree node keyed by {key!r}")


def to_arrays(tree: Any) -> dict:
    """``tree`` as nested dicts of its arrays, each at the path (and so under the name) Orbax
    gives it in ``tree`` itself: the same files, and checkpoints of either form restore as both.

    Why: Orbax maps over the tree it saves about six times per save, and every map rebuilds an
    NNX train state's ``Variable`` objects (223 in the transients quick state; each asks JAX for
    its trace state); plain dicts cost nothing to rebuild. On the quick state, medians of
    interleaved saves: the loop blocked 81.6 -> 74.6 ms, the commit took 618 -> 558 ms.
    """
    root: dict = {}
    made, sequences = {id(root)}, set()  # nodes built here; those keyed by position (lists)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_empty)[0]:
        node = root
        for i, key in enumerate(path):
            if isinstance(key, jax.tree_util.SequenceKey):
                sequences.add(id(node))  # Orbax records the key type: a list stays a list
            if i == len(path) - 1:
                node[_entry(key)] = leaf
            else:
                if _entry(key) not in node:
                    node[_entry(key)] = {}
                    made.add(id(node[_entry(key)]))
                node = node[_entry(key)]

    def finish(node: Any) -> Any:
        if id(node) not in made:
            return node
        items = {k: finish(v) for k, v in node.items()}
        return [items[i] for i in range(len(items))] if id(node) in sequences else items

    return finish(root)


def from_arrays(arrays: dict, like: Any) -> Any:
    """Inverse of :func:`to_arrays`: the arrays of ``arrays`` in the structure of ``like``."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(like, is_leaf=_empty)
    leaves = []
    for path, leaf in paths:
        node = arrays
        for key in path:
            node = node[_entry(key)]
        leaves.append(leaf if _empty(leaf) else node)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _empty(node: Any) -> bool:
    """None or a container without arrays (an optax EmptyState, an empty model state): Orbax
    records these in a checkpoint's tree, so they are kept as they are."""
    return node is None or (isinstance(node, (tuple, list, Mapping)) and len(node) == 0)


def _data_file_size(arrays: Any) -> int:
    """Orbax's target size for each OCDBT data file: 16 MiB, or 1/64 of the state if larger.

    Why: by default (2 GiB) a state goes to one data file, written by one thread. Split into
    files of 4-16 MiB, TensorStore writes them side by side: a 105 MB state committed in 78-82 ms
    instead of 102 ms (medians of 10 interleaved saves; 4, 8 and 16 MiB alike). The quick state
    (0.77 MB) is one file either way. The 1/64 keeps a large state to 64 files or fewer.
    """
    return max(16 << 20, state_bytes(arrays) // 64)


def json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=float))


def _first_line(exc: BaseException, limit: int = 240) -> str:
    text = str(exc).split("See full TensorStore details")[0].strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "") or type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _matches(exc: BaseException, errnos: Any, texts: Any) -> bool:
    """Whether any exception in the chain is an OSError with one of ``errnos`` or mentions one of ``texts``."""
    return any((isinstance(e, OSError) and e.errno in errnos) or any(t in str(e).lower() for t in texts)
               for e in _chain(exc))


def is_disk_full(exc: BaseException) -> bool:
    """Out of space (ENOSPC / quota), as an OSError or as TensorStore's RESOURCE_EXHAUSTED text."""
    return _matches(exc, _DISK_FULL_ERRNOS, _DISK_FULL_TEXT)


def _disk_full_cause(exc: BaseException) -> str:
    """The short reason of a disk-full error (TensorStore's messages carry a page of spec)."""
    text = " ".join(str(e) for e in _chain(exc))
    low = text.lower()
    cause = "Disk quota exceeded" if "disk quota exceeded" in low else "No space left on device"
    return f"RESOURCE_EXHAUSTED: {cause}" if "resource_exhausted" in low else cause


def is_transient(exc: BaseException) -> bool:
    """An I/O error worth retrying (EIO, EAGAIN, timeouts, UNAVAILABLE...); never a full disk."""
    return not is_disk_full(exc) and _matches(exc, _TRANSIENT_ERRNOS, _TRANSIENT_TEXT)


def _mb(n: float) -> str:
    mb = n / 1e6
    return f"{mb:.0f} MB" if mb >= 10 else f"{mb:.2f} MB"


def dir_bytes(path: Path) -> int:
    """Disk usage of a directory tree (allocated blocks where the OS reports them)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            blocks = getattr(st, "st_blocks", None)
            total += max(st.st_size, blocks * 512) if blocks is not None else st.st_size
    return total


def space_needed(last_checkpoint_bytes: int) -> int:
    """Free bytes a save asks for, given the size of the previous checkpoint (or an estimate)."""
    return int(last_checkpoint_bytes * SPACE_MARGIN) + SPACE_SLACK


def state_bytes(tree: Any) -> int:
    return int(sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(tree)))


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


@jax.jit
def _nonfinite_counts(leaves: list[jax.Array]) -> list[jax.Array]:
    """One compiled computation for the whole tree. Eager ops compiled one small program per
    leaf shape: about 50 compiles (or cache lookups) per run, 2.5 s of a 12-step tiny
    ``variables`` run (measured with cProfile); it works on sharded arrays as eager ops did."""
    return [(~jax.numpy.isfinite(leaf)).sum() for leaf in leaves]


@jax.jit
def _nonfinite_any(leaves: list[jax.Array]) -> jax.Array:
    """Whether each leaf holds a NaN or Inf, as ``sum(leaf * 0)``: NaN and Inf both turn it into
    NaN, and a float sum is a vectorised reduction where counting ``~isfinite`` is not. On a 105 MB
    state, 4.8 ms against the counts' 34 ms: this runs in every ``save``, before the loop resumes."""
    return jax.numpy.stack([~jax.numpy.isfinite(jax.numpy.sum(leaf * 0)) for leaf in leaves])


def nonfinite_leaves(tree: Any) -> list[tuple[str, int, int]]:
    """(path, non-finite count, size) of every floating leaf holding NaN or Inf."""
    leaves = [
        (path, leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if getattr(leaf, "dtype", None) is not None and jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact)
    ]
    if not leaves or not np.any(jax.device_get(_nonfinite_any([leaf for _, leaf in leaves]))):
        return []
    counts = jax.device_get(_nonfinite_counts([leaf for _, leaf in leaves]))
    return [
        ("/".join(_key_name(k) for k in path), int(n), int(np.size(leaf)))
        for (path, leaf), n in zip(leaves, counts) if int(n)
    ]


def _describe_nonfinite(bad: list[tuple[str, int, int]]) -> str:
    path, n, size = bad[0]
    more = f" and {len(bad) - 1} more arrays" if len(bad) > 1 else ""
    return f"non-finite values (NaN/Inf) in {path} ({n} of {size}){more}"


def _checksummed_files(step_dir: Path) -> list[Path]:
    """The files a checksum covers: the items' contents (Orbax's step metadata and commit record,
    which Orbax may rewrite, are left out)."""
    return sorted(p for item in (*ITEMS, "metrics") for p in (step_dir / item).rglob("*")
                  if p.is_file() and p.name != COMMIT_FILE)


# Checksums are xxh3-128 (xxhash): they guard against bit rot and truncation, not tampering, and
# hashing sat on the commit path (and in every verified restore). On a 105 MB state the record
# took 72 ms with sha256 (1.5 GB/s here) and takes about 10 ms with xxh3; a commit was 217 ms.
# Records written with sha256 by older versions are still verified with sha256.
DIGESTS = ("xxh3_128", "sha256")


def _digest(path: Path, algorithm: str = DIGESTS[0], mapped: bool = False) -> str:
    """The file's digest. ``mapped`` hashes a memory map of it (8.6 ms for 105 MB against 16 ms
    read in blocks); only for the files a commit has just written, since a file truncated while
    it is mapped kills the process (SIGBUS) where a read would fail."""
    if algorithm == "xxh3_128":
        import xxhash

        h = xxhash.xxh3_128()
    else:
        import hashlib

        h = hashlib.sha256()
    with path.open("rb") as fh:
        if mapped and os.fstat(fh.fileno()).st_size:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
                h.update(view)
        else:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def write_checksums(step_dir: Path) -> None:
    """Record the digest of every file of a committed step (atomically: a crash leaves none)."""
    files = {p.relative_to(step_dir).as_posix(): {DIGESTS[0]: _digest(p, mapped=True), "bytes": p.stat().st_size}
             for p in _checksummed_files(step_dir)}
    tmp = step_dir / f".{CHECKSUM_FILE}.tmp"
    tmp.write_text(json.dumps({"version": 2, "files": files}))
    os.replace(tmp, step_dir / CHECKSUM_FILE)


def _algorithm(entry: dict) -> str:
    """The digest a checksum record's file entry holds (KeyError if none)."""
    for algorithm in DIGESTS:
        if algorithm in entry:
            return algorithm
    raise KeyError(f"none of {', '.join(DIGESTS)}")


def _primary() -> bool:
    return jax.process_index() == 0


def _stderr_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _list_steps(directory: Path) -> list[int]:
    """Digit-named step directories, as Orbax lists them (temporary and moved-aside ones excluded)."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if _STEP_NAME.fullmatch(p.name) and p.is_dir())


# ------------------------------------------------- Orbax / TensorStore noise we report ourselves
class _QuietUnrankedSave(logging.Filter):
    """Orbax warns on every save without metrics (a checkpoint written on a stop): expected here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietUnrankedSave())


class _QuietAbandonedReads(logging.Filter):
    """A restore of damaged arrays fails at the first bad array; the other TensorStore reads'
    failures are then logged by asyncio as "Future exception was never retrieved", each with a
    page of TensorStore spec. The first one is what the damage warning reports."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Future exception was never retrieved") and "tensorstore" in msg.lower())


logging.getLogger("asyncio").addFilter(_QuietAbandonedReads())


class _QuietHandledSaveFailures(logging.Filter):
    """Orbax logs a failed background save from each of its threads, with tracebacks. A full
    disk or a transient I/O error is reported by the Checkpointer itself (one line, or a retry
    warning), so those records are dropped; any other failure is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and (is_disk_full(exc) or is_transient(exc)):
            return False
        msg = record.getMessage().lower()
        return not any(t in msg for t in _DISK_FULL_TEXT)


logging.getLogger("absl").addFilter(_QuietHandledSaveFailures())


def _quiet_closed_loop(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """A failed Orbax restore (damaged arrays) closes its asyncio loop while TensorStore reads
    are still completing; their callbacks then print "RuntimeError: Event loop is closed"
    tracebacks from a background thread. Those (and only those) are dropped."""

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        tb = unraisable.exc_traceback
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        from_asyncio = tb is not None and tb.tb_frame.f_code.co_filename.endswith(os.path.join("asyncio", "base_events.py"))
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed" and from_asyncio:
            return
        previous(unraisable)

    hook._astroflax_quiet_closed_loop = True  # type: ignore[attr-defined]
    return hook


if not getattr(sys.unraisablehook, "_astroflax_quiet_closed_loop", False):
    sys.unraisablehook = _quiet_closed_loop(sys.unraisablehook)


def _worst(mode: str) -> float:
    return math.inf if mode == "min" else -math.inf


def _finite_metric(metrics: Any, metric: str, mode: str) -> float:
    """A ranking value; a missing, non-numeric or non-finite metric ranks last."""
    try:
        value = float(metrics[metric])
    except (TypeError, KeyError, ValueError):
        return _worst(mode)
    return value if math.isfinite(value) else _worst(mode)


def _policy(cfg: CheckpointConfig) -> pp.PreservationPolicy:
    policies: list[pp.PreservationPolicy] = [pp.LatestN(n=cfg.keep_latest)]
    if cfg.keep_best:
        metric, mode = cfg.metric, cfg.mode
        policies.append(
            pp.BestN(
                # A NaN/Inf metric never ranks as best (it would break the sort).
                get_metric_fn=lambda metrics: _finite_metric(metrics, metric, mode),
                # BestN keeps the top of an ascending sort; reverse it when smaller is better.
                reverse=cfg.mode == "min",
                n=cfg.keep_best,
                keep_checkpoints_without_metrics=False,
            )
        )
    return pp.AnyPreservationPolicy(policies)


# --------------------------------------------------------------------- the checkpointer
class Checkpointer:
    """A thin, typed wrapper over ``ocp.CheckpointManager`` with astroflax's layout, integrity
    checks, save retries, a disk-space check and an optional backup directory.

    ``backup_dir`` / ``backup_every`` default to ``cfg.backup_dir`` / ``cfg.backup_every``.
    ``warn(message)`` receives the warnings (damaged steps, retries, backups); default stderr.
    ``events`` records them as dicts for the run's log.
    """

    def __init__(
        self,
        directory: str | Path,
        cfg: CheckpointConfig | None = None,
        read_only: bool = False,
        *,
        backup_dir: str | Path | None = None,
        backup_every: int | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        self.directory = Path(directory).absolute()
        self.cfg = cfg = cfg or CheckpointConfig()
        self.read_only = read_only
        backup = backup_dir if backup_dir is not None else getattr(cfg, "backup_dir", None)
        self.backup_dir = Path(backup).absolute() if backup else None
        if self.backup_dir == self.directory:
            raise CheckpointError(f"checkpoint.backup_dir {self.backup_dir} is the checkpoints directory itself")
        self.backup_every = max(1, int(backup_every or getattr(cfg, "backup_every", 1) or 1))
        self.warn = warn or _stderr_warning
        self.events: list[dict[str, Any]] = []
        self._pending: tuple | None = None  # (step, state, data_state, meta, metrics) of a save in flight
        self._recorder: tuple[threading.Thread, list] | None = None  # checksums of the last commit
        self._purger: threading.Thread | None = None  # removing the steps the last commit made obsolete
        self._commits = 0
        self._restorer: ocp.Checkpointer | None = None
        self._problems: list[str] = []
        if read_only and not self.directory.is_dir() and not self._backup_steps():
            raise CheckpointError(f"no checkpoints directory at {self.directory}")
        self._mgr: ocp.CheckpointManager | None = None
        if not read_only:
            metric, mode = cfg.metric, cfg.mode
            options = ocp.CheckpointManagerOptions(
                enable_async_checkpointing=cfg.async_save,
                preservation_policy=_policy(cfg),
                # With best_fn set Orbax also writes each step's metrics to disk, so that the best
                # checkpoint is still known (and kept) after the run is reopened to resume.
                best_fn=lambda metrics: _finite_metric(metrics, metric, mode),
                best_mode=mode,
                cleanup_tmp_directories=True,
                create=True,
                # Steps that retention drops are renamed into obsolete/ as the save finishes and
                # removed by a thread of ours, joined before the next save or read: removing a
                # 105 MB step inside Orbax's finalisation cost ~30 ms of every commit (122 -> 92 ms,
                # medians).
                # Orbax's own background deleter was not used: its thread races the integrity
                # checks here, which read step directories, and it reports errors only on close.
                todelete_subdir=OBSOLETE_DIR,
            )
            # Uncompressed arrays: zstd bought 8% on a 105 MB state of float32 weights (97.1 MB
            # on disk) for 75% more time in Orbax's write (0.237 s vs 0.135 s); a commit here
            # went from 544 to 399 ms (medians of interleaved saves, README "Speed"). Restoring
            # reads each array's codec from disk: older compressed checkpoints still restore.
            handlers = {"state": ocp.PyTreeCheckpointHandler(use_compression=False),
                        "data": ocp.JsonCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
            try:
                self._mgr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
            except Exception:  # noqa: BLE001 - Orbax reads each step's metrics on opening: set damaged steps aside, retry
                for step in _list_steps(self.directory):
                    try:
                        self.check_files(step, checksums=False)
                    except DamagedCheckpoint as damage:
                        self._skip(damage, "it will not be used")
                try:
                    self._mgr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
                except Exception as exc:
                    raise CheckpointError(f"cannot open the checkpoints directory {self.directory}: {_first_line(exc)}") from exc
            self._purge_obsolete()  # what a run killed before it removed them left

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: Any, data_state: dict, meta: dict, metrics: dict | None,
             *, allow_non_finite: bool = False) -> None:
        """Start an (async) save. ``metrics`` rank the checkpoint; None = ranked by recency only.

        Refuses non-finite parameters (a checkpoint is never written with them) and a disk
        without room for it; an earlier async save that failed is reported here.
        ``allow_non_finite`` exists for tests that need a NaN checkpoint on disk.
        """
        if self._mgr is None:
            raise CheckpointError(f"checkpoints in {self.directory} were opened read-only; cannot save step {step}")
        self._settle()
        if not allow_non_finite:
            bad = nonfinite_leaves(_model_part(state))
            if bad:
                raise CheckpointError(
                    f"refusing to write checkpoint step {step} to {self.directory}: {_describe_nonfinite(bad)}"
                )
        self._check_space(step, state, meta, data_state)
        self._write(step, state, data_state, meta, metrics, blocking=False)
        if self.cfg.async_save:
            self._pending = (step, state, data_state, meta, metrics)
        else:
            self._committed(step)

    def reached_preemption(self, step: int) -> bool:
        """Whether every process of a ``jax.distributed`` run has reached the step JAX's
        preemption service chose after a SIGTERM to any of them (Orbax asks the same service)."""
        return self._mgr is not None and bool(self._mgr.reached_preemption(step))

    def wait(self) -> None:
        """Block until the save in flight is on disk with its checksums (and backup); its
        failure is raised here (one line)."""
        self._settle()
        self._join_recorder(purge=False)

    def close(self) -> None:
        if self._mgr is None:
            return
        try:
            self._settle()
        finally:
            self._join_recorder()
            mgr, self._mgr = self._mgr, None
            try:
                mgr.close()
            except Exception:  # noqa: BLE001 - the failure was reported by _settle (raised once)
                pass
            self._purge_obsolete()

    def _write(self, step: int, state: Any, data_state: dict, meta: dict, metrics: dict | None,
               blocking: bool) -> None:
        """``mgr.save`` (and, if ``blocking``, its completion), retried on transient I/O errors."""
        arrays = to_arrays(state)
        args = ocp.args.Composite(
            state=ocp.args.PyTreeSave(arrays, ocdbt_target_data_file_size=_data_file_size(arrays)),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        )
        delay = RETRY_DELAY_S
        for attempt in range(1, SAVE_ATTEMPTS + 1):
            try:
                self._mgr.save(step, args=args, metrics=metrics, force=True)
                if blocking:
                    self._mgr.wait_until_finished()
                return
            except Exception as exc:
                self._remove_partial(step)
                if is_disk_full(exc):
                    raise self._disk_full_error(step, exc) from exc
                if not is_transient(exc) or attempt == SAVE_ATTEMPTS:
                    tries = f" after {attempt} tries" if attempt > 1 else ""
                    raise CheckpointError(
                        f"could not write checkpoint step {step} to {self.directory}{tries}: {_first_line(exc)}; "
                        "earlier checkpoints are intact"
                    ) from exc
                self._event("save_retry", step, f"{_first_line(exc)}; retry {attempt}/{SAVE_ATTEMPTS - 1} in {delay:g} s")
                self.warn(f"writing checkpoint step {step} failed ({_first_line(exc)}); "
                          f"retrying in {delay:g} s ({attempt}/{SAVE_ATTEMPTS - 1})")
                time.sleep(delay)
                delay *= 2

    def _settle(self) -> None:
        """Wait for the save in flight; back it up when committed, handle it if it failed."""
        self._join_recorder()
        if self._pending is None or self._mgr is None:
            return
        pending, self._pending = self._pending, None
        step = pending[0]
        try:
            self._mgr.wait_until_finished()
        except Exception as exc:
            self._remove_partial(step)
            if is_disk_full(exc):
                raise self._disk_full_error(step, exc) from exc
            if not is_transient(exc):
                raise CheckpointError(
                    f"writing checkpoint step {step} to {self.directory} failed: {_first_line(exc)}; "
                    "the partial step was removed, earlier checkpoints are intact"
                ) from exc
            if not _alive(pending[1]):  # the arrays were donated to later steps: the next save supersedes it
                self._event("save_lost", step, _first_line(exc))
                self.warn(f"writing checkpoint step {step} failed ({_first_line(exc)}); "
                          "the next checkpoint will be written as usual")
                return
            self.warn(f"writing checkpoint step {step} failed ({_first_line(exc)}); retrying")
            self._write(*pending, blocking=True)
        self._committed(step)

    def _committed(self, step: int) -> None:
        """Record the committed step's checksums (and back it up) in a thread, joined before
        the next save or read: hashing runs beside training rather than inside the next
        ``save`` (0.10 s of the loop's time per save of a 105 MB state, and a backup's copy)."""
        self._commits += 1
        if not _primary():  # process 0 records checksums and makes the backups
            return
        backup = self.backup_dir is not None and self._commits % self.backup_every == 0
        notes: list[tuple[str, tuple]] = []
        self._recorder = (threading.Thread(target=self._record, args=(step, backup, notes),
                                           name=f"astroflax-checksums-{step}"), notes)
        self._recorder[0].start()
        if (self.directory / OBSOLETE_DIR).exists():
            self._purger = threading.Thread(target=self._purge_obsolete, name=f"astroflax-purge-{step}")
            self._purger.start()

    def _record(self, step: int, backup: bool, notes: list) -> None:
        try:
            write_checksums(self.directory / str(step))
        except OSError as exc:  # the step is committed and usable; only bit rot would go unnoticed
            notes.append(("warn", (f"could not record checksums of checkpoint step {step}: {_first_line(exc)}",)))
        if backup:
            self._backup(step, notes)

    def _purge_obsolete(self) -> None:
        """Remove the steps retention dropped (Orbax renamed them into ``obsolete/``)."""
        if _primary():
            shutil.rmtree(self.directory / OBSOLETE_DIR, ignore_errors=True)

    def _join_recorder(self, purge: bool = True) -> None:
        """Wait for the checksums and backup of the last commit; report what they noted. With
        ``purge``, also for the removal of the steps it made obsolete (before the next save or
        read; ``wait`` leaves it, since a commit is complete without it)."""
        purger = self._purger
        if purge and purger is not None and purger is not threading.current_thread():
            self._purger = None
            purger.join()
        recorder, self._recorder = self._recorder, None
        if recorder is None or recorder[0] is threading.current_thread():
            self._recorder = recorder
            return
        recorder[0].join()
        for kind, args in recorder[1]:
            self._event(*args) if kind == "event" else self.warn(*args)

    def _remove_partial(self, step: int) -> None:
        """Remove what a failed save of ``step`` left: its temporary directory, or an uncommitted final one."""
        if not self.directory.is_dir() or not _primary():
            return
        for p in self.directory.iterdir():
            partial = p.name.startswith(f"{step}{TMP_MARKER}") or (
                p.name == str(step) and p.is_dir() and not self._has_commit(p)
            )
            if partial:
                shutil.rmtree(p, ignore_errors=True)
        if self._mgr is not None:
            try:
                self._mgr.reload()
            except Exception:  # noqa: BLE001 - a listing problem is found by the next save/restore
                pass

    # ------------------------------------------------------------ disk space
    def _check_space(self, step: int, state: Any, meta: dict, data_state: dict) -> None:
        last = self._last_size()
        if last is None:  # first checkpoint: estimated from the arrays and the JSON
            last = state_bytes(state) + len(json.dumps(meta)) + len(json.dumps(data_state))
        need = space_needed(last)
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError:
            return
        if free < need:
            raise CheckpointError(
                f"not enough free disk space in {self.directory} for checkpoint step {step}: need ~{_mb(need)}, "
                f"{_mb(free)} free; {self._what_is_left()}"
            )

    def _what_is_left(self) -> str:
        steps = _list_steps(self.directory)
        if steps:
            return f"checkpoints up to step {steps[-1]} are intact -- free some space and continue with --resume"
        return "no checkpoint of this run was written -- free some space and start it again"

    def _last_size(self) -> int | None:
        for directory in (self.directory, self.backup_dir):
            steps = _list_steps(directory) if directory is not None else []
            if steps:
                return dir_bytes(directory / str(steps[-1]))
        return None

    def _disk_full_error(self, step: int, exc: BaseException) -> CheckpointError:
        try:
            free = f", {_mb(shutil.disk_usage(self.directory).free)} free after removing the partial step"
        except OSError:
            free = ""
        last = self._last_size()
        need = f"need ~{_mb(space_needed(last))}" if last is not None else "the write ran out of space"
        return CheckpointError(
            f"not enough free disk space in {self.directory} for checkpoint step {step}: {need}{free} "
            f"({_disk_full_cause(exc)}); {self._what_is_left()}"
        )

    # ---------------------------------------------------------------- backup
    def _backup(self, step: int, notes: list) -> None:
        """Copy committed ``step`` into the backup directory (atomically: copy, then rename). A
        failed backup is a warning (in ``notes``, for the loop's thread): the primary
        checkpoint is intact."""
        src = self.directory / str(step)
        dst_root = self.backup_dir
        tmp = dst_root / f".{step}.backup-partial-{os.getpid()}"
        try:
            dst_root.mkdir(parents=True, exist_ok=True)
            need = space_needed(dir_bytes(src))
            free = shutil.disk_usage(dst_root).free
            if free < need:
                raise OSError(errno.ENOSPC, f"need ~{_mb(need)}, {_mb(free)} free")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            final = dst_root / str(step)
            if final.exists():
                old = dst_root / f".{step}.backup-old-{os.getpid()}"
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, final)
            notes.append(("event", ("backup", step, str(final))))
            self._prune_backups()
        except Exception as exc:  # noqa: BLE001 - a backup never stops training
            shutil.rmtree(tmp, ignore_errors=True)
            notes.append(("event", ("backup_failed", step, _first_line(exc))))
            notes.append(("warn", (f"could not back up checkpoint step {step} to {dst_root}: {_first_line(exc)}",)))

    def _prune_backups(self) -> None:
        """Keep the newest ``keep_latest`` backups and the ``keep_best`` best ones."""
        steps = _list_steps(self.backup_dir)
        keep = set(steps[-self.cfg.keep_latest:])
        if self.cfg.keep_best:
            ranked = sorted(steps, key=lambda s: self._rank(self.backup_dir, s))
            keep |= {s for s in ranked[: self.cfg.keep_best] if math.isfinite(self._rank(self.backup_dir, s)[0])}
        for s in steps:
            if s not in keep:
                shutil.rmtree(self.backup_dir / str(s), ignore_errors=True)

    def _backup_steps(self) -> list[int]:
        return _list_steps(self.backup_dir) if self.backup_dir is not None else []

    # --------------------------------------------------------------- listing
    def steps(self) -> list[int]:
        """Steps in the checkpoints directory (complete by name; see ``verify`` for their contents)."""
        if self._mgr is not None:
            self._mgr.reload()
        return _list_steps(self.directory)

    def available_steps(self) -> list[int]:
        """Steps in the checkpoints directory or the backup directory."""
        return sorted(set(self.steps()) | set(self._backup_steps()))

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def _sources(self, step: int) -> list[Path]:
        self._join_recorder()  # a backup being made is a source once it is complete
        out = [d for d in (self.directory, self.backup_dir)
               if d is not None and step in _list_steps(d)]
        return out

    # ---------------------------------------------------------- verification
    @staticmethod
    def _has_commit(step_dir: Path) -> bool:
        if (step_dir / COMMIT_FILE).is_file():
            return True
        try:
            return bool(json.loads((step_dir / STEP_METADATA_FILE).read_text()).get("commit_timestamp_nsecs"))
        except (OSError, ValueError, AttributeError):
            return False

    def check_files(self, step: int, directory: Path | None = None, checksums: bool = True) -> tuple[dict, dict]:
        """The checks that need no model: commit record, items, metadata and data-state JSON,
        and (``checksums``) the files against the checksums recorded at commit.
        Returns (meta, data_state); raises :class:`DamagedCheckpoint`."""
        self._join_recorder()  # its checksums may still be being recorded
        directory = directory or self.directory
        step_dir = directory / str(step)
        if not step_dir.is_dir():
            raise DamagedCheckpoint(step, directory, "missing", "the step directory does not exist")
        if not any(step_dir.iterdir()):
            raise DamagedCheckpoint(step, directory, "empty", "the step directory is empty")
        if not self._has_commit(step_dir):
            raise DamagedCheckpoint(step, directory, "uncommitted",
                                    f"no Orbax commit record ({COMMIT_FILE} / {STEP_METADATA_FILE})")
        for item in ITEMS:
            if not (step_dir / item).is_dir():
                raise DamagedCheckpoint(step, directory, f"missing-{item}", f"its {item!r} item is missing")
        loaded = {}
        for item, label in (("meta", "metadata"), ("data", "data-iterator state")):
            path = step_dir / item / "metadata"
            if not path.is_file():
                raise DamagedCheckpoint(step, directory, f"missing-{item}", f"its {label} file {item}/metadata is missing")
            try:
                value = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise DamagedCheckpoint(step, directory, f"bad-{item}",
                                        f"its {label} {item}/metadata is not readable JSON ({_first_line(exc, 120)})") from None
            if not isinstance(value, dict):
                raise DamagedCheckpoint(step, directory, f"bad-{item}",
                                        f"its {label} {item}/metadata is a {type(value).__name__}, expected an object")
            loaded[item] = value
        metrics = step_dir / "metrics" / "metrics"  # Orbax's ranking metrics (written since best_fn is set)
        if metrics.exists():
            try:
                json.loads(metrics.read_text())
            except (OSError, ValueError) as exc:
                raise DamagedCheckpoint(step, directory, "bad-metrics",
                                        f"its ranking metrics metrics/metrics are not readable JSON ({_first_line(exc, 80)})") from None
        meta = loaded["meta"]
        if meta.get("step", step) != step:
            raise DamagedCheckpoint(step, directory, "bad-meta", f"its metadata names step {meta.get('step')}")
        if checksums:
            self._check_sums(step, directory, step_dir)
        return meta, loaded["data"]

    @staticmethod
    def _check_sums(step: int, directory: Path, step_dir: Path) -> None:
        """Compare the files with the checksums recorded at commit (steps saved before checksums
        existed, or killed between commit and recording, have none and skip this)."""
        path = step_dir / CHECKSUM_FILE
        if not path.exists():
            return
        try:
            files = json.loads(path.read_text())["files"]
            expected = {name: (_algorithm(v), str(v[_algorithm(v)]), int(v["bytes"])) for name, v in files.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DamagedCheckpoint(step, directory, "bad-checksums",
                                    f"its checksum record {CHECKSUM_FILE} is unreadable ({_first_line(exc, 80)})") from None
        for name, (algorithm, digest, size) in sorted(expected.items()):
            f = step_dir / name
            if not f.is_file():
                raise DamagedCheckpoint(step, directory, "missing-file", f"its file {name} is missing")
            actual = f.stat().st_size
            if actual != size:
                what = "is truncated" if actual < size else "has grown"
                raise DamagedCheckpoint(step, directory, "truncated" if actual < size else "changed",
                                        f"its file {name} {what} ({actual} bytes, {size} when written)")
            if _digest(f, algorithm) != digest:
                raise DamagedCheckpoint(step, directory, "checksum",
                                        f"its file {name} does not match the checksum recorded when it was written")

    def _restore_arrays(self, step: int, directory: Path, abstract_state: Any) -> Any:
        path = directory / str(step) / "state"
        if self._restorer is None:
            self._restorer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
        try:
            arrays = self._restorer.restore(path, args=ocp.args.StandardRestore(to_arrays(abstract_state)))
            state = from_arrays(arrays, abstract_state)
        except Exception as exc:
            mismatch = self._mismatch(path, abstract_state)
            if mismatch:
                raise CheckpointError(
                    f"checkpoint step {step} in {directory} does not match this model/config: {mismatch}"
                ) from exc
            raise DamagedCheckpoint(step, directory, "unreadable-arrays",
                                    f"its arrays cannot be read ({_first_line(exc, 160)})") from exc
        bad = nonfinite_leaves(state)
        if bad:
            raise DamagedCheckpoint(step, directory, "non-finite", _describe_nonfinite(bad))
        return state

    def _mismatch(self, path: Path, abstract_state: Any) -> str | None:
        """Why a readable checkpoint does not fit ``abstract_state``; None if its metadata is
        unreadable (damaged) or agrees with the target (so the array data is damaged)."""
        try:
            stored = ocp.StandardCheckpointHandler().metadata(path)
            stored = getattr(stored, "item_metadata", stored)
            stored_leaves = jax.tree.leaves(stored, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
            stored_shapes = sorted(tuple(x.shape) for x in stored_leaves)
        except Exception:  # noqa: BLE001 - unreadable metadata: damaged
            return None
        target_shapes = sorted(tuple(x.shape) for x in jax.tree.leaves(abstract_state))
        if not stored_shapes:
            return None
        if len(stored_shapes) != len(target_shapes):
            return f"it holds {len(stored_shapes)} arrays, this model and optimiser have {len(target_shapes)}"
        if stored_shapes != target_shapes:
            diff = sorted(set(stored_shapes) ^ set(target_shapes))[:3]
            return f"array shapes differ (e.g. {', '.join(str(d) for d in diff)})"
        return None

    def verify(self, step: int, abstract_state: Any, directory: Path | None = None) -> Restored:
        """Restore ``step`` from ``directory`` with every check; raises :class:`DamagedCheckpoint`
        (damaged) or :class:`CheckpointError` (does not match this model/config)."""
        directory = directory or self.directory
        meta, data_state = self.check_files(step, directory)
        try:
            target = abstract_state(meta) if callable(abstract_state) else abstract_state
        except DamagedCheckpoint as damage:  # the target builder found the metadata wanting
            raise DamagedCheckpoint(step, directory, damage.reason, damage.detail) from None
        state = self._restore_arrays(step, directory, target)
        return Restored(step, state, data_state, meta, directory)

    def _set_aside(self, damage: DamagedCheckpoint) -> Path | None:
        """Move a damaged step to ``<dir>/damaged/<step>-<reason>/`` (never deleted)."""
        src = damage.directory / str(damage.step)
        if not src.exists() or not _primary():  # process 0 moves it; the others skip it alike
            return None
        root = damage.directory / DAMAGED_DIR
        dst = root / f"{damage.step}-{damage.reason}"
        n = 2
        while dst.exists():
            dst, n = root / f"{damage.step}-{damage.reason}-{n}", n + 1
        try:
            root.mkdir(exist_ok=True)
            os.replace(src, dst)
        except OSError as exc:
            self.warn(f"could not move damaged checkpoint {src} aside: {_first_line(exc)}")
            return None
        try:
            (dst / "DAMAGED.txt").write_text(f"{damage}\n")
        except OSError:
            pass
        if self._mgr is not None and damage.directory == self.directory:
            self._mgr.reload()
        return dst

    def _skip(self, damage: DamagedCheckpoint, instead: str) -> None:
        moved = self._set_aside(damage)
        where = f"moved to {moved}" if moved else "left in place"
        self._event("checkpoint_damaged", damage.step, damage.detail, reason=damage.reason,
                    directory=str(damage.directory), moved_to=str(moved) if moved else None)
        self.warn(f"{damage}; {where}; {instead}")

    def _walk(self, candidates: list[int], abstract_state: Any, what: str) -> Restored:
        """The first candidate step that passes every check (primary copy, then the backup's);
        damaged ones are skipped and moved aside."""
        problems, self._problems = self._problems, []  # those found while ranking the candidates
        for i, step in enumerate(candidates):
            sources = self._sources(step)
            for j, directory in enumerate(sources):
                try:
                    restored = self.verify(step, abstract_state, directory)
                except DamagedCheckpoint as damage:
                    problems.append(f"step {step}{' (backup)' if directory != self.directory else ''}: {damage.detail}")
                    if j + 1 < len(sources):
                        instead = f"trying the backup copy in {sources[j + 1]}"
                    elif i + 1 < len(candidates):
                        instead = f"trying step {candidates[i + 1]}"
                    else:
                        instead = "no other checkpoint left"
                    self._skip(damage, instead)
                    continue
                if restored.directory != self.directory:
                    self._event("restored_from_backup", step, str(directory))
                    self.warn(f"using the backup copy of checkpoint step {step} from {directory}")
                if problems:
                    self._event("checkpoint_fallback", step, f"{what} -> step {step}")
                return restored
        where = f"{self.directory}" + (f" or its backup {self.backup_dir}" if self.backup_dir else "")
        if not problems:
            raise CheckpointError(f"no complete checkpoint in {where}")
        raise CheckpointError(f"no usable checkpoint in {where}: " + "; ".join(problems))

    # --------------------------------------------------------------- restore
    def restore_latest(
        self,
        abstract_state: Any,
        *,
        at_most: int | None = None,
        accept: Callable[[dict], bool] | None = None,
    ) -> tuple[int, Any, dict, dict]:
        """The newest good step, restored onto ``abstract_state``: (step, state, data_state, meta).

        Damaged steps are skipped (warned, moved aside) newest to oldest; a step the primary
        directory lacks or holds damaged is taken from the backup directory. ``at_most`` skips
        later steps; ``accept(meta)`` may pass over intact steps (e.g. non-finite val metrics),
        which are left in place."""
        self.wait()
        steps = [s for s in sorted(self.available_steps(), reverse=True) if at_most is None or s <= at_most]
        if accept is not None:
            steps = [s for s in steps if self._accepted(s, accept)]
        r = self._walk(steps, abstract_state, "latest")
        return r.step, r.state, r.data_state, r.meta

    def _accepted(self, step: int, accept: Callable[[dict], bool]) -> bool:
        for directory in self._sources(step):
            try:
                meta, _ = self.check_files(step, directory, checksums=False)
            except DamagedCheckpoint:
                return True  # damaged: the walk reports it and moves it aside
            return bool(accept(meta))
        return False

    def open(self, which: str | int, abstract_state: Any, metric: str = "val_loss", mode: str = "min") -> Restored:
        """Restore checkpoint ``which`` (best, latest or a step). ``abstract_state`` is the target
        or a function of the step's metadata returning it. ``latest`` and ``best`` fall back to
        the next good step; an explicit step that is damaged is an error naming the good ones."""
        candidates = self._candidates(which, metric, mode)
        if isinstance(candidates, int):
            step = candidates
            errors = []
            for directory in self._sources(step):
                try:
                    return self.verify(step, abstract_state, directory)
                except DamagedCheckpoint as damage:
                    errors.append(damage)
            raise self._explicit_damage(step, errors[-1])
        return self._walk(candidates, abstract_state, str(which))

    def _explicit_damage(self, step: int, damage: DamagedCheckpoint) -> CheckpointError:
        good = self._good_steps(exclude=step)
        return CheckpointError(f"--checkpoint {step}: {damage}; checkpoints that pass the file checks: {good}")

    def _good_steps(self, exclude: int | None = None) -> list[int]:
        good = []
        for s in self.available_steps():
            if s == exclude:
                continue
            for d in self._sources(s):
                try:
                    self.check_files(s, d)
                except DamagedCheckpoint:
                    continue
                good.append(s)
                break
        return good

    def _candidates(self, which: str | int, metric: str, mode: str) -> list[int] | int:
        steps = self.available_steps()
        if not steps:
            where = f"{self.directory}" + (f" or its backup {self.backup_dir}" if self.backup_dir else "")
            raise CheckpointError(f"no complete checkpoint in {where}")
        if which == "latest":
            return sorted(steps, reverse=True)
        if which == "best":
            scored, readable = [], []
            for s in steps:  # ranked by each step's own metadata; unreadable ones are set aside now
                for directory in self._sources(s):
                    try:
                        meta, _ = self.check_files(s, directory, checksums=False)
                    except DamagedCheckpoint as damage:
                        self._skip(damage, "not ranked for --checkpoint best")
                        self._problems.append(f"step {s}: {damage.detail}")
                        continue
                    readable.append(s)
                    value = _finite_metric(meta.get("val_metrics") or {}, metric, mode)
                    if math.isfinite(value):
                        scored.append(((value if mode == "min" else -value), -s))
                    break
            ranked = [-neg for _, neg in sorted(scored)]
            # After the ranked steps (all damaged, or none has the metric): the newest readable one.
            return ranked + [s for s in sorted(readable, reverse=True) if s not in ranked]
        try:
            step = int(which)
        except (TypeError, ValueError):
            raise CheckpointError(f"--checkpoint {which!r}: expected best, latest or a step number") from None
        if step not in steps:
            raise CheckpointError(f"--checkpoint {step}: no such checkpoint; available steps: {steps}")
        return step

    def _rank(self, directory: Path, step: int, metric: str | None = None, mode: str | None = None) -> tuple[float, int]:
        """Sort key of a step by its own metadata (best first; unreadable or NaN metrics last)."""
        metric, mode = metric or self.cfg.metric, mode or self.cfg.mode
        try:
            meta, _ = self.check_files(step, directory, checksums=False)
        except DamagedCheckpoint:
            return math.inf, -step
        value = _finite_metric(meta.get("val_metrics") or {}, metric, mode)
        return (value if mode == "min" else -value), -step

    def _rank_any(self, step: int, metric: str, mode: str) -> tuple[float, int]:
        return min((self._rank(d, step, metric, mode) for d in self._sources(step)), default=(math.inf, -step))

    def read_meta(self, step: int) -> dict:
        for directory in self._sources(step) or [self.directory]:
            try:
                return self.check_files(step, directory)[0]
            except DamagedCheckpoint as damage:
                last = damage
        raise last

    def best_step(self, metric: str, mode: str) -> int | None:
        """The kept step with the best validation metric (from each step's own metadata); steps
        whose metadata is unreadable or whose metric is missing, NaN or Inf are skipped."""
        ranked = sorted(self.available_steps(), key=lambda s: self._rank_any(s, metric, mode))
        ranked = [s for s in ranked if math.isfinite(self._rank_any(s, metric, mode)[0])]
        return ranked[0] if ranked else None

    def resolve_step(self, which: str | int, metric: str = "val_loss", mode: str = "min") -> int:
        """The step ``which`` names, checked without a model (commit record, metadata): for
        ``latest`` / ``best`` the first candidate whose files pass (damaged ones are moved aside).
        ``open`` also checks the arrays; prefer it."""
        candidates = self._candidates(which, metric, mode)
        if isinstance(candidates, int):
            try:
                self.read_meta(candidates)
            except DamagedCheckpoint as damage:
                raise self._explicit_damage(candidates, damage) from None
            return candidates
        problems, self._problems = self._problems, []
        for i, step in enumerate(candidates):
            for directory in self._sources(step):
                try:
                    self.check_files(step, directory)
                    return step
                except DamagedCheckpoint as damage:
                    problems.append(f"step {step}: {damage.detail}")
                    self._skip(damage, f"trying step {candidates[i + 1]}" if i + 1 < len(candidates) else "no other checkpoint left")
        raise CheckpointError(f"no usable checkpoint in {self.directory}: " + "; ".join(problems))

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """Restore ``step`` onto ``abstract_state`` (shapes, dtypes and shardings of the live
        state), verified; the backup copy is used if the primary one is missing or damaged."""
        sources = self._sources(step)
        if not sources:
            raise CheckpointError(f"no checkpoint step {step} in {self.directory}; available steps: {self.available_steps()}")
        for j, directory in enumerate(sources):
            try:
                r = self.verify(step, abstract_state, directory)
                return r.state, r.data_state, r.meta
            except DamagedCheckpoint as damage:
                if j + 1 == len(sources):
                    raise
                self.warn(f"{damage}; trying the backup copy in {sources[j + 1]}")
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------- events
    def _event(self, kind: str, step: int, detail: str, **extra: Any) -> None:
        self.events.append({"event": kind, "step": step, "detail": detail, **extra})


def _model_part(state: Any) -> dict:
    """The parameters and model state of a train state (or of a plain dict holding them)."""
    if hasattr(state, "params"):
        return {"params": state.params, "model_state": getattr(state, "model_state", None)}
    if isinstance(state, dict) and "params" in state:
        return {k: state[k] for k in ("params", "model_state") if k in state}
    return {"state": state}


def _alive(tree: Any) -> bool:
    """Whether every array of ``tree`` still has its buffers (not donated to a later step)."""
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and leaf.is_deleted():
            return False
    return True
