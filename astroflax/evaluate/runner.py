"""Evaluate a loaded run (or ensemble) on a split: compute first, write as a separate step.

:func:`evaluate_run` returns an :class:`Evaluation` (the report dict, with its figures drawn
under ``eval/<split>/``, and the calibration fitted on the way, if any); :func:`save_evaluation`
writes ``eval/<split>.json`` and, when due, ``calibration.json``. The CLI composes these with
the checklist and the HTML report.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from astroflax.data.store import load_dataset
from astroflax.runfiles import write_json
from astroflax.tasks.base import Dataset


@dataclasses.dataclass
class Evaluation:
    run: Any  # LoadedRun or EnsembleRun
    dataset: Dataset
    split: str
    report: dict[str, Any]
    calibration_to_save: dict[str, Any] | None  # a record fitted here that belongs in calibration.json


def evaluate_run(
    run: Any,
    split: str = "test",
    *,
    dataset: Dataset | None = None,
    checkpoint: str | int = "best",
    mc_dropout: int = 0,
    calibrate: bool = True,
    weights: str = "raw",
) -> Evaluation:
    """Full evaluation (metrics + figures) of a loaded ``run`` on ``split``.

    An ensemble's members are combined as the task's kind says. A classifier's probabilities
    are calibrated with the run's ``calibration.json`` when it was fitted for this checkpoint;
    otherwise temperature scaling is fitted on the validation split first (to be saved when the
    run has none yet or the best checkpoint's raw weights are evaluated). A Gaussian-mixture
    regressor's sigmas are scaled the same way (``sigma_scale``).
    """
    from astroflax.ensembles import EnsembleRun
    from astroflax.evaluate import calibration as cal
    from astroflax.evaluate import classification as clf
    from astroflax.evaluate import plots
    from astroflax.evaluate import uncertainty as unc

    task, info = run.task, run.info
    dataset = dataset if dataset is not None else load_dataset(run.cfg)
    arrays = dataset.split(split)
    methods: dict[str, dict] = {}
    ensemble = isinstance(run, EnsembleRun)
    if ensemble:
        member_outputs = run.member_outputs(arrays)
        raw = run.combine(member_outputs)
        for name, outs in zip(run.names, member_outputs):
            methods[name] = unc.judge(run, outs, arrays)
        base_name = f"ensemble of {len(member_outputs)}"
    else:
        raw = run.predict(arrays)
        base_name = "deterministic"
    methods[base_name] = unc.judge(run, raw, arrays)

    outputs, to_save, calibration = raw, None, None
    out_dir = run.run_dir / "eval" / split
    if calibrate and cal.applies_to(task) and cal.target_name(task, info) in arrays:
        record, note = cal.calibration_for(run.run_dir, run.step, weights)
        if record is None:
            previous = cal.load_calibration(run.run_dir)
            save = (checkpoint == "best" and weights == "raw") or previous is None
            method = (previous or {}).get("method", "temperature")  # refit the way the user chose
            record = cal.calibrate_run(run, dataset, raw if split == "val" else None, weights, method)
            to_save = record if save else None
            if record is not None:
                note = cal.describe(record, run.step) + (
                    "; saved" if save else "; for this evaluation only (calibration.json is for another checkpoint)")
        if record is not None and not task.is_classifier:  # sigma scaling of a mixture regressor
            outputs = cal.apply_calibration(raw, record)
            methods[f"{base_name} + sigma scaling"] = unc.judge(run, outputs, arrays)
            y = arrays[cal.target_name(task, info)]
            calibration = {"method": record["method"], "sigma_scale": record["sigma_scale"], "note": note,
                           "before": cal.interval_metrics(raw, y), "after": cal.interval_metrics(outputs, y)}
        elif record is not None:  # None: the validation split has no labels
            outputs = cal.apply_calibration(raw, record)
            method = record.get("method", "temperature")
            label = {"temperature": "temperature scaling", "prior_temperature": "prior correction + temperature",
                     "balanced_offsets": "class offsets + temperature"}.get(method, method)
            methods[f"{base_name} + {label}"] = unc.judge(run, outputs, arrays)
            raw_probs, probs = task.class_probs(raw, info), task.class_probs(outputs, info)
            before_fig = plots.plot_reliability_diagram(
                clf.reliability_curve(raw_probs, arrays["label"]), out_dir / "reliability_uncalibrated.png")
            calibration = {
                "method": method,
                "temperature": record["temperature"],
                "note": note,
                "before": cal.calibration_metrics(raw_probs, arrays["label"]),
                "after": cal.calibration_metrics(probs, arrays["label"]),
                "figure_before": str(before_fig),
            }

    if mc_dropout:
        mc = unc.mc_dropout_predict(run, arrays, mc_dropout)
        methods[f"MC-dropout ({mc_dropout} passes)"] = unc.judge(run, mc, arrays)

    report = task.report(outputs, arrays, info, out_dir, run)
    if calibration is not None and "figure_before" not in calibration:
        report["calibration"] = calibration
    elif calibration is not None:
        figures: dict[str, str] = {}
        for name, path in (report.get("figures") or {}).items():  # the uncalibrated diagram after the calibrated one
            figures[name] = path
            if name == "reliability":
                figures["reliability_before_calibration"] = calibration["figure_before"]
        figures.setdefault("reliability_before_calibration", calibration["figure_before"])
        report["figures"] = figures
        report["calibration"] = calibration
    report["uncertainty"] = {"methods": methods}
    report = {"task": task.name, "split": split, "checkpoint_step": run.step, "weights": weights, **report,
              # the declaration travels with the results, so the HTML report reads files only
              "task_kind": task.kind, "declared_targets": {k: list(v) for k, v in task.targets.items()}}
    return Evaluation(run, dataset, split, report, to_save)


def save_evaluation(ev: Evaluation) -> Path:
    """Write ``eval/<split>.json`` (and ``calibration.json`` when this evaluation fitted one to keep)."""
    from astroflax.evaluate.calibration import save_calibration

    if ev.calibration_to_save is not None:
        ev.calibration_to_save["path"] = str(save_calibration(ev.run.run_dir, ev.calibration_to_save))
    path = ev.run.run_dir / "eval" / f"{ev.split}.json"
    ev.report["json_path"] = str(path)
    return write_json(path, ev.report)
