"""Evaluate a run's checkpoint on a split and write the results next to the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from astroflax.runs import load_run, write_json


def evaluate_run(run_dir: str | Path, split: str = "test", checkpoint: str | int = "best") -> dict[str, Any]:
    """Full evaluation (metrics + figures) of ``checkpoint`` on ``split``; writes ``eval/<split>.json``."""
    run = load_run(run_dir, checkpoint)
    dataset = run.task.load_data(run.cfg)
    arrays = dataset.split(split)
    outputs = run.predict(arrays)
    out_dir = run.run_dir / "eval" / split
    report = run.task.report(outputs, arrays, run.info, out_dir)
    report = {"task": run.task.name, "split": split, "checkpoint_step": run.step, **report}
    report["json_path"] = str(write_json(run.run_dir / "eval" / f"{split}.json", report))
    return report
