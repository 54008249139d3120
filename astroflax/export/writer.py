"""Write a trained run as a serving artefact: StableHLO module + parameters + manifest.

The exported function is ``f(params, inputs) -> outputs``: ``params`` a flat dict of arrays
(``params.npz``), ``inputs`` the model's preprocessed batch dict with a symbolic batch
dimension ``b``, ``outputs`` exactly what the task's prediction function returns. See
``docs/export_format.md``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from astroflax.data.store import load_dataset
from astroflax.errors import AstroflaxError
from astroflax.export.loader import FORMAT, FORMAT_VERSION, MANIFEST, sha256_file

FUNCTION_FILE = "model.stablehlo"
PARAMS_FILE = "params.npz"


def leaf_key(path: tuple) -> str:
    """``encoder/layers/0/fc1/kernel`` for an NNX state path (the trailing ``value`` dropped)."""
    key = jax.tree_util.keystr(path, simple=True, separator="/")
    return key[: -len("/value")] if key.endswith("/value") else key


def flat_arrays(tree: Any, prefix: str) -> tuple[dict[str, np.ndarray], list[str], Any]:
    """Host arrays keyed by path, the key order and the treedef to rebuild ``tree``."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    keys = [f"{prefix}/{leaf_key(p)}" for p, _ in leaves]
    if len(set(keys)) != len(keys):
        raise AstroflaxError(f"cannot export: parameter paths are not unique under {prefix!r}")
    arrays = {}
    for key, (_, leaf) in zip(keys, leaves):
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key):
            raise AstroflaxError(f"cannot export: model state {key!r} is a PRNG key; models must keep no RNG state")
        arrays[key] = np.asarray(jax.device_get(leaf))
    return arrays, keys, treedef


def used_inputs(fn, params, model_state, batch: dict[str, np.ndarray]) -> list[str]:
    """Names of the batch arrays the prediction actually reads (labels and weights drop out)."""
    # Device arrays, not the host copies: a model that indexes a parameter with an input (the vae's
    # per-class prior, ``prior_mean[labels]``) cannot index a NumPy array with a tracer.
    params, model_state = jax.tree.map(jnp.asarray, (params, model_state))
    closed = jax.make_jaxpr(lambda b: fn(params, model_state, b))(batch)
    jaxpr = closed.jaxpr
    used: set[int] = set()
    for eqn in jaxpr.eqns:
        used.update(id(v) for v in eqn.invars)
    used.update(id(v) for v in jaxpr.outvars)
    names = sorted(batch)  # dict pytrees flatten in sorted key order
    return [name for name, var in zip(names, jaxpr.invars) if id(var) in used]


def _calibration(run_dir: Path, step: int) -> dict[str, Any]:
    """Temperature (and class-prior logit offset), or a mixture regressor's sigma scale, of
    ``calibration.json`` if fitted for this checkpoint."""
    from astroflax.evaluate.calibration import calibration_for

    record, _ = calibration_for(run_dir, step, "raw")
    if record is None:
        return {"temperature": None, "logit_offset": None, "sigma_scale": None}
    if "sigma_scale" in record:
        return {"temperature": None, "logit_offset": None, "sigma_scale": float(record["sigma_scale"])}
    return {"temperature": float(record["temperature"]), "logit_offset": record.get("logit_offset"), "sigma_scale": None}


def export_run(run_dir: str | Path, out_dir: str | Path, checkpoint: str | int = "best") -> dict:
    """Export checkpoint ``checkpoint`` of ``run_dir`` into ``out_dir``; returns the manifest.

    The example arrays that fix the input names, dtypes and trailing shapes come from the
    run's test split (the task's own preprocessing), so the run's data must be loadable.
    """
    from astroflax import __version__
    from astroflax.runs import load_run
    from astroflax.train.checkpoint import json_safe
    from astroflax.train.step import make_predict_step

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file()):
        raise AstroflaxError(f"--out {out_dir}: exists and is not an export directory; choose another (an export is replaced)")
    run = load_run(run_dir, checkpoint)
    dataset = load_dataset(run.cfg)
    split = "test" if "test" in dataset.splits else "val"
    example_all = run.task.device_arrays(dataset.split(split))
    example = {k: np.asarray(v[:2]) for k, v in example_all.items() if not k.startswith("_")}

    params, pkeys, ptree = flat_arrays(run.state.params, "params")
    mstate, skeys, stree = flat_arrays(run.state.model_state, "state")
    predict = make_predict_step(run.graphdef, run.predict_fn)
    p_host = jax.tree_util.tree_unflatten(ptree, [params[k] for k in pkeys])
    s_host = jax.tree_util.tree_unflatten(stree, [mstate[k] for k in skeys])
    names = used_inputs(predict, p_host, s_host, example)
    if not names:
        raise AstroflaxError(f"cannot export {run_dir}: the prediction reads no input array")

    unused = {k: v for k, v in example.items() if k not in names}

    def serve(flat: dict[str, jax.Array], inputs: dict[str, jax.Array]) -> jax.Array:
        p = jax.tree_util.tree_unflatten(ptree, [flat[k] for k in pkeys])
        s = jax.tree_util.tree_unflatten(stree, [flat[k] for k in skeys])
        # Arrays the prediction looks up but never reads (e.g. labels, or mag_err when a config
        # ignores errors) are not inputs of the export; zeros of the right shape stand in for them.
        n = next(iter(inputs.values())).shape[0]
        filler = {k: jnp.zeros((n, *v.shape[1:]), v.dtype) for k, v in unused.items()}
        return predict(p, s, {**filler, **inputs})

    (b,) = jax.export.symbolic_shape("b")
    flat = {**params, **mstate}
    param_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()}
    input_specs = {n: jax.ShapeDtypeStruct((b, *example[n].shape[1:]), example[n].dtype) for n in names}
    exported = jax.export.export(jax.jit(serve))(param_specs, input_specs)
    out_shape = exported.out_avals[0].shape if exported.out_avals else ()

    # Write into a temporary sibling directory, then swap it in: never a half-written export.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; an export is meant to be shared
    try:
        (tmp / FUNCTION_FILE).write_bytes(exported.serialize())
        np.savez(tmp / PARAMS_FILE, **flat)
        info = json_safe(run.info)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "producer": {"astroflax": __version__, "jax": jax.__version__},
            "task": run.task.name,
            "source": {"run_dir": str(run_dir.resolve()), "checkpoint_step": int(run.step)},
            "files": {
                name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
                for name in (FUNCTION_FILE, PARAMS_FILE)
            },
            "function": {
                "file": FUNCTION_FILE,
                "serialization": "jax.export",
                "calling_convention_version": int(exported.calling_convention_version),
                "platforms": list(exported.platforms),
                "signature": "f(params: dict[str, array], inputs: dict[str, array]) -> outputs",
                "batch_dim": "b",
            },
            "params": {
                "file": PARAMS_FILE,
                "count": int(sum(v.size for v in flat.values())),
                "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in flat.items()},
            },
            "inputs": [
                {"name": n, "dtype": str(example[n].dtype), "shape": ["b", *map(int, example[n].shape[1:])]}
                for n in names
            ],
            "output": {
                "dtype": str(exported.out_avals[0].dtype),
                "shape": ["b", *(int(d) for d in out_shape[1:])],
                # What the loader calibrates: the first len(class_names) columns of a classifier.
                # A Gaussian-mixture regressor's packed [weights | means | sigmas]: the sigmas are scaled.
                "kind": "probabilities" if run.task.is_classifier else (
                    "gaussian_mixture" if run.task.distribution == "gaussian_mixture" else "array"),
            },
            "declaration": {  # what the task says its outputs are (astroflax.tasks.base.Task)
                "kind": run.task.kind,
                "distribution": run.task.distribution,
                "columns": run.task.output_columns(run.cfg, run.info),
            },
            "preprocessing": {
                "class_names": info.get("class_names"),
                "normalisation": {k: info[k] for k in run.task.normalisation_keys if k in info},
                **_calibration(run_dir, int(run.step)),
                "info": info,
                "note": "inputs are the task's preprocessed arrays; `astroflax predict EXPORT_DIR --input F` builds "
                "them from files with the task's load_inputs",
            },
            "config": run.cfg.model_dump(mode="json"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if out_dir.exists():
            backup = out_dir.with_name(out_dir.name + ".old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(out_dir, backup)
            os.replace(tmp, out_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def predict_rows(export_dir: str | Path, input_path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for the predictions file from an export directory, and its manifest.

    The task's ``load_inputs`` turns the user's files into preprocessed arrays using the
    constants stored in the manifest; the model itself runs through the standalone loader.
    Probabilities are temperature-scaled when the export carries a temperature (mixture sigmas
    scaled when it carries a sigma scale; either only if ``calibration.json`` was fitted for the
    exported checkpoint), as ``predict RUN_DIR`` does.
    """
    from astroflax.config import finalize_config
    from astroflax.export.loader import ExportFormatError, ExportInputError, load_export
    from astroflax.tasks import get_task

    try:
        model = load_export(export_dir)
    except ExportFormatError as exc:
        raise AstroflaxError(str(exc)) from None
    cfg = finalize_config(model.manifest.get("config", {}))
    task = get_task(cfg.task)
    arrays, ids = task.load_inputs(cfg, model.info, Path(input_path))
    try:
        outputs = model.predict(arrays, batch_size=cfg.train.eval_batch_size, calibrated=True)
    except ExportInputError as exc:
        raise AstroflaxError(f"--input {input_path}: {exc}") from None
    return task.format_predictions(outputs, ids, model.info), model.manifest


def predict_export_csv(
    export_dir: Path, input_path: Path, output: Path, checkpoint: str = "best", weights: str = "raw", mc_dropout: int = 0
) -> str:
    """``astroflax predict EXPORT_DIR``: write the predictions CSV; returns the message to print."""
    from astroflax.runs import write_predictions

    if checkpoint != "best" or weights != "raw" or mc_dropout:
        raise AstroflaxError(
            f"{export_dir} is an export (one fixed checkpoint, raw weights, no dropout): "
            "--checkpoint, --weights and --mc-dropout apply to run directories only"
        )
    rows, manifest = predict_rows(export_dir, input_path)
    write_predictions(output, rows)
    t = manifest.get("preprocessing", {}).get("temperature")
    note = f", temperature scaling T = {t:.4g}" if t and manifest["output"].get("kind") == "probabilities" else ""
    s = manifest.get("preprocessing", {}).get("sigma_scale")
    if s and manifest["output"].get("kind") == "gaussian_mixture":
        note = f", sigma scaling s = {s:.4g}"
    return (
        f"Wrote {len(rows)} predictions to {output} (export of {manifest['task']} checkpoint step "
        f"{manifest['source']['checkpoint_step']}{note})"
    )
