"""Self-contained HTML reports of runs: ``report/index.html`` (see :mod:`astroflax.report.html`)."""

from __future__ import annotations

from pathlib import Path


def write_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/report/index.html``; imported lazily so ``import astroflax.report`` stays light."""
    from astroflax.report.html import write_report as _write

    return _write(run_dir)


__all__ = ["write_report"]
