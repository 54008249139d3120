"""``astroflax benchmark``: re-run one row of the published comparison (docs/benchmarks.md).

The training is :func:`astroflax.cli.train.train` itself (same config resolution, checkpoints,
evaluation and report); afterwards the run's ``eval/test.json`` is read and its figures are
printed next to the published ones of :mod:`astroflax.evaluate.published`.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from astroflax.cli.common import Overrides, Preset, TaskName, err, resolve_config, run_dir_option, wide_out
from astroflax.errors import AstroflaxError


def benchmark(
    task: TaskName,
    preset: Preset = None,
    run_dir: run_dir_option("run directory (default runs/<task>-<preset>)") = None,
    overrides: Overrides = [],
) -> None:
    """Train TASK exactly like `astroflax train`, then print its test figures next to the published
    ones (docs/benchmarks.md), with the references and how the data differ."""
    from astroflax.cli.train import train
    from astroflax.evaluate.published import PUBLISHED, rows_for

    # The same resolution as `train` (unknown task, bad preset or --set: the same one-line errors),
    # before anything is trained; it also names the run directory train will use.
    cfg = resolve_config(task, preset, None, overrides, run_dir=run_dir)
    rows = rows_for(cfg.task)
    if not rows:
        raise AstroflaxError(f"task {cfg.task!r} has no published comparison (astroflax/evaluate/published.py "
                             f"covers {', '.join(sorted(PUBLISHED))})")
    train(task, preset=preset, overrides=list(overrides), run_dir=run_dir)
    path = cfg.resolved_run_dir() / "eval" / "test.json"
    if not path.is_file():
        raise AstroflaxError(f"{path}: no test-split evaluation was written; run `astroflax evaluate "
                             f"{cfg.resolved_run_dir()}` and then this command again")
    report = json.loads(path.read_text())
    print_comparison(report, rows, preset=cfg.preset, source=path)


def comparison_table(report: dict, rows: list[dict], title: str) -> tuple[Table, list[str]]:
    """The rich table of measured against published figures, and the metric keys missing from ``report``."""
    from astroflax.evaluate.published import format_measured, lookup

    table = Table(title=title, header_style="bold", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("figure")
    table.add_column("ours (test split)", justify="right")
    table.add_column("published", justify="right")
    table.add_column("reference")
    missing: list[str] = []
    for i, row in enumerate(rows, 1):
        try:
            ours = format_measured(lookup(report, row["metric"]))
        except KeyError:
            ours = "missing"
            missing.append(row["metric"])
        table.add_row(str(i), f"{row['label']}\n[dim]{row['metric']}[/]", ours, row["published_text"],
                      row["reference"])
    return table, missing


def print_comparison(report: dict, rows: list[dict], preset: str | None, source: Path) -> None:
    out = wide_out()
    title = (f"{report.get('task')} ({preset} preset, checkpoint step {report.get('checkpoint_step')}) against "
             "published figures")
    table, missing = comparison_table(report, rows, title)
    out.print(table)
    # One line per published source: what it was measured on and how our data differ; then the rows
    # whose statistic differs too.
    seen: dict[tuple[str, str, str], list[int]] = {}
    for i, row in enumerate(rows, 1):
        seen.setdefault((row["reference"], row["their_data"], row["data_differ"]), []).append(i)
    for (reference, their_data, differ), numbers in seen.items():
        out.print(f"Data ({', '.join(f'#{n}' for n in numbers)}): theirs: {their_data}. {differ}",
                  soft_wrap=True, highlight=False, markup=False)
    for i, row in enumerate(rows, 1):
        if row.get("note"):
            out.print(f"#{i}: {row['note']}.", soft_wrap=True, highlight=False, markup=False)
    out.print(f"Measured values from {source}; published figures, references and how they were checked: "
              "docs/benchmarks.md", soft_wrap=True, highlight=False, markup=False)
    for key in missing:
        err.print(f"warning: metric {key!r} of the published table is not in {source}", highlight=False,
                  markup=False)
