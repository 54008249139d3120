"""Deployment checklist of a trained run: can this model be shipped?

``run_checklist(run_dir)`` returns one dict per item — ``name``, ``status`` (``pass``,
``fail`` or ``n/a``), ``value`` (a number, a string or a small dict of numbers) and ``detail``
(one sentence saying what was measured and against what) — for ``astroflax check RUN_DIR``
and the HTML report. Every value is measured on this machine when the function runs, except
the training history, which is read from ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from astroflax.data.store import load_dataset
from astroflax.errors import AstroflaxError
from astroflax.runfiles import (  # noqa: F401
    CHECKLIST_FILE,
    discard_checklist,
    load_checklist,
    save_checklist,
)

PLATEAU_REL_CHANGE = 0.05
MAX_ECE = 0.03
EXPORT_RTOL, EXPORT_ATOL = 1e-5, 1e-6
STATUSES = ("pass", "fail", "n/a")


def _item(key: str, name: str, status: str, value: Any, detail: str) -> dict[str, Any]:
    assert status in STATUSES
    return {"id": key, "name": name, "status": status, "value": value, "detail": detail}


# ------------------------------------------------------------------- training history


def converged(records: list[dict]) -> dict[str, Any]:
    """Mean train loss of the last 10% of logs vs the 10% before: change < 5%.

    The change is relative to the previous level, or to a tenth of the whole drop since the
    first window if that is larger, so that a loss near zero (a Gaussian NLL crossing it) is
    not failed for being small.
    """
    losses = [r.get("loss") for r in records if r.get("split") == "train"]
    losses = [float(x) for x in losses if x is not None and math.isfinite(x)]
    if len(losses) < 2:
        return _item("converged", "converged", "n/a", None, f"{len(losses)} finite train-loss logs; need at least 2")
    k = max(1, round(0.1 * len(losses)))
    last, prev = float(np.mean(losses[-k:])), float(np.mean(losses[-2 * k: -k]))
    first = float(np.mean(losses[:k]))
    change = abs(last - prev) / max(abs(prev), 0.1 * abs(first - last), 1e-12)
    status = "pass" if change < PLATEAU_REL_CHANGE else "fail"
    return _item(
        "converged", "converged", status, round(change, 4),
        f"train loss {prev:.4g} -> {last:.4g} between the last two windows of {k} of {len(losses)} logs "
        f"(relative change {change:.1%}; plateau if < {PLATEAU_REL_CHANGE:.0%})",
    )


def no_nonfinite(records: list[dict]) -> dict[str, Any]:
    train = [r for r in records if r.get("split") == "train"]
    if not train:
        return _item("no_nonfinite", "no NaN/Inf during training", "n/a", None, "no train logs in metrics.jsonl")
    steps = sum(float(r.get("nonfinite") or 0.0) for r in train)
    missing = sum(1 for r in train if r.get("loss") is None)  # non-finite values are logged as null
    bad = int(steps) + missing
    return _item(
        "no_nonfinite", "no NaN/Inf during training", "pass" if bad == 0 else "fail", bad,
        f"{int(steps)} steps with a non-finite loss and {missing} non-finite logged losses in {len(train)} logs",
    )


# ------------------------------------------------------------------------ helpers


def _val_metrics(records: list[dict], step: int) -> dict[str, Any]:
    vals = [r for r in records if r.get("split") == "val" and r.get("step") == step]
    return vals[-1] if vals else {}


def _is_classifier(task: Any, val: dict) -> bool:
    """A classifier by its declaration, with the accuracy it logs (the chance comparison needs it)."""
    return task.is_classifier and "val_accuracy" in val


def better_than_chance(task: Any, info: dict, val: dict, data: dict | None, step: int) -> dict[str, Any]:
    name = "validation better than chance"
    if _is_classifier(task, val):
        k = int(info["num_classes"])
        counts = (info.get("class_counts") or {}).get("val")
        if counts is None and data is not None and "label" in data.get("val", {}):
            counts = np.bincount(data["val"]["label"], minlength=k).tolist()
        majority = max(counts) / max(sum(counts), 1) if counts else 0.0
        chance = max(1.0 / k, majority)
        acc = float(val["val_accuracy"])
        return _item(
            "better_than_chance", name, "pass" if acc > chance else "fail", round(acc, 4),
            f"val accuracy {acc:.4f} at step {step} vs chance {chance:.4f} (max of 1/{k} and the majority-class rate)",
        )
    if "baseline_val_loss" in info and "val_loss" in val:
        base, loss = float(info["baseline_val_loss"]), float(val["val_loss"])
        return _item(
            "better_than_chance", name, "pass" if loss < base else "fail", round(loss, 6),
            f"val loss {loss:.4g} vs the task's constant-prediction baseline {base:.4g}",
        )
    target = info.get("target")
    if "val_rmse" in val and data is not None and target in data.get("train", {}) and target in data.get("val", {}):
        y_train = np.asarray(data["train"][target], np.float64)
        y_val = np.asarray(data["val"][target], np.float64)
        base = float(np.sqrt(np.mean((y_val - y_train.mean()) ** 2)))
        rmse = float(val["val_rmse"])
        return _item(
            "better_than_chance", name, "pass" if rmse < base else "fail", round(rmse, 6),
            f"val RMSE {rmse:.4g} vs {base:.4g} for always predicting the train mean of {target!r}",
        )
    return _item("better_than_chance", name, "n/a", None, "no accuracy, task baseline or RMSE to compare against")


def calibrated(run_dir: Path, step: int, task: Any, val: dict, test_probs, test_labels) -> dict[str, Any]:
    name = f"calibrated (ECE <= {MAX_ECE})"
    from astroflax.evaluate.calibration import apply_calibration, calibration_for
    from astroflax.evaluate.classification import expected_calibration_error

    if not _is_classifier(task, val):
        return _item("calibrated", name, "n/a", None, "not a classifier")
    record, note = calibration_for(run_dir, step, "raw")
    if test_probs is not None and test_labels is not None:
        probs = apply_calibration(test_probs, record) if record else test_probs
        ece = expected_calibration_error(probs, test_labels)
        how = f"after {note}" if record else f"uncalibrated ({note})"
        detail = f"top-label ECE on the test split ({len(test_labels)} objects, 15 bins) {how}"
    else:
        path = run_dir / "eval" / "test.json"
        try:
            saved = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            saved = {}
        if not isinstance(saved, dict) or saved.get("checkpoint_step") != step or saved.get("weights", "raw") != "raw":
            saved = {}
        ece = saved.get("ece")  # the runner's report is of the calibrated outputs when a calibration exists
        if ece is None:
            return _item("calibrated", name, "n/a", None,
                         f"test data not loadable and no ECE of checkpoint {step} in eval/test.json")
        detail = (f"ECE from eval/test.json for checkpoint {step} "
                  f"({'calibrated' if saved.get('calibration') else 'uncalibrated'}; the test data could not be loaded)")
    return _item("calibrated", name, "pass" if ece <= MAX_ECE else "fail", round(float(ece), 4), detail)


def evaluated_on_test(run_dir: Path, step: int) -> dict[str, Any]:
    name = "evaluated on the held-out test split"
    path = run_dir / "eval" / "test.json"
    if not path.is_file():
        return _item("evaluated", name, "fail", None, f"no eval/test.json; run `astroflax evaluate {run_dir} --split test`")
    try:
        evaluated = json.loads(path.read_text()).get("checkpoint_step")
    except json.JSONDecodeError:
        return _item("evaluated", name, "fail", None, f"{path} is not valid JSON")
    ok = evaluated == step
    return _item(
        "evaluated", name, "pass" if ok else "fail", evaluated,
        f"eval/test.json is for checkpoint step {evaluated}; the checkpoint checked is step {step}",
    )


def hyperparameters_tuned(study: str | None) -> dict[str, Any]:
    """Whether the run's config came out of a study (``astroflax tune`` sets ``study`` to
    ``<study directory>#<trial>`` in every trial's config and in the best config it writes)."""
    name = "hyperparameters tuned"
    if not study:
        return _item("tuned", name, "fail", None, "the config did not come from a study; search it with "
                     "`astroflax tune TASK --space SPACE.yaml` and train the best_config.yaml it writes")
    directory, _, trial = study.partition("#")
    report = Path(directory) / "report" / "index.html"
    item = _item("tuned", name, "pass", {"study": directory, "trial": int(trial) if trial.isdigit() else trial},
                 f"config from trial {trial} of the study in {directory}"
                 + ("" if report.is_file() else " (its report is not on this machine)"))
    if report.is_file():
        item["link"] = str(report.resolve())
    return item


def _first_rows(arrays: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """``n`` rows, repeating the data if it has fewer (latency needs a full batch)."""
    size = len(next(iter(arrays.values())))
    idx = np.arange(n) % size
    return {k: np.asarray(v[idx]) for k, v in arrays.items()}


def reloads_identically(run, checkpoint, arrays: dict[str, np.ndarray] | None, run_dir: Path) -> dict[str, Any]:
    from astroflax.export.loader import MANIFEST, ExportFormatError, load_export
    from astroflax.runs import load_run

    name = "checkpoint reloads to identical predictions"
    if arrays is None:
        return _item("reload", name, "n/a", None, "no data to predict on")
    sample = _first_rows(arrays, 8)
    first = run.predict(sample)
    second = load_run(run_dir, checkpoint).predict(sample)
    same = bool(np.array_equal(first, second))
    detail = f"two restores of step {run.step} predict {'bitwise identical' if same else 'DIFFERENT'} outputs on 8 objects"
    status = "pass" if same else "fail"
    value: Any = same
    export_dir = run_dir / "export"
    if (export_dir / MANIFEST).is_file():
        try:
            exported = load_export(export_dir)
        except ExportFormatError as exc:
            return _item("reload", name, "fail", False, f"{detail}; the export in {export_dir} is unusable: {exc}")
        step = exported.manifest.get("source", {}).get("checkpoint_step")
        if step == run.step:
            names = [s["name"] for s in exported.inputs]
            out = exported.predict({k: sample[k] for k in names})
            diff = float(np.max(np.abs(out.astype(np.float64) - first.astype(np.float64))))
            close = bool(np.allclose(out, first, rtol=EXPORT_RTOL, atol=EXPORT_ATOL))
            detail += f"; the export in {export_dir} agrees to {diff:.2e} (max abs difference)"
            status = "pass" if same and close else "fail"
            value = {"bitwise_identical": same, "export_max_abs_diff": diff}
        else:
            detail += f"; the export in {export_dir} is of step {step}, not compared"
    return _item("reload", name, status, value, detail)


def _current_rss() -> int | None:
    """Resident set size now (Linux /proc), in bytes; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def latency_and_memory(run, arrays: dict[str, np.ndarray] | None, repeats_1: int = 30, repeats_256: int = 5):
    """Median wall time per object at batch 1 and 256 after warm-up; memory at batch 256."""
    from astroflax.train.step import make_predict_step

    if arrays is None:
        return [
            _item("latency", "inference latency", "n/a", None, "no data to predict on"),
            _item("memory", "peak memory", "n/a", None, "no data to predict on"),
        ]
    device = jax.devices()[0]
    params = jax.device_put(jax.device_get(run.state.params), device)
    state = jax.device_put(jax.device_get(run.state.model_state), device)
    fn = jax.jit(make_predict_step(run.graphdef, run.predict_fn))
    rss_before = _current_rss()
    timings, compiled = {}, None
    for bs, repeats in ((1, repeats_1), (256, repeats_256)):
        batch = jax.device_put(_first_rows(arrays, bs), device)
        compiled = fn.lower(params, state, batch).compile()  # compile outside the timings
        for _ in range(2):  # warm-up runs
            jax.block_until_ready(compiled(params, state, batch))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(params, state, batch))
            times.append(time.perf_counter() - t0)
        timings[bs] = float(np.median(times)) * 1000.0 / bs
    rss_after = _current_rss()  # the batch-256 executable and its last output are still alive here
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    lat = {"batch_1_ms_per_object": round(timings[1], 4), "batch_256_ms_per_object": round(timings[256], 4)}
    ok = all(v > 0 and math.isfinite(v) for v in lat.values())
    latency = _item(
        "latency", "inference latency", "pass" if ok else "fail", lat,
        f"median of {repeats_1} calls at batch 1 and {repeats_256} at batch 256 after 2 warm-up calls, jitted "
        f"prediction on {device.platform.upper()} ({device.device_kind}), {jax.local_device_count()} device(s) visible",
    )
    mib = 1024.0 * 1024.0
    param_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(jax.device_get(run.state.params)))
    mem: dict[str, Any] = {"params_mb": round(param_bytes / mib, 3), "host_peak_rss_mb": round(peak / mib, 1)}
    how = ["host: ru_maxrss (peak RSS of this whole process since it started)"]
    if rss_before is not None and rss_after is not None:
        mem["host_rss_increase_mb"] = round((rss_after - rss_before) / mib, 1)
        how.append("RSS increase (VmRSS) over the latency runs: executables + buffers for batch 1 and 256")
    analysis = compiled.memory_analysis()  # the batch-256 executable
    if analysis is not None:
        buffers = analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
        mem["xla_buffers_batch_256_mb"] = round(buffers / mib, 3)
        how.append("device: XLA memory_analysis of the batch-256 executable (arguments + outputs + temporaries)")
    stats = device.memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        mem["device_peak_mb"] = round(stats["peak_bytes_in_use"] / mib, 1)
        how.append("device memory_stats peak_bytes_in_use")
    else:
        how.append(f"{device.platform} memory_stats() unavailable")
    ok = mem["host_peak_rss_mb"] > 0 and mem.get("xla_buffers_batch_256_mb", 1) > 0
    memory = _item("memory", "peak memory", "pass" if ok else "fail", mem, "; ".join(how))
    return [latency, memory]


# -------------------------------------------------------------------------- all items


def run_checklist(run_dir: str | Path, checkpoint: str | int = "best", run: Any = None,
                  dataset: Any = None) -> list[dict[str, Any]]:
    """Every deployment-checklist item for checkpoint ``checkpoint`` of ``run_dir``.

    ``run`` (that checkpoint, already loaded by ``load_run``) and ``dataset`` (the task's data)
    save loading them again when the caller has them, as ``evaluate`` does for its report.
    Raises :class:`~astroflax.errors.CheckpointError` when ``run_dir`` is not a run with a
    checkpoint; anything else that cannot be measured becomes an ``n/a`` item saying why.
    """
    from astroflax.runs import load_run
    from astroflax.train.metrics_log import read_metrics

    run_dir = Path(run_dir)
    run = run if run is not None else load_run(run_dir, checkpoint)
    records = read_metrics(run_dir)
    items = [converged(records), no_nonfinite(records)]
    val = _val_metrics(records, run.step)
    data, data_error = None, ""
    try:
        dataset = dataset if dataset is not None else load_dataset(run.cfg)
        data = dataset.splits
    except (AstroflaxError, OSError) as exc:
        data_error = str(exc)
    items.append(better_than_chance(run.task, run.info, val, data, run.step))

    test = data.get("test") if data else None
    arrays = run.task.device_arrays(test) if test is not None else None
    test_probs = test_labels = None
    if arrays is not None and _is_classifier(run.task, val) and "label" in test:
        test_probs = run.task.class_probs(run.predict(arrays), run.info)
        test_labels = test["label"] if test_probs is not None else None
    items.append(calibrated(run_dir, run.step, run.task, val, test_probs, test_labels))
    items.append(evaluated_on_test(run_dir, run.step))
    items.append(reloads_identically(run, checkpoint, arrays, run_dir))
    items.extend(latency_and_memory(run, arrays))
    items.append(hyperparameters_tuned(run.cfg.study))
    if data_error:
        for item in items:
            if item["status"] == "n/a" and "no data" in item["detail"]:
                item["detail"] += f" ({data_error})"
    return items

