"""Commands that use a trained run: ``evaluate``, ``calibrate``, ``predict`` and ``sample``.

:func:`show_evaluation` (evaluate a checkpoint and print its tables) is also what ``train``,
``ensemble`` and ``finetune`` run at the end.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from astroflax.cli.common import (
    Checkpoint,
    RunDir,
    Weights,
    err,
    fmt,
    mc_dropout_option,
    out,
    out_option,
    require_parent_dir,
    run_dir_argument,
)
from astroflax.errors import AstroflaxError, ConfigError

# --------------------------------------------------------------------- shared printing


def _metric(value) -> str:
    return fmt(value, ".4f", missing="n/a")


def calibration_table(before: dict, after: dict, title: str) -> Table:
    table = Table(title=title, header_style="bold")
    for col in ("metric", "before", "after"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key in ("accuracy", "log_loss", "flat_weighted_log_loss", "ece"):
        if key in before:
            table.add_row(key, _metric(before.get(key)), _metric(after.get(key)))
    return table


def print_trust_summary(report: dict, console: Console) -> None:
    """Calibration before/after, uncertainty comparison and the report path of an evaluation."""
    cal = report.get("calibration")
    if cal:
        console.print(calibration_table(cal["before"], cal["after"],
                                        f"calibration on {report.get('split')}: {cal['note']}"))
    methods = (report.get("uncertainty") or {}).get("methods") or {}
    if len(methods) > 1:
        first = next(iter(methods.values()))
        cols = [k for k in ("accuracy", "log_loss", "ece") if k in first] or [k for k in first if k != "loss"][:7]
        cols.append("loss")
        table = Table(title=f"uncertainty methods on {report.get('split')}", header_style="bold")
        table.add_column("method")
        for c in cols:
            table.add_column(c, justify="right")
        for name, m in methods.items():
            table.add_row(name, *[_metric(m.get(c)) for c in cols])
        console.print(table)
    if report.get("report_path"):
        console.print(f"Wrote {report['report_path']}")


def write_run_report(run_dir: Path, best_run=None, dataset=None) -> Path:
    """Measure the deployment checklist of the best checkpoint (single runs; ``best_run`` and
    ``dataset`` when already loaded), save it as ``checklist.json``, and rewrite
    ``report/index.html`` (which shows it). A checklist that cannot be measured is reported on
    stderr and left out; it never fails the command that wrote the results."""
    from astroflax.diagnostics.checklist import discard_checklist, run_checklist, save_checklist
    from astroflax.ensembles import is_ensemble_dir
    from astroflax.report import write_report
    from astroflax.runs import load_run

    if not is_ensemble_dir(run_dir):  # the report asks for `astroflax check` per member instead
        try:
            run = best_run if best_run is not None else load_run(run_dir, "best")
            save_checklist(run_dir, run_checklist(run_dir, "best", run=run, dataset=dataset), run.step)
        except Exception as exc:  # noqa: BLE001 - as the report did: show the problem, keep the evaluation
            discard_checklist(run_dir)  # an older checklist would pass for this one in the report
            err.print(f"deployment checklist not measured: {type(exc).__name__}: {exc}", highlight=False, markup=False)
    return write_report(run_dir)


def show_evaluation(run_dir: Path, split: str, checkpoint: str, mc_dropout: int = 0, weights: str = "raw") -> dict:
    """Evaluate a checkpoint of a run or ensemble on a split, save the results (``eval/<split>.json``,
    calibration, checklist, HTML report) and print the tables; returns the report."""
    from astroflax.ensembles import EnsembleRun, open_run
    from astroflax.evaluate.runner import evaluate_run, save_evaluation
    from astroflax.evaluate.tables import evaluation_table

    run = open_run(run_dir, checkpoint, weights)
    ev = evaluate_run(run, split, checkpoint=checkpoint, mc_dropout=mc_dropout, weights=weights)
    save_evaluation(ev)
    report = ev.report
    # The checklist is of the best checkpoint's raw weights: reuse them if that is what is loaded.
    single_best = checkpoint == "best" and weights == "raw" and not isinstance(run, EnsembleRun)
    report["report_path"] = str(write_run_report(run.run_dir, *((run, ev.dataset) if single_best else ())))
    out.print(evaluation_table(report, f"{report['task']} — {split} split, checkpoint step {report['checkpoint_step']}"))
    out.print(f"Wrote {report['json_path']}")
    print_trust_summary(report, out)
    return report


# ------------------------------------------------------------------------ evaluate


def evaluate(
    run_dir: RunDir,
    split: Annotated[str, typer.Option("--split", help="train, val or test")] = "test",
    checkpoint: Checkpoint = "best",
    mc_dropout: mc_dropout_option("also judge MC-dropout with N stochastic passes") = 0,
    weights: Weights = "raw",
) -> None:
    """Evaluate a checkpoint of RUN_DIR (a run or an ensemble) on a split: JSON, figures and report/index.html."""
    show_evaluation(run_dir, split, checkpoint, mc_dropout, weights)


# ----------------------------------------------------------------------- calibrate

_METHOD_HELP = ("temperature (keeps predicted classes) or prior_temperature (first undo the loss's class "
                "weighting: calibrated to training-set class frequencies; changes predicted classes)")


def calibrate(
    run_dir: run_dir_argument("run or ensemble directory"),
    checkpoint: Checkpoint = "best",
    method: Annotated[str, typer.Option("--method", help=_METHOD_HELP)] = "temperature",
) -> None:
    """Fit temperature scaling on the validation split; saves RUN_DIR/calibration.json for that checkpoint."""
    from astroflax.ensembles import open_run
    from astroflax.evaluate.calibration import METHODS, calibrate_run, save_calibration

    if method not in METHODS:
        raise AstroflaxError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    run = open_run(run_dir, checkpoint)
    record = calibrate_run(run, method=method)
    if record is None:
        raise AstroflaxError(f"{run_dir}: task {run.task.name!r} does not output class probabilities; "
                             "temperature scaling applies to classifiers only")
    record["path"] = str(save_calibration(run.run_dir, record))
    out.print(calibration_table(record["val_before"], record["val_after"],
                                f"{record['method']}: T = {record['temperature']:.4g} on val, "
                                f"checkpoint {record['checkpoint_step']}"))
    out.print(f"Wrote {record['path']}")
    out.print(f"Wrote {write_run_report(run.run_dir)}")


# ------------------------------------------------------------------------- predict


def require_finite_rows(arrays: dict, ids, where: str, what: str, hint: str = "") -> None:
    """A DataError naming the first object (row and id) with a NaN/inf in any float array.

    The readers' range checks should make this unreachable; it is the last guard against
    writing NaN (or feeding it to the model) with exit code 0.
    """
    import numpy as np

    for name, values in arrays.items():
        a = np.asarray(values)
        if a.dtype.kind != "f" or a.size == 0:
            continue
        bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            who = f"row {r}"
            if ids is not None and len(ids) > r:
                who += f" (id {ids[r].item() if hasattr(ids[r], 'item') else ids[r]})"
            raise AstroflaxError(f"{where}: {name!r} in {what} is NaN/inf for {who} "
                                 f"[{int(bad.sum())} of {len(a)} rows]{hint}")


def predict(
    run_dir: RunDir,
    input: Annotated[Path, typer.Option(
        "--input", "-i", help="input data (the task's layout, e.g. a directory of tables)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV file to write")] = Path("predictions.csv"),
    checkpoint: Checkpoint = "best",
    weights: Weights = "raw",
    mc_dropout: mc_dropout_option("average N stochastic (dropout) passes instead") = 0,
) -> None:
    """Predict with a trained run (or ensemble) on new data; writes one row per object.

    Classifier probabilities are temperature-scaled when the run's calibration.json matches the checkpoint.
    """
    from astroflax.ensembles import open_run
    from astroflax.evaluate.uncertainty import predict_outputs
    from astroflax.runs import write_predictions

    if not input.exists():
        raise AstroflaxError(f"--input {input}: no such file or directory")
    require_parent_dir(output, "--output")
    if (run_dir / "manifest.json").is_file():  # an `astroflax export` directory (docs/export_format.md)
        from astroflax.export.writer import predict_export_csv

        err.print(predict_export_csv(run_dir, input, output, checkpoint, weights, mc_dropout), markup=False)
        return
    run = open_run(run_dir, checkpoint, weights)
    arrays, ids = run.task.load_inputs(run.cfg, run.info, input)
    require_finite_rows(arrays, ids, f"--input {input}", "the model inputs built from it",
                        "; check that object's values")
    outputs, note = predict_outputs(run, arrays, mc_dropout, weights)
    if note:
        err.print(note, highlight=False, markup=False)
    require_finite_rows({"output": outputs}, ids, f"--input {input}", "the predictions",
                        "; nothing was written: check that object's values, or the checkpoint with `astroflax check`")
    rows = run.task.format_predictions(outputs, ids, run.info)
    write_predictions(output, rows)
    err.print(f"Wrote {len(rows)} predictions to {output} (checkpoint step {run.step})")


# -------------------------------------------------------------------------- sample


def sample_grid_rows(model, num_classes: int, digit_class: int | None, n: int, seed: int) -> list:
    """Rows of generated digits: ``n`` of ``digit_class`` in a near-square grid, or, with no
    class, one row of ``n`` per class. Every sample uses its own slice of one seeded draw."""
    import numpy as np

    from astroflax.tasks.vae import sample_digits

    if digit_class is None:
        labels = np.repeat(np.arange(num_classes), n)
        images = sample_digits(model, labels, seed)
        return [images[c * n:(c + 1) * n] for c in range(num_classes)]
    images = sample_digits(model, np.full(n, digit_class), seed)
    cols = math.ceil(math.sqrt(n))
    return [images[i:i + cols] for i in range(0, n, cols)]


def sample(
    run_dir: run_dir_argument("run directory of a trained `vae` run"),
    digit_class: Annotated[Optional[int], typer.Option(
        "--class", help="class to generate; omit for one row per class")] = None,
    n: Annotated[int, typer.Option("--n", help="samples (with --class) or samples per class row (without)")] = 8,
    out: out_option("PNG file to write") = Path("samples.png"),
    seed: Annotated[int, typer.Option("--seed", help="seed of the latent draws")] = 0,
    checkpoint: Checkpoint = "best",
    scale: Annotated[int, typer.Option("--scale", help="pixels per image pixel (tile = 28*scale)")] = 2,
) -> None:
    """Write a PNG grid of generated samples (tile 28*scale px, 2 px gaps) from RUN_DIR."""
    if n < 1:
        raise ConfigError(f"--n {n}: expected at least 1 sample")
    if scale < 1:
        raise ConfigError(f"--scale {scale}: expected an integer >= 1")
    if digit_class is not None and digit_class < 0:
        raise ConfigError(f"--class {digit_class}: expected a class index >= 0")
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: expected a .png file name")
    require_parent_dir(out, "--out")

    from flax import nnx

    from astroflax.runs import load_run
    from astroflax.data.digits import write_digit_grid

    run = load_run(run_dir, checkpoint)
    model = nnx.merge(run.graphdef, run.state.params, run.state.model_state)
    if run.task.kind != "generative" or not hasattr(model, "generate") or "num_classes" not in run.info:
        raise ConfigError(f"{run_dir}: task {run.task.name!r} is not a class-conditional generator; train `vae`")
    k = int(run.info["num_classes"])
    if digit_class is not None and digit_class >= k:
        raise ConfigError(f"--class {digit_class}: out of range; this run has classes 0-{k - 1}")
    rows = sample_grid_rows(model, k, digit_class, n, seed)
    path = write_digit_grid(rows, out, scale=scale)
    what = f"{n} samples of class {digit_class}" if digit_class is not None else f"{n} samples per class x {k}"
    err.print(f"Wrote {what} to {path} (checkpoint step {run.step})", highlight=False)
