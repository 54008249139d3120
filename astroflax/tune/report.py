"""What a study found: the trials as rows, the best config as a YAML file ``astroflax train
--config`` accepts, and ``report/index.html`` with Optuna's plots (optimisation history,
intermediate values, parameter importances, parallel coordinates, slices), drawn by
``optuna.visualization.matplotlib`` and embedded like the run report's figures."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from astroflax.tune.study import BEST_CONFIG_FILE, StudySpec

REPORT_DIR = "report"


def trial_rows(study: Any, spec: StudySpec, space: Any = None) -> list[dict[str, Any]]:
    """One dict per trial, best first among complete trials, then the rest by number."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        params = space.decode_params(t.params) if space is not None else dict(t.params)
        rows.append({
            "number": t.number, "state": t.state.name.lower(), "value": t.value, "params": params,
            "steps": t.user_attrs.get("steps"), "best_step": t.user_attrs.get("best_step"),
            "wall_time_s": t.user_attrs.get("wall_time_s"), "run_dir": t.user_attrs.get("run_dir"),
            "error": t.user_attrs.get("error"), "baseline": bool(t.user_attrs.get("baseline")),
            "retry_of": t.system_attrs.get("failed_trial"),
            "pruned_at": max(t.intermediate_values) if t.state.name == "PRUNED" and t.intermediate_values else None,
        })
    sign = 1.0 if spec.direction == "minimize" else -1.0
    done = sorted((r for r in rows if r["state"] == "complete" and r["value"] is not None),
                  key=lambda r: (sign * r["value"], r["number"]))
    ranked = {r["number"] for r in done}
    rest = [r for r in rows if r["number"] not in ranked]
    return done + rest


def best_trial(study: Any) -> Any | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def write_best_config(study_dir: Path, trial: Any) -> Path | None:
    """The best trial's config without its run directory and name, for ``astroflax train --config``."""
    rel = trial.user_attrs.get("run_dir")
    saved = study_dir / rel / "config.yaml" if rel else None
    if saved is None or not saved.is_file():
        return None
    cfg = yaml.safe_load(saved.read_text())
    for key in ("run_dir", "name"):
        cfg.pop(key, None)
    cfg.setdefault("train", {})["progress"] = True
    path = study_dir / BEST_CONFIG_FILE
    header = (f"# Best config of study {study_dir} (trial {trial.number}, value {trial.value!r}), written "
              f"{time.strftime('%Y-%m-%d %H:%M')}.\n# Train it with: astroflax train {cfg['task']} --config {path}\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    os.replace(tmp, path)
    return path


# -------------------------------------------------------------------------- figures


def _figures(study: Any, out_dir: Path) -> dict[str, Path | str]:
    """Optuna's plots as PNG files; a plot that cannot be drawn yet says why instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.visualization import matplotlib as ovm

    plots = {
        "optimisation history": ("history.png", ovm.plot_optimization_history),
        "intermediate values (pruning)": ("intermediate.png", ovm.plot_intermediate_values),
        "parameter importances (fANOVA)": ("importances.png", ovm.plot_param_importances),
        "parallel coordinates": ("parallel.png", ovm.plot_parallel_coordinate),
        "slices": ("slices.png", ovm.plot_slice),
    }
    out: dict[str, Path | str] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for title, (name, fn) in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning; tight_layout on colour bars
                ax = fn(study)
                fig = np.atleast_1d(ax).flat[0].figure
                if not fig.axes or not any(a.has_data() for a in fig.axes):
                    plt.close(fig)
                    out[title] = "nothing to plot yet"
                    continue
                panels = len(fig.axes) if name == "slices.png" else 1
                fig.set_size_inches(max(6.4, 3.6 * panels), 4.2)
                fig.tight_layout()
            fig.savefig(out_dir / name, dpi=90)
            plt.close(fig)
            out[title] = out_dir / name
        except Exception as exc:
            plt.close("all")
            out[title] = f"not drawn: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return out


# ----------------------------------------------------------------------------- page


def _test_figures(study_dir: Path, run_dir_rel: str | None) -> dict[str, Any] | None:
    import json

    if not run_dir_rel:
        return None
    path = study_dir / run_dir_rel / "eval" / "test.json"
    try:
        rep = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {k: v for k, v in rep.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def render_study_report(study_dir: Path, study: Any, spec: StudySpec, space: Any = None) -> str:
    from astroflax.report.html import esc, fmt, image, page, table

    rows = trial_rows(study, spec, space)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    best = best_trial(study)
    out_dir = study_dir / REPORT_DIR
    sections = []

    summary = [(f"<p>task <b>{esc(spec.task)}</b>, preset {esc(spec.preset)}, sampler {esc(spec.sampler)}, "
               f"pruner {esc(spec.pruner)}, {esc(spec.trials)} trials asked, metric <b>{esc(spec.metric)}</b> "
               f"({esc(spec.direction)}, on the validation split)</p>"),
               "<p>trials: " + ", ".join(f"{n} {esc(s)}" for s, n in sorted(counts.items())) + "</p>"]
    if best is not None:
        params = space.decode_params(best.params) if space is not None else best.params
        link = f"../{best.user_attrs.get('run_dir')}/report/index.html"
        summary.append(f'<p id="best">best: trial {best.number}, {esc(spec.metric)} = {esc(fmt(best.value))} '
                       f'(<a href="{esc(link)}">run report</a>; config in <code>{BEST_CONFIG_FILE}</code>)</p>')
        summary.append(table(["parameter", "value"], [[k, v] for k, v in params.items()]))
        baseline = next((r for r in rows if r["baseline"]), None)
        test_best = _test_figures(study_dir, best.user_attrs.get("run_dir"))
        test_base = _test_figures(study_dir, baseline["run_dir"]) if baseline else None
        if baseline is not None:
            summary.append(f"<p>baseline (the config as given, trial {baseline['number']}): {esc(spec.metric)} = "
                           f"{esc(fmt(baseline['value']))} ({esc(baseline['state'])})</p>")
        if test_best:
            keys = sorted(test_best)
            headers = ["test split", f"best (trial {best.number})"] + (["baseline"] if test_base else [])
            summary.append(table(headers, [[k, test_best[k]] + ([test_base.get(k)] if test_base else [])
                                           for k in keys]))
    else:
        summary.append('<p class="note">no complete trial yet</p>')
    sections.append(("summary", "Summary", "".join(summary)))

    figures = _figures(study, out_dir)
    figs = "".join(image(p, t) if isinstance(p, Path) else f'<p class="note">{esc(t)}: {esc(p)}</p>'
                   for t, p in figures.items())
    sections.append(("plots", "Plots", figs))

    keys = list(space.params) if space is not None else sorted({k for r in rows for k in r["params"]})
    trial_table = ["<table><thead><tr><th>trial</th><th>state</th><th>" + esc(spec.metric) + "</th>"
                   + "".join(f"<th>{esc(k)}</th>" for k in keys)
                   + "<th>steps</th><th>time (s)</th><th>note</th></tr></thead><tbody>"]
    for r in rows:
        note = "; ".join(x for x in [
            "baseline" if r["baseline"] else "", f"retry of {r['retry_of']}" if r["retry_of"] is not None else "",
            f"pruned at step {r['pruned_at']}" if r["pruned_at"] is not None else "", r["error"] or ""] if x)
        number = (f'<a href="../{esc(r["run_dir"])}/report/index.html">{r["number"]}</a>'
                  if r["run_dir"] else str(r["number"]))
        cls = {"complete": "pass", "fail": "fail"}.get(r["state"], "na")
        trial_table.append(
            f"<tr><td>{number}</td><td class=\"{cls}\">{esc(r['state'])}</td><td class=\"num\">{esc(fmt(r['value']))}</td>"
            + "".join(f"<td>{esc(fmt(r['params'].get(k)))}</td>" for k in keys)
            + f"<td class=\"num\">{esc(fmt(r['steps']))}</td><td class=\"num\">{esc(fmt(r['wall_time_s']))}</td>"
            f"<td>{esc(note)}</td></tr>")
    trial_table.append("</tbody></table>")
    sections.append(("trials", "Trials", "".join(trial_table)))
    sections.append(("space", "Search space", f"<pre>{esc(yaml.safe_dump(spec.space, sort_keys=False))}</pre>"))

    return page(f"astroflax study — {spec.name} ({spec.task})", study_dir, sections)


def write_study_report(study_dir: Path, study: Any, spec: StudySpec, space: Any = None) -> Path:
    from astroflax.report.html import write_page

    return write_page(study_dir / REPORT_DIR / "index.html", render_study_report(study_dir, study, spec, space))
