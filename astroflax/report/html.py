"""``report/index.html``: one self-contained page per run (or ensemble) directory.

Everything the run directory knows, in one file that opens from disk without a server, read
from the run directory's files only. It opens with what a reader came for (headline test
figures against the task's targets, calibration and checklist status), then every evaluation
(metrics, per-class table, figures), calibration before/after, uncertainty comparisons, the
deployment checklist (``checklist.json``), training curves, the data summary and, last, the config.
Images are embedded as base64 data URIs; there is no external JS, CSS or font, and all text
is HTML-escaped. A small inline script records on window load how many images decoded and
whether any script error happened (``data-images-ok`` / ``data-js-errors`` on ``<body>``), so
a headless browser can check the page.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from astroflax.errors import AstroflaxError
from astroflax.runfiles import ENSEMBLE_FILE, load_checklist

REPORT_DIR = "report"
_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
_SKIP_HEADLINE = {"json_path", "task_kind", "declared_targets", "task", "split", "checkpoint_step", "figures", "per_class", "auc_ovr",
                  "confusion_matrix", "class_names", "calibration", "uncertainty"}
_CALIBRATION_NAMES = {"prior_temperature": "Class-prior correction then temperature scaling",
                      "balanced_offsets": "Temperature scaling with a logit offset per class (class-balanced log-loss)"}
_PREFERRED = ["accuracy", "log_loss", "flat_weighted_log_loss", "ece", "loss"]
# What a regressor's sigma scaling is judged by (astroflax.evaluate.calibration.interval_metrics).
_INTERVALS = ["coverage_68", "coverage_95", "pit_cvm", "pit_ks", "nll", "crps", "median_sigma"]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0;color:#c8cedb;font-size:13px}
nav{padding:8px 28px;background:#e8ebf0;font-size:13px}nav a{margin-right:14px;color:#244c8f}
main{padding:8px 28px 40px;max-width:1300px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:12px 18px;margin:16px 0}
h2{font-size:18px;margin:4px 0 10px}h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 10px}
th,td{border:1px solid #dde1e8;padding:3px 8px;text-align:left}th{background:#f0f2f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f7f9;border:1px solid #dde1e8;padding:8px;font-size:12px;overflow:auto;max-height:420px}
figure{display:inline-block;margin:6px 12px 12px 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #dde1e8}figcaption{font-size:12px;color:#555}
.pass{color:#0a7a32;font-weight:600}.fail{color:#b3261e;font-weight:600}.na{color:#777}
.note{color:#555;font-size:13px}.missing{color:#b3261e}
"""

# Records image decoding and script errors into the DOM (read back by headless-browser tests).
CHECK_SCRIPT = """
(function(){
  var errors = [];
  window.addEventListener('error', function(e){
    var t = e.target;
    errors.push(t && t.tagName ? ('failed to load ' + t.tagName) : String(e.message));
  }, true);
  var origError = console.error;
  console.error = function(){ errors.push(Array.prototype.join.call(arguments, ' ')); origError.apply(console, arguments); };
  window.addEventListener('load', function(){
    var imgs = document.images, ok = 0;
    for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
    var b = document.body;
    b.setAttribute('data-images-total', String(imgs.length));
    b.setAttribute('data-images-ok', String(ok));
    b.setAttribute('data-js-errors', String(errors.length));
    document.getElementById('js-errors').textContent = errors.join('\\n');
    b.setAttribute('data-ready', '1');
  });
})();
"""


# ------------------------------------------------------------------------------- helpers


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items())
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def _cell(value: Any) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{esc(fmt(value))}</td>' if numeric else f"<td>{esc(fmt(value))}</td>"


def table(headers: list[Any], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(path: Path | None, caption: str) -> str:
    """An embedded ``<img>`` (data URI), or a visible note when the file is missing."""
    if path is None or not path.is_file():
        return f'<p class="missing">figure {esc(caption)} missing ({esc(path)})</p>'
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:{mime};base64,{data}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _resolve_figure(p: str, run_dir: Path, split: str) -> Path:
    """The figure in this run directory first: recorded paths may be relative to where evaluation
    ran, or absolute paths of a run directory that was since moved or copied."""
    path = Path(p)
    candidates = [run_dir / "eval" / split / path.name, *([] if path.is_absolute() else [run_dir / path]), path]
    return next((c for c in candidates if c.is_file()), path)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (int, float, str, bool))


def _headline(report: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for key, value in report.items():
        if key in _SKIP_HEADLINE:
            continue
        if _is_scalar(value):
            rows.append([key, value])
        elif isinstance(value, dict) and 0 < len(value) <= 20 and all(_is_scalar(v) for v in value.values()):
            rows += [[f"{key}.{k}", v] for k, v in value.items()]
    return rows


def _is_group_table(value: Any) -> bool:
    """A dict of groups, each a dict of scalars (per_snr, per_template, stress...)."""
    return (isinstance(value, dict) and 0 < len(value) <= 60
            and all(isinstance(v, dict) and v and all(_is_scalar(x) for x in v.values()) for v in value.values()))


def _row_lists(value: Any) -> dict[str, list[dict[str, Any]]]:
    """The lists of flat rows inside a section dict (e.g. one row per real cutout); {} if none."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(v, list) and v
            and all(isinstance(r, dict) and all(_is_scalar(x) for x in r.values()) for r in v)}


def _metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    return [k for k in _PREFERRED if k in keys] + [k for k in keys if k not in _PREFERRED]


# ------------------------------------------------------------------------------ sections


def _members(run_dir: Path) -> dict[str, Path]:
    spec = _read_json(run_dir / ENSEMBLE_FILE)
    if isinstance(spec, dict) and spec.get("members"):
        return {str(m): run_dir / str(m) for m in spec["members"]}
    return {run_dir.name: run_dir}


def _config_section(run_dir: Path, members: dict[str, Path]) -> str:
    parts = []
    ens = run_dir / "ensemble.json"
    if ens.is_file():
        parts.append(f"<h3>ensemble.json</h3><pre>{esc(ens.read_text())}</pre>")
    first = next(iter(members.values()))
    cfg = first / "config.yaml"
    title = "config.yaml" if first == run_dir else f"{first.name}/config.yaml"
    parts.append(f"<h3>{esc(title)}</h3><pre>{esc(cfg.read_text())}</pre>" if cfg.is_file()
                 else '<p class="note">no config.yaml</p>')
    return "".join(parts)


def _data_section(members: dict[str, Path]) -> str:
    info = _read_json(next(iter(members.values())) / "data_info.json")
    if not isinstance(info, dict):
        return '<p class="note">no data_info.json (training has not started)</p>'
    parts = []
    sizes = info.get("split_sizes")
    if isinstance(sizes, dict):
        parts.append("<h3>Split sizes</h3>" + table(["split", "examples"], [[k, v] for k, v in sizes.items()]))
    counts, names = info.get("class_counts"), info.get("class_names")
    if isinstance(counts, dict) and isinstance(names, list) and counts:
        splits = list(counts)
        totals = {s: max(sum(counts[s]), 1) for s in splits}
        rows = [[name, *[f"{counts[s][j]} ({100 * counts[s][j] / totals[s]:.1f}%)" for s in splits]]
                for j, name in enumerate(names)]
        parts.append("<h3>Class balance</h3>" + table(["class", *splits], rows))
    other = [[k, v] for k, v in info.items()
             if k not in ("split_sizes", "class_counts", "class_names") and _is_scalar(v)]
    other += [[k, ", ".join(fmt(x) for x in v)] for k, v in info.items()
              if isinstance(v, list) and 0 < len(v) <= 16 and all(_is_scalar(x) for x in v) and k != "class_names"]
    if other:
        parts.append("<h3>Other facts</h3>" + table(["key", "value"], other))
    return "".join(parts)


def _training_section(run_dir: Path, members: dict[str, Path], out_dir: Path) -> str:
    from astroflax.report.figures import plot_training_curves
    from astroflax.train.metrics_log import read_metrics

    runs = {name: read_metrics(path) for name, path in members.items()}
    parts = []
    summaries = [(name, _read_json(path / "train_summary.json")) for name, path in members.items()]
    rows = [[name, s.get("step"), s.get("total_steps"), s.get("stopped_by") or "completed", s.get("best_step"),
             s.get("best_value"), s.get("wall_time")] for name, s in summaries if isinstance(s, dict)]
    if rows:
        parts.append(table(["run", "step", "of", "stopped by", "best step", "best value", "wall time (s)"], rows))
    fig = plot_training_curves(runs, out_dir / "training_curves.png")
    parts.append(image(fig, "training curves") if fig else '<p class="note">no metrics logged yet</p>')
    events = [[name, r.get("step"), r.get("event"), r.get("why") or r.get("action"), r.get("to_step") or r.get("from_step")]
              for name, records in runs.items() for r in records if r.get("split") == "event"]
    if events:
        parts.append('<h3 class="fail">Events</h3>'
                     + table(["run", "step", "event", "why / action", "to / from step"], events))
    return "".join(parts)


def _calibration_table(before: dict, after: dict) -> str:
    keys = [k for k in _PREFERRED + _INTERVALS if k in before or k in after]
    return table(["metric", "before", "after"], [[k, before.get(k), after.get(k)] for k in keys])


def _calibration_section(run_dir: Path, evals: list[tuple[str, dict]]) -> str:
    from astroflax.evaluate.calibration import load_calibration

    rec = load_calibration(run_dir)
    parts = []
    if rec and "sigma_scale" in rec:
        parts.append(
            f"<p>Sigma scaling: every mixture sigma times <b>s = {esc(fmt(rec.get('sigma_scale')))}</b>, fitted on the "
            f"{esc(rec.get('fitted_on', 'val'))} split ({esc(fmt(rec.get('n')))} examples) for checkpoint "
            f"{esc(rec.get('checkpoint_step'))} so that its PIT is closest to uniform; the means are unchanged.</p>")
        parts.append("<h3>Validation split (fit)</h3>" + _calibration_table(rec.get("val_before", {}), rec.get("val_after", {})))
    elif rec:
        parts.append(
            f"<p>{_CALIBRATION_NAMES.get(rec.get('method'), 'Temperature scaling')}: "
            f"<b>T = {esc(fmt(rec.get('temperature')))}</b>, fitted on the "
            f"{esc(rec.get('fitted_on', 'val'))} split ({esc(fmt(rec.get('n')))} examples) for checkpoint "
            f"{esc(rec.get('checkpoint_step'))}. ECE uses {esc(rec.get('n_bins', 15))} bins.</p>"
        )
        parts.append("<h3>Validation split (fit)</h3>" + _calibration_table(rec.get("val_before", {}), rec.get("val_after", {})))
    for split, rep in evals:
        c = rep.get("calibration")
        if isinstance(c, dict) and "before" in c:
            parts.append(f"<h3>{esc(split)} split</h3>" + _calibration_table(c["before"], c.get("after", {})))
            if c.get("note"):
                parts.append(f'<p class="note">{esc(c["note"])}</p>')
    return "".join(parts) or ('<p class="note">no calibration: temperature scaling applies to classifiers and sigma '
                               'scaling to Gaussian-mixture regressors (evaluate the run to fit it); otherwise see the '
                               'PIT histogram and coverage plot of the evaluation</p>')


def _uncertainty_section(evals: list[tuple[str, dict]]) -> str:
    parts = []
    for split, rep in evals:
        methods = (rep.get("uncertainty") or {}).get("methods")
        if isinstance(methods, dict) and methods:
            cols = _metric_columns(list(methods.values()))
            rows = [[name, *[m.get(c) for c in cols]] for name, m in methods.items()]
            parts.append(f"<h3>{esc(split)} split</h3>" + table(["method", *cols], rows))
    return "".join(parts) or '<p class="note">no uncertainty comparison in the evaluations</p>'


def _eval_section(run_dir: Path, split: str, rep: dict[str, Any]) -> str:
    parts = [f'<h3 id="eval-{esc(split)}">{esc(split)} split — checkpoint {esc(rep.get("checkpoint_step"))}</h3>']
    rows = _headline(rep)
    if rows:
        parts.append(table(["metric", "value"], rows))
    per_class = rep.get("per_class")
    if isinstance(per_class, dict) and per_class:
        auc = rep.get("auc_ovr") or {}
        cols = _metric_columns([v for v in per_class.values() if isinstance(v, dict)])
        body = [[name, *[(v or {}).get(c) for c in cols], *([auc.get(name)] if auc else [])]
                for name, v in per_class.items()]
        parts.append(table(["class", *cols, *(["AUC (one-vs-rest)"] if auc else [])], body))
    for key, groups in rep.items():  # e.g. per_snr, per_template, stress: a row per group
        if key in _SKIP_HEADLINE or not _is_group_table(groups):
            continue
        cols = _metric_columns(list(groups.values()))
        parts.append(f"<h4>{esc(key)}</h4>" + table([key, *cols], [[g, *[v.get(c) for c in cols]]
                                                                   for g, v in groups.items()]))
    for key, value in rep.items():  # e.g. galaxy_zoo_smoke: its scalars, then a row per real cutout
        rows_by_list = _row_lists(value) if key not in _SKIP_HEADLINE else {}
        if rows_by_list:
            scalars = [[k, v] for k, v in value.items() if _is_scalar(v)]
            parts.append(f"<h4>{esc(key)}</h4>" + (table(["metric", "value"], scalars) if scalars else ""))
            for name, rows in rows_by_list.items():
                cols = list(dict.fromkeys(c for r in rows for c in r))
                parts.append(table(cols, [[r.get(c) for c in cols] for r in rows]))
    figures = rep.get("figures") or {}
    if figures:
        parts.append("<div>" + "".join(
            image(_resolve_figure(str(p), run_dir, split), f"{split}: {name}") for name, p in figures.items()
        ) + "</div>")
    return "".join(parts)


def _checklist_section(run_dir: Path) -> str:
    if (run_dir / "ensemble.json").is_file():
        return ('<p class="note">the deployment checklist checks single runs: run <code>astroflax check '
                f'{esc(run_dir)}/member-&lt;i&gt;</code> for each member</p>')
    saved = load_checklist(run_dir)
    if saved is None:
        return (f'<p class="note">deployment checklist not available yet: <code>astroflax check {esc(run_dir)}</code> '
                "measures it (train and evaluate do so too)</p>")
    rows = []
    for it in saved["items"]:
        status = str(it.get("status", "n/a"))
        cls = {"pass": "pass", "fail": "fail"}.get(status, "na")
        detail = esc(it.get("detail", ""))
        if it.get("link"):  # e.g. the study a tuned config came from
            detail += f' (<a href="{esc(Path(str(it["link"])).resolve().as_uri())}">report</a>)'
        rows.append(f'<tr><td>{esc(it.get("name"))}</td><td class="{cls}">{esc(status)}</td>'
                    f'<td>{esc(fmt(it.get("value")))}</td><td>{detail}</td></tr>')
    return (f"<p>checkpoint {esc(saved.get('step'))}</p>"
            "<table><thead><tr><th>check</th><th>status</th><th>value</th><th>detail</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _lookup(report: dict[str, Any], key: str) -> Any:
    node: Any = report
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _target_met(goal: list, value: float) -> bool:
    op, bound = goal
    if op == "between":
        return bound[0] <= value <= bound[1]
    return value >= bound if op == ">=" else value <= bound


def _summary_section(run_dir: Path, evals: list[tuple[str, dict]]) -> str:
    """What a reader came for: headline figures against the task's declared targets (stored with
    the evaluation), calibration and checklist status."""
    from astroflax.evaluate.calibration import load_calibration

    parts = []
    split, rep = next(iter(evals), (None, None))
    if rep is None:
        parts.append('<p class="note">not evaluated yet: <code>astroflax evaluate RUN_DIR</code></p>')
    else:
        targets = rep.get("declared_targets") or {}
        keys = [k for k in _PREFERRED if _is_number(rep.get(k))] + [k for k in targets if k not in _PREFERRED]
        rows = []
        for key in keys:
            value, goal = _lookup(rep, key), targets.get(key)
            met = _target_met(goal, float(value)) if goal and _is_number(value) else None
            shown = "" if not goal else (f"{fmt(goal[1][0])} to {fmt(goal[1][1])}" if goal[0] == "between"
                                         else f"{goal[0]} {fmt(goal[1])}")
            rows.append(f'<tr><td>{esc(key)}</td><td>{esc(fmt(value))}</td><td>{esc(shown)}</td>'
                        f'<td class="{"pass" if met else ("fail" if met is False else "na")}">'
                        f'{"met" if met else ("not met" if met is False else "")}</td></tr>')
        note = "" if split == "test" or not targets else " (the targets are for the test split)"
        parts.append(f"<p>{esc(split)} split, checkpoint {esc(rep.get('checkpoint_step'))}{esc(note)}</p>"
                     "<table><thead><tr><th>metric</th><th>value</th><th>target</th><th></th></tr></thead>"
                     f"<tbody>{''.join(rows)}</tbody></table>")
    rec = load_calibration(run_dir)
    cal = (rep or {}).get("calibration")
    if isinstance(cal, dict) and "before" in cal and "sigma_scale" in cal:
        b, a = cal["before"], cal.get("after") or {}
        parts.append(f"<p>calibration: sigma scale s = {esc(fmt(cal.get('sigma_scale')))}; {esc(split)} 68 % / 95 % coverage "
                     f"{esc(fmt(b.get('coverage_68')))} / {esc(fmt(b.get('coverage_95')))} → "
                     f"{esc(fmt(a.get('coverage_68')))} / {esc(fmt(a.get('coverage_95')))}</p>")
    elif isinstance(cal, dict) and "before" in cal:
        parts.append(f"<p>calibration: T = {esc(fmt(cal.get('temperature')))}; {esc(split)} ECE "
                     f"{esc(fmt(cal['before'].get('ece')))} → {esc(fmt((cal.get('after') or {}).get('ece')))}</p>")
    elif rec:
        what = f"s = {fmt(rec['sigma_scale'])}" if "sigma_scale" in rec else f"T = {fmt(rec.get('temperature'))}"
        parts.append(f"<p>calibration: {esc(what)} for checkpoint {esc(rec.get('checkpoint_step'))}</p>")
    elif (rep or {}).get("task_kind") == "classifier":
        parts.append('<p class="note">calibration: not fitted yet</p>')
    saved = load_checklist(run_dir)
    if saved is not None:
        statuses = [str(it.get("status")) for it in saved["items"]]
        failed = [str(it.get("name")) for it in saved["items"] if it.get("status") == "fail"]
        parts.append(f'<p>deployment checklist (checkpoint {esc(saved.get("step"))}): {statuses.count("pass")} pass, '
                     f'<span class="{"fail" if failed else "pass"}">{len(failed)} fail</span>'
                     + (f" ({esc(', '.join(failed))})" if failed else "") + f", {statuses.count('n/a')} n/a</p>")
    elif not (run_dir / ENSEMBLE_FILE).is_file():
        parts.append('<p class="note">deployment checklist: not measured yet</p>')
    return "".join(parts)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --------------------------------------------------------------------------------- page


def render_report(run_dir: str | Path) -> str:
    """The page as a string, from the files of the run directory only (figures of training
    curves are written under ``report/``)."""
    run_dir = Path(run_dir)
    out_dir = run_dir / REPORT_DIR
    members = _members(run_dir)
    evals = []
    for path in sorted((run_dir / "eval").glob("*.json"), key=lambda p: (p.stem != "test", p.stem)):
        rep = _read_json(path)
        if isinstance(rep, dict):
            evals.append((path.stem, rep))
    first_cfg = next(iter(members.values())) / "config.yaml"
    task = next((rep.get("task") for _, rep in evals if rep.get("task")), None)
    if task is None and first_cfg.is_file():
        try:
            from astroflax.config import load_yaml_file

            task = load_yaml_file(first_cfg).get("task")
        except AstroflaxError:
            task = None  # the config section shows the problem
    kind = f"ensemble of {len(members)} members" if (run_dir / "ensemble.json").is_file() else "run"

    sections = [
        ("summary", "Summary", _summary_section(run_dir, evals)),
        ("evaluation", "Evaluation",
         "".join(_eval_section(run_dir, s, r) for s, r in evals) or '<p class="note">not evaluated yet</p>'),
        ("calibration", "Calibration", _calibration_section(run_dir, evals)),
        ("uncertainty", "Uncertainty", _uncertainty_section(evals)),
        ("checklist", "Deployment checklist", _checklist_section(run_dir)),
        ("training", "Training curves", _training_section(run_dir, members, out_dir)),
        ("data", "Data", _data_section(members)),
        ("config", "Config", _config_section(run_dir, members)),
    ]
    return page(f"astroflax report — {task or 'unknown task'} ({kind})", run_dir, sections)


def page(title: str, directory: Path, sections: list[tuple[str, str, str]]) -> str:
    """A self-contained page: header, a nav bar and one ``<section>`` per (id, title, html)."""
    nav = "".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{esc(name)}</h2>{content}</section>' for sid, name, content in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{CSS}</style><script>{CHECK_SCRIPT}</script></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(directory.resolve())}</p>"
        f"<p>generated {esc(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}</p></header>"
        f"<nav>{nav}</nav><main>{body}</main><pre id=\"js-errors\" hidden></pre></body></html>\n"
    )


def write_page(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a reader never sees half a page)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/report/index.html`` (atomically) and return its path."""
    run_dir = Path(run_dir)
    return write_page(run_dir / REPORT_DIR / "index.html", render_report(run_dir))
