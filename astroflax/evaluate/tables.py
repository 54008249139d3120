"""Rich terminal tables for a :func:`~astroflax.evaluate.classification.classification_report`."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table

__all__ = ["evaluation_table", "metrics_table", "report_table"]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.{digits}f}"


def metrics_table(report: dict[str, Any], title: str) -> Table:
    """Every top-level scalar of a report (regression, generative models, anything not per class)."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    for key, value in report.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "checkpoint_step":
            table.add_row(key, _fmt(value))
    return table


def evaluation_table(report: dict[str, Any], title: str) -> Group | Table:
    """The classification tables when the report is a classification report, else all scalars."""
    if all(k in report for k in ("n", "accuracy", "per_class", "macro")):
        return report_table(report, title)
    return metrics_table(report, title)


def report_table(report: dict[str, Any], title: str) -> Group:
    """Overall metrics table followed by a per-class precision/recall/F1/support(/AUC) table.

    Returns a ``rich.console.Group`` (printable with ``Console().print``); its
    ``.renderables`` are ``[overall: Table, per_class: Table]``.
    """
    missing = [k for k in ("n", "accuracy", "per_class", "macro") if k not in report]
    if missing:
        raise ValueError(f"report is missing keys {missing}; pass the output of classification_report()")

    overall = Table(title=title, show_header=True, header_style="bold")
    overall.add_column("Metric")
    overall.add_column("Value", justify="right")
    overall.add_row("samples", _fmt(int(report["n"])))
    for key, label in (
        ("accuracy", "accuracy"),
        ("log_loss", "log-loss"),
        ("flat_weighted_log_loss", "flat-weighted log-loss"),
        ("ece", "ECE"),
        ("macro_auc_ovr", "macro AUC (OvR)"),
    ):
        if key in report:
            overall.add_row(label, _fmt(report[key]))
    for key in ("precision", "recall", "f1"):
        overall.add_row(f"macro {key}", _fmt(report["macro"].get(key)))
    if report.get("positive_class") is not None:
        overall.add_row(f"AUC {report['positive_class']} vs rest", _fmt(report.get("auc_positive")))

    auc_ovr = report.get("auc_ovr") or {}
    per_class = Table(title=f"{title}: per class", show_header=True, header_style="bold")
    per_class.add_column("Class")
    for col in ("Precision", "Recall", "F1", "Support"):
        per_class.add_column(col, justify="right")
    if auc_ovr:
        per_class.add_column("AUC (OvR)", justify="right")
    for name, row in report["per_class"].items():
        cells = [str(name), _fmt(row["precision"]), _fmt(row["recall"]), _fmt(row["f1"]), _fmt(int(row["support"]))]
        if auc_ovr:
            cells.append(_fmt(auc_ovr.get(name)))
        per_class.add_row(*cells)
    return Group(overall, per_class)
