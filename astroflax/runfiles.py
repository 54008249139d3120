"""Names and light readers of the files in a run directory.

The HTML report renders from these files alone, so this module imports no JAX, no model code
and no task: a report can be rebuilt anywhere the run directory is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ENSEMBLE_FILE = "ensemble.json"
CHECKLIST_FILE = "checklist.json"


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=float))
    return path


def save_checklist(run_dir: str | Path, items: list[dict[str, Any]], step: int) -> Path:
    """Write the checklist of checkpoint ``step`` to ``run_dir/checklist.json`` for the report."""
    return write_json(Path(run_dir) / CHECKLIST_FILE, {"step": int(step), "items": items})


def discard_checklist(run_dir: str | Path) -> None:
    """Remove a saved checklist that no longer describes the run (e.g. its measurement failed)."""
    (Path(run_dir) / CHECKLIST_FILE).unlink(missing_ok=True)


def load_checklist(run_dir: str | Path) -> dict[str, Any] | None:
    """The saved checklist (``{"step", "items"}``), or None when there is none or it is unreadable."""
    try:
        data = json.loads((Path(run_dir) / CHECKLIST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("items"), list) else None
