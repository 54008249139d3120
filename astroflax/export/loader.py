"""Run an ``astroflax export`` directory with nothing but jax, numpy and the standard library.

This file imports no other part of astroflax on purpose: copy it next to a service and call::

    from loader import load_export          # or: from astroflax.export.loader import load_export
    model = load_export("exports/transients")
    probs = model.predict({"time": ..., "flux": ..., ...})   # preprocessed arrays, first axis = object

The exported function takes the model's *preprocessed* input arrays (the batch dict the model
sees, named and shaped as in ``model.inputs``), not raw files: turning a user's tables into
those arrays is task code (``astroflax predict EXPORT_DIR --input F`` does it with the task's
``load_inputs``). The preprocessing constants that produced them (normalisation, class names,
input grid, temperature) are in ``model.manifest["preprocessing"]``. The layout is described in
``docs/export_format.md``.

Every problem with the directory (missing or malformed manifest, unknown format or version,
missing file, checksum mismatch, unreadable parameters) raises :class:`ExportFormatError`, and
every problem with the inputs raises :class:`ExportInputError`; both are ``ValueError``
subclasses with a one-line message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "ExportFormatError",
    "ExportInputError",
    "ExportedModel",
    "load_export",
    "sha256_file",
]

FORMAT = "astroflax-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ExportFormatError(ValueError):
    """The export directory is missing, damaged or of a format this loader does not read."""


class ExportInputError(ValueError):
    """The arrays given to :meth:`ExportedModel.predict` do not match the exported inputs."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise ExportFormatError(f"export directory {directory} does not exist")
    path = directory / MANIFEST
    if not path.is_file():
        raise ExportFormatError(f"{directory} is not an astroflax export directory (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ExportFormatError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ExportFormatError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(manifest, dict):
        raise ExportFormatError(f"{path}: expected a JSON object at the top level, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ExportFormatError(f"{path}: 'format' is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ExportFormatError(
            f"{path}: format_version {version!r} is not supported by this loader (it reads version {FORMAT_VERSION})"
        )
    for key, kind in (("files", dict), ("inputs", list), ("function", dict), ("params", dict), ("output", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ExportFormatError(f"{path}: key {key!r} is missing or not a JSON {kind.__name__}")
    for where in ("function", "params"):
        name = manifest[where].get("file")
        if name not in manifest["files"]:
            raise ExportFormatError(f"{path}: {where}.file {name!r} is not among the checksummed files")
    for i, spec in enumerate(manifest["inputs"]):
        ok = isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("shape"), list)
        ok = ok and isinstance(spec.get("dtype"), str)
        try:
            ok = ok and np.dtype(spec.get("dtype")) is not None
        except TypeError:
            ok = False
        if not ok:
            raise ExportFormatError(f"{path}: inputs[{i}] must be an object with a name, a numpy dtype and a shape list")
    return manifest


def _verify_files(directory: Path, manifest: dict[str, Any]) -> None:
    for name, entry in manifest["files"].items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise ExportFormatError(f"{directory / MANIFEST}: file name {name!r} must be a plain name inside the directory")
        path = directory / name
        if not path.is_file():
            raise ExportFormatError(f"{path}: file listed in {MANIFEST} is missing")
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(expected, str):
            raise ExportFormatError(f"{directory / MANIFEST}: no sha256 recorded for {name!r}")
        actual = sha256_file(path)
        if actual != expected:
            raise ExportFormatError(
                f"{path}: sha256 {actual[:12]}... does not match the manifest ({expected[:12]}...); "
                "the file was modified or corrupted"
            )


def _shape_ok(shape: tuple[int, ...], spec: list) -> bool:
    if len(shape) != len(spec):
        return False
    return all(isinstance(want, str) or got == want for got, want in zip(shape, spec))


def _first_bad(mask: np.ndarray) -> str:
    """``row 3`` or ``row 3, position [3, 17]`` of the first True of ``mask`` (first axis = object)."""
    at = tuple(int(k) for k in np.argwhere(mask)[0])
    return f"row {at[0]}" + (f" (position {list(at)})" if len(at) > 1 else "")


def _check_representable(name: str, arr: np.ndarray, dtype: np.dtype) -> None:
    """Refuse values the cast to the exported dtype would turn into inf or wrap around."""
    if arr.size == 0:
        return
    if dtype.kind == "f" and arr.dtype.kind == "f":
        big = np.isfinite(arr) & (np.abs(arr) > np.finfo(dtype).max)
        if big.any():
            raise ExportInputError(
                f"input {name!r} {_first_bad(big)} is {arr[tuple(np.argwhere(big)[0])].item()!r}, which overflows {dtype} "
                f"(|x| <= {float(np.finfo(dtype).max):.4g}) [{int(big.sum())} such values]")
    elif dtype.kind in "iu" and arr.dtype.kind in "iu":
        info = np.iinfo(dtype)
        big = (arr < info.min) | (arr > info.max)
        if big.any():
            raise ExportInputError(
                f"input {name!r} {_first_bad(big)} is {int(arr[tuple(np.argwhere(big)[0])])}, outside the range of "
                f"{dtype} [{info.min}, {info.max}]")


def _check_finite(name: str, arr: np.ndarray) -> None:
    """The exported function is compiled for finite inputs: NaN/inf would come out as NaN outputs."""
    if arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all():
        bad = ~np.isfinite(arr)
        raise ExportInputError(
            f"input {name!r} {_first_bad(bad)} is {arr[tuple(np.argwhere(bad)[0])].item()!r}; expected finite values "
            f"[{int(bad.sum())} non-finite values]")


class ExportedModel:
    """A loaded export: ``predict(inputs) -> outputs`` plus the manifest's constants."""

    def __init__(self, directory: str | Path, verify: bool = True):
        self.directory = Path(directory)
        self.manifest = _read_manifest(self.directory)
        if verify:
            _verify_files(self.directory, self.manifest)
        fn = self.manifest["function"]
        fn_file = self.directory / str(fn.get("file"))
        try:
            self._exported = jax.export.deserialize(bytearray(fn_file.read_bytes()))
        except OSError as exc:
            raise ExportFormatError(f"{fn_file}: cannot read ({exc.strerror})") from None
        except Exception as exc:  # a damaged module fails somewhere inside the deserializer
            raise ExportFormatError(f"{fn_file}: not a serialized jax.export module ({type(exc).__name__})") from None
        backend = jax.default_backend()
        platforms = [p.lower() for p in self._exported.platforms]
        if backend not in platforms and not (backend == "gpu" and {"cuda", "rocm"} & set(platforms)):
            raise ExportFormatError(f"{fn_file}: exported for platforms {platforms}, but jax runs on {backend!r}")
        self._params = self._load_params()
        self._call = jax.jit(self._exported.call)

    # ------------------------------------------------------------------ params
    def _load_params(self) -> dict[str, jax.Array]:
        spec = self.manifest["params"]
        path = self.directory / str(spec.get("file"))
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ExportFormatError(f"{path}: cannot read the parameters ({str(exc).splitlines()[0]})") from None
        expected = spec.get("arrays")
        if not isinstance(expected, dict):
            raise ExportFormatError(f"{self.directory / MANIFEST}: params.arrays is missing")
        if set(arrays) != set(expected):
            missing = sorted(set(expected) - set(arrays))
            extra = sorted(set(arrays) - set(expected))
            raise ExportFormatError(f"{path}: parameter keys differ from the manifest (missing {missing[:3]}, extra {extra[:3]})")
        for key, want in expected.items():
            got = arrays[key]
            if list(got.shape) != list(want.get("shape", [])) or str(got.dtype) != want.get("dtype"):
                raise ExportFormatError(
                    f"{path}: parameter {key!r} has shape {list(got.shape)} {got.dtype}, "
                    f"the manifest says {want.get('shape')} {want.get('dtype')}"
                )
        return {k: jnp.asarray(v) for k, v in arrays.items()}

    # ------------------------------------------------------------------ facts
    @property
    def params(self) -> dict[str, jax.Array]:
        """The verified arrays of ``params.npz`` by key (``params/<path>``, ``state/<path>``)."""
        return dict(self._params)

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """``[{"name", "dtype", "shape"}]``; ``shape[0]`` is the symbolic batch dimension ``"b"``."""
        return self.manifest["inputs"]

    @property
    def info(self) -> dict[str, Any]:
        return self.manifest.get("preprocessing", {}).get("info", {})

    @property
    def class_names(self) -> list[str] | None:
        return self.manifest.get("preprocessing", {}).get("class_names")

    @property
    def temperature(self) -> float | None:
        return self.manifest.get("preprocessing", {}).get("temperature")

    # ---------------------------------------------------------------- predict
    def _check_inputs(self, inputs: dict[str, Any]) -> tuple[dict[str, np.ndarray], int]:
        if not isinstance(inputs, dict):
            raise ExportInputError(f"inputs must be a dict of arrays, got {type(inputs).__name__}")
        missing = [s["name"] for s in self.inputs if s["name"] not in inputs]
        if missing:
            raise ExportInputError(f"missing input arrays {missing}; the export takes {[s['name'] for s in self.inputs]}")
        out, n = {}, None
        for spec in self.inputs:
            name, dtype = spec["name"], np.dtype(spec["dtype"])
            arr = np.asarray(inputs[name])
            if not _shape_ok(arr.shape, spec["shape"]):
                raise ExportInputError(f"input {name!r} has shape {list(arr.shape)}, expected {spec['shape']}")
            if n is None:
                n = arr.shape[0]
            elif arr.shape[0] != n:
                raise ExportInputError(f"input {name!r} has {arr.shape[0]} rows, other inputs have {n}")
            if arr.dtype != dtype:
                if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                    raise ExportInputError(f"input {name!r} has dtype {arr.dtype}, expected {dtype}")
                _check_representable(name, arr, dtype)
                arr = arr.astype(dtype)
            _check_finite(name, arr)
            out[name] = arr
        return out, int(n or 0)

    def predict(self, inputs: dict[str, Any], batch_size: int = 256, calibrated: bool = False) -> np.ndarray:
        """Outputs for every row of ``inputs`` (run in chunks of ``batch_size``, one compiled shape).

        ``calibrated=True`` applies the stored temperature to probability outputs
        (``softmax(log p / T)``); outputs are otherwise exactly those of the task's prediction function.
        """
        arrays, n = self._check_inputs(inputs)
        if n == 0:
            raise ExportInputError("inputs have no rows")
        bs = max(1, min(int(batch_size), n))
        chunks = []
        for start in range(0, n, bs):
            idx = np.arange(start, min(start + bs, n))
            real = len(idx)
            if real < bs:  # pad with copies of the last row so every call has the same shape
                idx = np.concatenate([idx, np.full(bs - real, idx[-1])])
            chunks.append((self._call(self._params, {k: v[idx] for k, v in arrays.items()}), real))
        result = np.concatenate([np.asarray(out)[:real] for out, real in chunks], axis=0)
        if calibrated:
            result = self.calibrate(result)
        return result

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """``softmax((log p + logit_offset) / T)``, or a mixture's sigmas times the stored sigma
        scale; identity when the export has neither.

        Written out here rather than imported so that the loader needs nothing of astroflax.
        """
        kind = self.manifest["output"].get("kind")
        scale = self.manifest.get("preprocessing", {}).get("sigma_scale")
        if kind == "gaussian_mixture" and scale:  # packed [weights | means | sigmas]: scale the sigmas
            out = np.array(probs, copy=True)
            k = out.shape[1] // 3
            out[:, 2 * k:] = out[:, 2 * k:] * float(scale)
            return out
        t = self.temperature
        if t is None or kind != "probabilities":
            return probs
        out = np.asarray(probs)
        k = len(self.class_names or []) or out.shape[1]  # later columns (e.g. a regression) pass through
        logits = np.log(np.clip(out[:, :k].astype(np.float64), np.finfo(np.float64).tiny, None))
        offset = self.manifest.get("preprocessing", {}).get("logit_offset")
        if offset is not None:
            logits = logits + np.asarray(offset, np.float64)
        logits = logits / float(t)
        logits -= logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        scaled = e / e.sum(axis=-1, keepdims=True)
        return np.concatenate([scaled, out[:, k:]], axis=1).astype(out.dtype)


def load_export(directory: str | Path, verify: bool = True) -> ExportedModel:
    """Open an export directory; checks the format, the version and every file's sha256."""
    return ExportedModel(directory, verify=verify)
