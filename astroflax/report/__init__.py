"""Self-contained HTML reports of runs: ``report/index.html`` (see :mod:`astroflax.report.html`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_report(run_dir: str | Path, loaded: tuple[Any, Any] | None = None) -> Path:
    """Write ``<run_dir>/report/index.html``; imported lazily so ``import astroflax.report`` stays light."""
    from astroflax.report.html import write_report as _write

    return _write(run_dir, loaded)


__all__ = ["write_report"]
