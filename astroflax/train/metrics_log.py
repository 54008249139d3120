"""Metric sinks: ``metrics.jsonl`` (always) and TensorBoard event files under ``tb/``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


def _import_summary_writer() -> type:
    """tensorboardX's ``SummaryWriter``, imported without PyTorch.

    Why: where torch is installed, tensorboardX imports it at import time only to name a type in
    its annotations (``numpy_compatible``); that was 0.9 s of every command's start-up here
    (torch 2.13 CPU; ``python -X importtime``). Scalars never touch torch. A process that has
    imported torch already keeps it.
    """
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return SummaryWriter


SummaryWriter = _import_summary_writer()


def truncate_jsonl(path: Path, after_step: int) -> None:
    """Drop metric lines logged after ``after_step`` (a resumed run re-logs them); events stay."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash mid-write
        if record.get("split") == EVENT or record.get("step", 0) <= after_step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


EVENT = "event"  # the ``split`` of records that say what happened (divergence, rollback), not metrics


class MetricsWriter:
    def __init__(self, run_dir: Path, resume_step: int = 0):
        self.jsonl = run_dir / "metrics.jsonl"
        truncate_jsonl(self.jsonl, resume_step)
        self._file = self.jsonl.open("a")
        self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1)

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        record = {"step": step, "split": split, **{k: (v if math.isfinite(v) else None) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in scalars.items():
            if math.isfinite(value):
                self._tb.add_scalar(f"{split}/{key}", value, step)

    def event(self, step: int, name: str, **fields: Any) -> None:
        """A record of something that happened, e.g. ``rollback``; kept across resumes and rewinds."""
        self._file.write(json.dumps({"step": step, "split": EVENT, "event": name, **fields}, default=str) + "\n")
        self._file.flush()

    def rewind(self, step: int) -> None:
        """Forget metrics logged after ``step`` (training went back to it); events stay."""
        self._file.close()
        self._tb.close()
        truncate_jsonl(self.jsonl, step)
        self._file = self.jsonl.open("a")
        self._tb = SummaryWriter(str(self.jsonl.parent / "tb"), purge_step=step + 1)

    def close(self) -> None:
        self._file.close()
        self._tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash mid-write
    return out
