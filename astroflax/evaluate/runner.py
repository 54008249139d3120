"""Evaluate a run's checkpoint on a split and write the results next to the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from astroflax.runs import write_json


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    checkpoint: str | int = "best",
    mc_dropout: int = 0,
    calibrate: bool = True,
    write_html: bool = True,
    weights: str = "raw",
) -> dict[str, Any]:
    """Full evaluation (metrics + figures) of ``checkpoint`` on ``split``; writes ``eval/<split>.json``.

    ``run_dir`` may be an ensemble directory (members' probabilities are combined). Classifier
    probabilities are calibrated with the run's ``calibration.json`` when it was fitted for this
    checkpoint; otherwise temperature scaling is fitted on the validation split first (and saved
    when the run has none yet or the best checkpoint is evaluated). Then ``report/index.html`` is
    rewritten.
    """
    from astroflax.evaluate import calibration as cal
    from astroflax.evaluate import classification as clf
    from astroflax.evaluate import plots
    from astroflax.evaluate import uncertainty as unc

    run = unc.open_run(run_dir, checkpoint, weights)
    task, info = run.task, run.info
    dataset = task.load_data(run.cfg)
    arrays = dataset.split(split)
    methods: dict[str, dict] = {}
    if isinstance(run, unc.EnsembleRun):
        member_outputs = run.member_outputs(arrays)
        raw = run.combine(member_outputs)
        for name, outs in zip(run.names, member_outputs):
            methods[name] = unc.judge(task, info, outs, arrays)
        base_name = f"ensemble of {len(member_outputs)}"
    else:
        raw = run.predict(arrays)
        base_name = "deterministic"
    methods[base_name] = unc.judge(task, info, raw, arrays)

    outputs = raw
    out_dir = run.run_dir / "eval" / split
    calibration = None
    if calibrate and "label" in arrays and cal.is_probability_output(raw, info):
        record, note = cal.calibration_for(run.run_dir, run.step, weights)
        if record is None:
            previous = cal.load_calibration(run.run_dir)
            save = (checkpoint == "best" and weights == "raw") or previous is None
            method = (previous or {}).get("method", "temperature")  # refit the way the user chose
            record = cal.calibrate_run(run, dataset, raw if split == "val" else None, save, weights, method)
            if record is not None:
                note = cal.describe(record, run.step) + (
                    "; saved" if save else "; for this evaluation only (calibration.json is for another checkpoint)")
        # None: the validation outputs are not probabilities a temperature could be fitted to.
        if record is not None:
            outputs = cal.apply_calibration(raw, record)
            method = record.get("method", "temperature")
            label = "temperature scaling" if method == "temperature" else "prior correction + temperature"
            methods[f"{base_name} + {label}"] = unc.judge(task, info, outputs, arrays)
            raw_probs, probs = cal.class_probs(raw, info), cal.class_probs(outputs, info)
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
        methods[f"MC-dropout ({mc_dropout} passes)"] = unc.judge(task, info, mc, arrays)

    report = task.report(outputs, arrays, info, out_dir)
    if calibration is not None:
        figures: dict[str, str] = {}
        for name, path in (report.get("figures") or {}).items():  # the uncalibrated diagram after the calibrated one
            figures[name] = path
            if name == "reliability":
                figures["reliability_before_calibration"] = calibration["figure_before"]
        figures.setdefault("reliability_before_calibration", calibration["figure_before"])
        report["figures"] = figures
        report["calibration"] = calibration
    report["uncertainty"] = {"methods": methods}
    report = {"task": task.name, "split": split, "checkpoint_step": run.step, "weights": weights, **report}
    report["json_path"] = str(write_json(run.run_dir / "eval" / f"{split}.json", report))
    if write_html:
        from astroflax.report import write_report

        # The report's checklist is of the best checkpoint's raw weights: reuse them if that is what we hold.
        single_best = checkpoint == "best" and weights == "raw" and not isinstance(run, unc.EnsembleRun)
        report["report_path"] = str(write_report(run.run_dir, (run, dataset) if single_best else None))
    return report
