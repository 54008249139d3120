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
    for key in ("accuracy", "log_loss", "flat_weighted_log_loss", "ece", "coverage_68", "coverage_95", "pit_cvm", "pit_ks", "nll", "crps"):
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

_METHOD_HELP = ("classifiers: temperature (keeps predicted classes), prior_temperature (first undo the loss's "
                "class weighting: calibrated to training-set class frequencies; changes predicted classes) or "
                "balanced_offsets (temperature and a logit offset per class fitted to the class-balanced log-loss, "
                "for flat-weighted metrics such as PLAsTiCC's; changes predicted classes); "
                "Gaussian-mixture regressors (photoz): sigma_scale, chosen for them whatever is given")


def calibrate(
    run_dir: run_dir_argument("run or ensemble directory"),
    checkpoint: Checkpoint = "best",
    method: Annotated[str, typer.Option("--method", help=_METHOD_HELP)] = "temperature",
) -> None:
    """Fit temperature scaling (classifiers) or sigma scaling (mixture regressors) on the validation
    split; saves RUN_DIR/calibration.json for that checkpoint."""
    from astroflax.ensembles import open_run
    from astroflax.evaluate.calibration import METHODS, REGRESSION_METHODS, calibrate_run, save_calibration

    if method not in METHODS + REGRESSION_METHODS:
        raise AstroflaxError(f"--method {method!r}: choose from {', '.join(METHODS + REGRESSION_METHODS)}")
    run = open_run(run_dir, checkpoint)
    if run.task.is_classifier and method not in METHODS:
        raise AstroflaxError(f"--method {method!r}: task {run.task.name!r} is a classifier; choose from {', '.join(METHODS)}")
    record = calibrate_run(run, method=method)
    if record is None:
        raise AstroflaxError(f"{run_dir}: task {run.task.name!r} outputs neither class probabilities nor a Gaussian "
                             "mixture (or its validation split has no labels); nothing to calibrate")
    record["path"] = str(save_calibration(run.run_dir, record))
    fitted = (f"s = {record['sigma_scale']:.4g}" if "sigma_scale" in record else f"T = {record['temperature']:.4g}")
    out.print(calibration_table(record["val_before"], record["val_after"],
                                f"{record['method']}: {fitted} on val, checkpoint {record['checkpoint_step']}"))
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


def _task_name(path: Path) -> str | None:
    """The task of a run, ensemble or export directory, without loading any model (None if unknown)."""
    import json

    from astroflax.config import load_yaml_file

    try:
        if (path / "manifest.json").is_file():
            return json.loads((path / "manifest.json").read_text()).get("task")
        from astroflax.ensembles import is_ensemble_dir, read_ensemble

        if is_ensemble_dir(path):
            path = path / read_ensemble(path)["members"][0]
        return load_yaml_file(path / "config.yaml").get("task")
    except (OSError, ValueError, AttributeError, AstroflaxError):
        return None  # the loaders below give the proper message


def _streams(run_dir: Path, input: Path, mc_dropout: int) -> tuple[bool, str]:
    """Whether ``predict`` streams this input (and why not, for the message if a streaming option was given)."""
    from astroflax.data.tables import table_suffix
    from astroflax.predict.sources import is_hats_catalogue
    from astroflax.predict.tables import chunk_reader

    task = _task_name(run_dir)
    if task is None or chunk_reader(task) is None:
        return False, f"task {task!r} reads its input whole (no chunked reader)"
    if mc_dropout:
        return False, "--mc-dropout draws its passes over the whole input"
    if not (is_hats_catalogue(input) or (input.is_file() and table_suffix(input))):
        return False, f"--input {input} is not a table file or a HATS catalogue"
    return True, ""


def _progress_bar():
    """A rich progress bar on stderr with rows/s and the ETA (None when stderr is not a terminal)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if not err.is_terminal:
        return None
    return Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=err, transient=False)


#: files per batch when ``predict`` reads a folder of spectra or images (1024 images of 64x64x3
#: float32 are 50 MB of model input; --chunk-rows sets it)
FOLDER_BATCH = 1024


def predict(
    run_dir: RunDir,
    input: Annotated[Path, typer.Option(
        "--input", "-i", help="input data: the task's layout (e.g. a directory of tables); for table tasks "
        "(photoz) a table file of any size (streamed) or a HATS catalogue directory")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="file to write: .csv, .parquet, or a name without suffix for a directory of "
        "Parquet parts (a HATS catalogue for a HATS input)")] = Path("predictions.csv"),
    checkpoint: Checkpoint = "best",
    weights: Weights = "raw",
    mc_dropout: mc_dropout_option("average N stochastic (dropout) passes instead") = 0,
    keep: Annotated[list[str] | None, typer.Option(
        "--keep", help="input column to copy into the output (repeat for several); table inputs")] = None,
    chunk_rows: Annotated[Optional[int], typer.Option(
        "--chunk-rows", help="rows per chunk (memory and the unit of --resume) of a table input (default "
        "131072); files per batch of a folder of spectra or images (default 1024)")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="continue an interrupted prediction from its OUTPUT.partial directory")] = False,
    dask: Annotated[str | None, typer.Option(
        "--dask", help="run the chunks on a Dask cluster: a scheduler address (tcp://host:8786) or local:N "
        "for N local worker processes; needs the 'scale' extra of astroflax (Dask, LSDB)")] = None,
    bad_rows: Annotated[str, typer.Option(
        "--bad-rows", help="streamed table inputs: 'flag' writes a bad row with flag = 1 and the reason in "
        "'problem' and goes on; 'error' stops at the first bad row with its one-line message (inputs read "
        "whole, such as folders, always stop there)")] = "flag",
    pretrained: Annotated[bool, typer.Option(
        "--pretrained", help="RUN_DIR is a task name: predict with the pretrained model shipped with astroflax "
        "(astroflax/pretrained/TASK, MODEL_CARD.md there)")] = False,
) -> None:
    """Predict with a trained run (or ensemble, or export) on new data; writes one row per object.

    Table inputs (photoz) are streamed in chunks: memory does not grow with the input, bad rows are
    written with flag = 1 and the reason in 'problem' (or stop the run: --bad-rows error), and
    nothing appears under OUTPUT until the last chunk is done (an interrupted run continues with
    --resume). Folders of spectra or images are read in batches of files.
    Classifier probabilities are temperature-scaled (mixture sigmas scaled) when the run's calibration.json matches the checkpoint.
    """
    if pretrained:
        from astroflax.pretrained import pretrained_path

        run_dir = pretrained_path(str(run_dir))
    if not input.exists():
        raise AstroflaxError(f"--input {input}: no such file or directory")
    require_parent_dir(output, "--output")
    if bad_rows not in ("flag", "error"):
        raise ConfigError(f"--bad-rows {bad_rows}: expected flag or error")
    streams, why_not = _streams(run_dir, input, mc_dropout)
    if streams:
        from astroflax.predict.stream import DEFAULT_CHUNK_ROWS

        _predict_stream(run_dir, input, output, checkpoint, weights, tuple(keep or ()),
                        DEFAULT_CHUNK_ROWS if chunk_rows is None else chunk_rows, resume, dask, bad_rows)
        return
    given = [flag for flag, on in (("--keep", keep), ("--resume", resume), ("--dask", dask)) if on]
    if given:
        raise ConfigError(f"{given[0]} applies to streamed table inputs only: {why_not}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ConfigError(f"--chunk-rows {chunk_rows}: expected at least 1")
    _predict_in_memory(run_dir, input, output, checkpoint, weights, mc_dropout,
                       FOLDER_BATCH if chunk_rows is None else chunk_rows)


def _predict_stream(run_dir: Path, input: Path, output: Path, checkpoint: str, weights: str, keep: tuple[str, ...],
                    chunk_rows: int, resume: bool, dask: str | None, bad_rows: str = "flag") -> None:
    """``predict`` of a table file or HATS catalogue in chunks (astroflax.predict)."""
    from astroflax.predict.models import ModelRef, get_model
    from astroflax.predict.stream import partial_dir

    ref = ModelRef.of(run_dir, checkpoint, weights)
    model = get_model(ref)  # the driver's copy: the reader settings, the summary (and one-line load errors)
    try:
        _run_stream(ref, model, input, output, keep, chunk_rows, resume, dask, bad_rows)
    except KeyboardInterrupt:
        err.print(f"interrupted: the finished work is kept in {partial_dir(output)}; run the same command "
                  "with --resume to continue", highlight=False, markup=False)
        raise


def _run_stream(ref, model, input: Path, output: Path, keep: tuple[str, ...], chunk_rows: int, resume: bool,
                dask: str | None, bad_rows: str = "flag") -> None:
    from astroflax.predict.dask import chunk_runner, dask_client, predict_hats
    from astroflax.predict.sources import is_hats_catalogue
    from astroflax.predict.stream import stream_predict

    with dask_client(dask) as client:
        if is_hats_catalogue(input):
            if bad_rows != "flag":
                raise ConfigError(f"--bad-rows {bad_rows} with the HATS catalogue {input}: its partitions run in "
                                  "parallel, so bad rows are always flagged (flag = 1, the reason in 'problem')")
            if output.suffix:
                raise ConfigError(f"--output {output}: a HATS input gives a HATS catalogue; give a directory name "
                                  "without a suffix")
            s = predict_hats(ref, input, output, keep=keep, resume=resume, client=client, progress=err.is_terminal)
            err.print(f"Wrote {s['rows']} predictions to the HATS catalogue {output} ({s['partitions']} partitions, "
                      f"{s['model']})" + (f"; {s['bad']} bad input rows: flag = 1, the reason in column 'problem'"
                                          if s["bad"] else ""), highlight=False, markup=False)
            return
        if client is not None and input.suffix.lower() in (".csv", ".gz", ".tsv", ".txt", ".dat"):
            raise ConfigError(f"--dask with {input}: text tables cannot be split by row without reading them "
                              "whole; convert it to Parquet first (e.g. pandas.read_csv(...).to_parquet(...))")
        bar = _progress_bar()
        state: dict = {}

        def on_progress(done: int, total: int | None) -> None:
            import time

            if bar is None:
                return
            if "task" not in state:
                state["t0"], state["done0"] = time.perf_counter(), done
                state["task"] = bar.add_task("predict", total=total, completed=done, rate="")
            rate = (done - state["done0"]) / max(time.perf_counter() - state["t0"], 1e-9)
            bar.update(state["task"], completed=done, total=total, rate=f"{rate:,.0f} rows/s")

        hdu = (model.info.get("reader") or {}).get("hdu")
        try:
            if bar is not None:
                bar.start()
            summary = stream_predict(ref, input, output, chunk_rows=chunk_rows, keep=keep, resume=resume, hdu=hdu,
                                     on_progress=on_progress, runner=chunk_runner(client) if client else None,
                                     bad_rows=bad_rows)
        finally:
            if bar is not None:
                bar.stop()
    if model.note:
        err.print(model.note, highlight=False, markup=False)
    err.print(summary.text(), highlight=False, markup=False)


def _predict_in_memory(run_dir: Path, input: Path, output: Path, checkpoint: str, weights: str,
                       mc_dropout: int, batch_files: int = FOLDER_BATCH) -> None:
    """``predict`` of inputs the task reads itself: a folder of spectra or images ``batch_files``
    files at a time (``Task.input_batches``), anything else (light curves, tables of spectra,
    ``--mc-dropout``) whole with ``load_inputs``."""
    from astroflax.ensembles import open_run
    from astroflax.evaluate.uncertainty import predict_outputs
    from astroflax.runs import PredictionWriter

    if (run_dir / "manifest.json").is_file():  # an `astroflax export` directory (docs/export_format.md)
        from astroflax.export.writer import predict_export_csv

        err.print(predict_export_csv(run_dir, input, output, checkpoint, weights, mc_dropout), markup=False)
        return
    run = open_run(run_dir, checkpoint, weights)
    batches = None
    if run.task.input_batches is not None and not mc_dropout:
        batches = run.task.input_batches(run.cfg, run.info, input, batch_files)
    if batches is None:  # read whole
        batches = [run.task.load_inputs(run.cfg, run.info, input)]
    notes: set[str] = set()
    with PredictionWriter(output) as out:
        for arrays, ids in batches:  # a folder of files: one batch of them in memory at a time
            require_finite_rows(arrays, ids, f"--input {input}", "the model inputs built from it",
                                "; check that object's values")
            outputs, note = predict_outputs(run, arrays, mc_dropout, weights)
            if note and note not in notes:
                notes.add(note)
                err.print(note, highlight=False, markup=False)
            require_finite_rows({"output": outputs}, ids, f"--input {input}", "the predictions",
                                "; nothing was written: check that object's values, or the checkpoint with "
                                "`astroflax check`")
            out.write(run.task.format_predictions(outputs, ids, run.info))
    err.print(f"Wrote {out.rows} predictions to {output} (checkpoint step {run.step})")


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
    run_dir: run_dir_argument("run directory of a trained `vae` run, or its export"),
    digit_class: Annotated[Optional[int], typer.Option(
        "--class", help="class to generate; omit for one row per class")] = None,
    n: Annotated[int, typer.Option("--n", help="samples (with --class) or samples per class row (without)")] = 8,
    out: out_option("PNG file to write") = Path("samples.png"),
    seed: Annotated[int, typer.Option("--seed", help="seed of the latent draws")] = 0,
    checkpoint: Checkpoint = "best",
    scale: Annotated[int, typer.Option("--scale", help="pixels per image pixel (tile = 28*scale)")] = 2,
    pretrained: Annotated[bool, typer.Option(
        "--pretrained", help="RUN_DIR is a task name: sample the model shipped with astroflax")] = False,
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

    from astroflax.data.digits import write_digit_grid
    from astroflax.runs import load_run, model_from_export

    if pretrained:
        from astroflax.pretrained import pretrained_path

        run_dir = pretrained_path(str(run_dir))
    if (run_dir / "manifest.json").is_file():  # an export (a shipped model): no checkpoint to choose
        if checkpoint != "best":
            raise ConfigError(f"--checkpoint {checkpoint}: {run_dir} is an export, which holds one checkpoint")
        model, task, info, step = model_from_export(run_dir)
    else:
        run = load_run(run_dir, checkpoint)
        model = nnx.merge(run.graphdef, run.state.params, run.state.model_state)
        task, info, step = run.task, run.info, run.step
    if task.kind != "generative" or not hasattr(model, "generate") or "num_classes" not in info:
        raise ConfigError(f"{run_dir}: task {task.name!r} is not a class-conditional generator; train `vae`")
    k = int(info["num_classes"])
    if digit_class is not None and digit_class >= k:
        raise ConfigError(f"--class {digit_class}: out of range; this run has classes 0-{k - 1}")
    rows = sample_grid_rows(model, k, digit_class, n, seed)
    path = write_digit_grid(rows, out, scale=scale)
    what = f"{n} samples of class {digit_class}" if digit_class is not None else f"{n} samples per class x {k}"
    err.print(f"Wrote {what} to {path} (checkpoint step {step})", highlight=False)
