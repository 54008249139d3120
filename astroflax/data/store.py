"""A dataset on disk: validated once, sharded into ArrayRecord files, streamed by Grain.

::

    DIR/
      manifest.json                    format, task, schema, splits (shards, rows), content hash,
                                       normalisation statistics, the task's data facts, provenance
      train-00000-of-00004.arrayrecord one record per example
      val-00000-of-00001.arrayrecord
      ...

ArrayRecord is Grain's own random-access format: a global shuffle by index needs random
access, which sequential formats (TFRecord, Parquet row groups) do not give per example.

A record is the example's arrays in schema order as raw little-endian bytes. Every example of a
task has the same shapes (light curves and spectra are padded to the task's length), so the
bytes decode with ``np.frombuffer`` at fixed offsets, with no per-record header, no pickle and
no dependency; a record of the wrong length is a damaged shard and is reported as one.

The content hash (sha256 over the schema and every record, in order) is the dataset version a
resumed run checks; the writer computes it, and the normalisation statistics (per-field mean,
standard deviation, minimum and maximum of the training split), in the same single pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from astroflax.errors import ConfigError, DataError

FORMAT = "astroflax-arrayrecord-v1"
MANIFEST = "manifest.json"
DEFAULT_SHARD_BYTES = 256 * 1024 * 1024  # ~256 MB shards: a few per GB, each opened once
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * math.prod(self.shape))


def schema_of(arrays: Mapping[str, np.ndarray]) -> list[Field]:
    """The per-example fields of a dict of arrays (first axis = example), in key order."""
    fields = []
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind not in "biuf":
            raise DataError(f"field {name!r}: dtype {a.dtype} cannot be stored; expected numbers or booleans")
        fields.append(Field(name, np.dtype(a.dtype).newbyteorder("<").str, tuple(int(d) for d in a.shape[1:])))
    return fields


def record_dtype(schema: list[Field]) -> np.dtype:
    """The packed structured dtype of one record: fields in schema order, no padding."""
    return np.dtype([(f.name, np.dtype(f.dtype), f.shape) for f in schema])


def decode(record: bytes, schema: list[Field], where: str = "") -> dict[str, np.ndarray]:
    return decode_batch([record], schema, where, squeeze=True)


def decode_batch(records: list[bytes], schema: list[Field], where: str = "", squeeze: bool = False,
                 dtype: np.dtype | None = None) -> dict[str, np.ndarray]:
    """Records -> one array per field with the records along the first axis (one frombuffer
    over the joined bytes: per-example decoding and stacking cost more than reading)."""
    dtype = dtype or record_dtype(schema)
    for record in records:
        if len(record) != dtype.itemsize:
            raise DataError(f"{where}: a record has {len(record)} bytes, the schema {dtype.itemsize}; the shard is damaged")
    rows = np.frombuffer(b"".join(records), dtype=dtype)
    if squeeze:
        return {f.name: rows[f.name][0] for f in schema}
    return {f.name: np.ascontiguousarray(rows[f.name]) for f in schema}


class _RunningStats:
    """Per-element mean/variance/min/max over rows, merged chunk by chunk (Chan et al.)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2, self.lo, self.hi = 0, None, None, None, None

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        n = len(x)
        if n == 0:
            return
        finite = np.where(np.isfinite(x), x, np.nan)  # a NaN (masked) value is left out, per element
        with warnings.catch_warnings():  # an element that is NaN in every row of the chunk stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(finite, axis=0)
            m2 = np.nansum((finite - mean) ** 2, axis=0)
            lo, hi = np.nanmin(finite, axis=0), np.nanmax(finite, axis=0)
        if self.n == 0:
            self.n, self.mean, self.m2, self.lo, self.hi = n, mean, m2, lo, hi
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.n * n / total
        self.lo, self.hi = np.fmin(self.lo, lo), np.fmax(self.hi, hi)
        self.n = total

    def summary(self) -> dict[str, Any]:
        """Scalars over all elements of the field (the full per-element arrays stay out of JSON)."""
        if not self.n:
            return {}
        std = np.sqrt(self.m2 / max(self.n - 1, 1))

        def scalar(v: np.ndarray, fn) -> float | None:
            v = np.asarray(v, np.float64)
            return float(fn(v)) if np.isfinite(v).any() else None

        return {"mean": scalar(self.mean, np.nanmean), "std": scalar(std, np.nanmean),
                "min": scalar(self.lo, np.nanmin), "max": scalar(self.hi, np.nanmax)}


class DatasetWriter:
    """Write splits chunk by chunk into a new dataset directory; nothing appears under the final
    name until ``close()`` has written the manifest (a crash leaves only a temporary directory)."""

    def __init__(self, out_dir: str | Path, task: str, *, shard_bytes: int = DEFAULT_SHARD_BYTES,
                 overwrite: bool = False, keep_existing: bool = False):
        from array_record.python.array_record_module import ArrayRecordWriter

        self._writer_cls = ArrayRecordWriter
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not overwrite and not keep_existing:
            raise ConfigError(f"--out {self.out_dir}: already exists; choose a new directory")
        self.tmp = self.out_dir.with_name(f".{self.out_dir.name}.partial-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.task, self.shard_bytes = task, shard_bytes
        # keep_existing: another process that wrote the same dataset first wins (the cache).
        self.keep_existing = keep_existing
        self.schema: list[Field] | None = None
        self._hash = hashlib.sha256()
        self._splits: dict[str, dict[str, Any]] = {}
        self._open: dict[str, Any] = {}
        self._stats: dict[str, _RunningStats] = {}

    def add(self, split: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Append the rows of ``arrays`` (a chunk) to ``split``."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: expected one of {SPLITS}")
        schema = schema_of(arrays)
        if self.schema is None:
            self.schema = schema
            self._hash.update(json.dumps([dataclasses.asdict(f) for f in schema]).encode())
        elif [(f.name, f.shape) for f in schema] != [(f.name, f.shape) for f in self.schema]:
            raise DataError(f"split {split!r}: fields {[(f.name, f.shape) for f in schema]} differ from the first "
                            f"chunk's {[(f.name, f.shape) for f in self.schema]}")
        n = len(next(iter(arrays.values())))
        if split == "train":
            for f in self.schema:
                if np.dtype(f.dtype).kind == "f":
                    self._stats.setdefault(f.name, _RunningStats()).add(np.asarray(arrays[f.name]))
        info = self._splits.setdefault(split, {"rows": 0, "shards": [], "bytes": 0})
        record_bytes = sum(f.nbytes for f in self.schema)
        # All records of the chunk at once: one (n, record_bytes) byte matrix, a row per example
        # (each field's bytes in schema order, as ``decode`` reads them).
        matrix = np.concatenate([np.ascontiguousarray(arrays[f.name], dtype=f.dtype).reshape(n, -1).view(np.uint8)
                                 for f in self.schema], axis=1) if n else np.zeros((0, record_bytes), np.uint8)
        for i in range(n):
            writer = self._writer(split, info, record_bytes)
            record = matrix[i].tobytes()
            writer.write(record)
            self._hash.update(split.encode())
            self._hash.update(record)
            info["rows"] += 1
            info["bytes"] += len(record)
            info["shards"][-1]["rows"] += 1

    def _writer(self, split: str, info: dict, record_bytes: int) -> Any:
        current = info["shards"][-1] if info["shards"] else None
        if current is None or current["rows"] * record_bytes >= self.shard_bytes:
            if split in self._open:
                self._open.pop(split).close()
            name = f"{split}-{len(info['shards']):05d}.arrayrecord"
            # group_size:1 -- every record is its own chunk, so a random read decodes one example.
            self._open[split] = self._writer_cls(str(self.tmp / name), "group_size:1")
            info["shards"].append({"file": name, "rows": 0})
        return self._open[split]

    def close(self, info: dict[str, Any], source: dict[str, Any]) -> Path:
        """Finish the shards, write the manifest, move the directory to its final name."""
        for w in self._open.values():
            w.close()
        self._open.clear()
        if self.schema is None or "train" not in self._splits:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise DataError(f"{self.out_dir}: no training rows were written")
        for split in self._splits.values():  # final shard names say how many there are
            total = len(split["shards"])
            for i, shard in enumerate(split["shards"]):
                final = shard["file"].replace(".arrayrecord", f"-of-{total:05d}.arrayrecord")
                os.replace(self.tmp / shard["file"], self.tmp / final)
                shard["file"] = final
        manifest = {
            "format": FORMAT, "task": self.task, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "schema": [dataclasses.asdict(f) for f in self.schema],
            "splits": self._splits,
            "content_hash": self._hash.hexdigest()[:16],
            "normalisation": {k: s.summary() for k, s in self._stats.items()},
            "info": info, "source": source,
        }
        (self.tmp / MANIFEST).write_text(json.dumps(_json_safe(manifest), indent=1))
        if self.out_dir.exists():
            if self.keep_existing:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return self.out_dir
            shutil.rmtree(self.out_dir)
        try:
            os.replace(self.tmp, self.out_dir)
        except OSError:
            if not (self.keep_existing and is_store(self.out_dir)):  # lost a race to an identical write
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.out_dir

    def abort(self) -> None:
        for w in self._open.values():
            try:
                w.close()
            except Exception:  # noqa: BLE001 - the directory is removed anyway
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def _json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# ------------------------------------------------------------------------------ reading


def is_store(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise ConfigError(f"{path}: not a converted dataset (no {MANIFEST}); make one with `astroflax data convert`")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{file}: not a valid manifest ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{file}: format {manifest.get('format')!r}; this astroflax reads {FORMAT!r}")
    return manifest


class RecordSource:
    """Random access to one split's examples (Grain's ``RandomAccessDataSource`` protocol)."""

    def __init__(self, directory: Path, split: str, manifest: dict[str, Any], keys: list[str] | None = None):
        from grain.sources import ArrayRecordDataSource

        info = manifest["splits"].get(split)
        if info is None:
            raise ConfigError(f"{directory}: no split {split!r}; it has {sorted(manifest['splits'])}")
        paths = [directory / s["file"] for s in info["shards"]]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"{directory}: shard file(s) missing: {', '.join(missing)}")
        self.where = f"{directory} ({split})"
        self.schema = [Field(f["name"], f["dtype"], tuple(f["shape"])) for f in manifest["schema"]]
        self.keys = keys
        self._dtype = record_dtype(self.schema)
        self._source = ArrayRecordDataSource([str(p) for p in paths])
        self._len = int(info["rows"])
        if len(self._source) != self._len:
            raise DataError(f"{self.where}: the shards hold {len(self._source)} records, the manifest says {self._len}")

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        example = decode(self._source[index], self.schema, self.where)
        return example if self.keys is None else {k: example[k] for k in self.keys}

    def read_batch(self, indices: Any) -> dict[str, np.ndarray]:
        """Examples ``indices`` as a batch: one batched ArrayRecord read, one decode."""
        records = self._source.__getitems__([int(i) for i in indices])
        batch = decode_batch(records, self.schema, self.where, dtype=self._dtype)
        return batch if self.keys is None else {k: batch[k] for k in self.keys}

    @property
    def nbytes(self) -> int:
        """Bytes of the fields read, over all rows (what ``read_all`` returns)."""
        return self._len * sum(f.nbytes for f in self.schema if self.keys is None or f.name in self.keys)

    def read_all(self, chunk: int = 4096) -> dict[str, np.ndarray]:
        """The whole split as arrays (evaluation splits, diagnostics)."""
        keys = [f.name for f in self.schema if self.keys is None or f.name in self.keys]
        parts = [self.read_batch(range(s, min(s + chunk, self._len))) for s in range(0, self._len, chunk)]
        if not parts:
            return {f.name: np.empty((0, *f.shape), f.dtype) for f in self.schema if f.name in keys}
        return {k: np.concatenate([p[k] for p in parts]) for k in keys}

    def __repr__(self) -> str:
        return f"RecordSource({self.where}, {self._len} rows)"


class StoredSplit(Mapping):
    """A split of a converted dataset that reads like a dict of arrays: ``len()`` and the source
    need no reading; the first access to an array loads the split (diagnostics, small data).
    Training streams from ``source()`` instead."""

    def __init__(self, directory: Path, split: str, manifest: dict[str, Any]):
        self.directory, self.name, self.manifest = directory, split, manifest
        self._arrays: dict[str, np.ndarray] = {}

    def source(self, keys: list[str] | None = None) -> RecordSource:
        return RecordSource(self.directory, self.name, self.manifest, keys)

    @property
    def rows(self) -> int:
        return int(self.manifest["splits"][self.name]["rows"])

    def __getitem__(self, key: str) -> np.ndarray:
        """One field of every example, loaded on first use and kept (labels for scoring stay
        small while the inputs of a large split are only ever streamed)."""
        if key not in self._arrays:
            if key not in set(self):
                raise KeyError(key)
            self._arrays[key] = self.source([key]).read_all()[key]
        return self._arrays[key]

    def __iter__(self) -> Iterator[str]:
        return iter([f["name"] for f in self.manifest["schema"]])

    def __len__(self) -> int:
        return len(self.manifest["schema"])


def device_view(task: Any, split: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | RecordSource:
    """What the model sees of a split: its arrays without the task's host keys, or, for a
    converted dataset, a source of those fields read from disk batch by batch."""
    if isinstance(split, StoredSplit):
        return split.source([k for k in split if k not in task.host_keys])
    return task.device_arrays(split)


def split_rows(split: Mapping[str, np.ndarray]) -> int:
    """Examples in a split, without loading a stored one."""
    if isinstance(split, StoredSplit):
        return split.rows
    return len(next(iter(split.values())))


# ---------------------------------------------------------------------------- datasets


def open_store(directory: str | Path, task_name: str) -> Any:
    """A converted dataset as a :class:`~astroflax.tasks.base.Dataset`: every split is a
    :class:`StoredSplit` (streamed for training, loaded when a consumer reads its arrays)."""
    from astroflax.tasks.base import Dataset

    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest.get("task") != task_name:
        raise ConfigError(f"dataset {directory} was converted for task {manifest.get('task')!r}, not {task_name!r}")
    splits = {name: StoredSplit(directory, name, manifest) for name in manifest["splits"]}
    if "train" not in splits or "val" not in splits:
        raise DataError(f"dataset {directory}: needs train and val splits; it has {sorted(splits)}")
    info = {**manifest["info"], "dataset": {"path": str(directory.resolve()), "content_hash": manifest["content_hash"],
                                            "rows": {k: v["rows"] for k, v in manifest["splits"].items()},
                                            "source": manifest.get("source")}}
    return Dataset(splits=splits, info=info, version=manifest["content_hash"])


def load_dataset(cfg: Any) -> Any:
    """The data of a run, always as a converted dataset streamed from disk (one data path).

    ``cfg.dataset`` when set; otherwise the task's own data (bundled, or the user's
    ``data.path``) converted at first use into ``cache_dir()/datasets/<task>-<key>``, where
    the key hashes the task, its data section, the input files (paths, sizes, modification
    times) and the source of the data code, so a changed input, setting or reader makes a
    new one. ``stream: false`` or ``data.cache: false`` (tasks that have it) keeps the data in
    memory instead, as does a cache that cannot be written (a full or read-only disk is not an
    error).
    """
    if getattr(cfg, "dataset", None):
        return open_store(cfg.dataset, cfg.task)
    from astroflax.tasks import get_task

    task = get_task(cfg.task)
    if not getattr(cfg, "stream", True) or getattr(cfg.data, "cache", True) is False:
        return task.load_data(cfg)
    directory = cache_path(cfg, task)
    if is_store(directory):
        try:
            return open_store(directory, task.name)
        except DataError:  # damaged (e.g. a shard deleted by hand): convert again
            shutil.rmtree(directory, ignore_errors=True)
    dataset = task.load_data(cfg)
    try:
        write_dataset(dataset, cfg, directory, keep_existing=True)
    except OSError as exc:
        warnings.warn(f"cannot write the dataset cache {directory} ({exc}); training from memory", stacklevel=2)
        return dataset
    return open_store(directory, task.name)


def cache_path(cfg: Any, task: Any) -> Path:
    """Where :func:`load_dataset` keeps the converted data of ``cfg``."""
    from astroflax.data.cache import content_hash
    from astroflax.runtime import cache_dir

    data = cfg.data.model_dump(mode="json")
    key = content_hash(FORMAT, task.name, data, _input_fingerprint(data.get("path")), _code_fingerprint(task))
    return cache_dir() / "datasets" / f"{task.name}-{key}"


def _input_fingerprint(path: str | None) -> list[Any]:
    """(relative path, size, mtime) of the input file or of every file under the input folder."""
    if not path:
        return []
    root = Path(path)
    if root.is_file():
        st = root.stat()
        return [[str(root.resolve()), st.st_size, st.st_mtime_ns]]
    if not root.is_dir():
        return [str(root)]  # the task's reader reports the missing path
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return [str(root.resolve())] + [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _code_fingerprint(task: Any) -> str:
    """Hash of the source of the data readers and of the task's module: an edited reader must
    not be served data converted by the old one."""
    import inspect

    from astroflax.data.cache import content_hash

    files = sorted(Path(__file__).parent.glob("*.py"))
    module = inspect.getsourcefile(task.load_data)
    if module:
        files.append(Path(module))
    return content_hash(*[f.read_bytes() for f in files])


def write_dataset(dataset: Any, cfg: Any, out_dir: str | Path, *, shard_bytes: int = DEFAULT_SHARD_BYTES,
                  chunk: int = 4096, input_path: str | None = None, keep_existing: bool = False) -> Path:
    """Write a loaded :class:`~astroflax.tasks.base.Dataset` as a converted dataset."""
    writer = DatasetWriter(out_dir, cfg.task, shard_bytes=shard_bytes, keep_existing=keep_existing)
    try:
        for split in SPLITS:
            arrays = dataset.splits.get(split)
            if arrays is None:
                continue
            n = split_rows(arrays)
            for start in range(0, n, chunk):
                writer.add(split, {k: np.asarray(v[start:start + chunk]) for k, v in arrays.items()})
        source = {"input": input_path or getattr(cfg.data, "path", None), "data": cfg.data.model_dump(mode="json"),
                  "task_version": dataset.version}
        return writer.close(dataset.info, source)
    except BaseException:
        writer.abort()
        raise


def convert(cfg: Any, out_dir: str | Path, *, shard_bytes: int = DEFAULT_SHARD_BYTES, chunk: int = 4096,
            input_path: str | None = None) -> dict[str, Any]:
    """Load the task's data as ``cfg`` says (validated by the task's readers), write it as a
    converted dataset; returns the manifest. The data section is kept in the manifest, so a
    run trained on the dataset records what it was made from."""
    from astroflax.tasks import get_task

    dataset = get_task(cfg.task).load_data(cfg)
    path = write_dataset(dataset, cfg, out_dir, shard_bytes=shard_bytes, chunk=chunk, input_path=input_path)
    return read_manifest(path)
