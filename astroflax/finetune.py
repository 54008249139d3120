"""Fine-tuning: start a new run from the parameters of another run's checkpoint.

Parameters (and batch-norm statistics) are matched by path and shape: those that match are restored bit for bit, the
others (e.g. a classifier head with another number of classes) keep their fresh
initialisation, and source parameters with no place in the new model are dropped. The new run
has a fresh optimiser state, its own run directory and its own config (freezing, lr
multipliers... are ordinary ``optim`` keys).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console

from astroflax.errors import CheckpointError


@dataclasses.dataclass
class MatchReport:
    restored: list[str]
    new: list[str]  # "path (why)"
    dropped: list[str]  # "path (why)"
    restored_values: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def match_params(source: dict[str, np.ndarray], params: Any) -> tuple[Any, MatchReport]:
    """``params`` with every leaf whose path and shape match ``source`` replaced by the source value."""
    from astroflax.train.optim import flat_params, map_paths

    target = {p: x for p, x in flat_params(params).items()}
    report = MatchReport([], [], [])

    def pick(path: str, x):
        src = source.get(path)
        if src is None:
            report.new.append(f"{path} (not in the source)")
            return x
        if tuple(src.shape) != tuple(x.shape):
            report.new.append(f"{path} (shape {tuple(x.shape)} vs {tuple(src.shape)} in the source)")
            return x
        report.restored.append(path)
        report.restored_values += int(np.prod(x.shape))
        return jnp.asarray(src, dtype=x.dtype)

    out = map_paths(pick, params)
    for path, src in source.items():
        if path not in target:
            report.dropped.append(f"{path} (not in the new model)")
        elif tuple(target[path].shape) != tuple(src.shape):
            report.dropped.append(f"{path} (shape {tuple(src.shape)} does not fit {tuple(target[path].shape)})")
    return out, report


def _summary(paths: list[str]) -> str:
    groups = Counter(p.split(".")[0] for p in paths)
    return ", ".join(f"{g}.* ({n})" for g, n in groups.items())


def print_report(report: MatchReport, source: Path, step: int, console: Console) -> None:
    console.print(
        f"[bold]Restored[/] {len(report.restored)} arrays ({report.restored_values:,} values) from {source} "
        f"checkpoint step {step}: {_summary(report.restored) or 'none'}"
    )
    console.print(f"[bold]New[/] (re-initialised): {len(report.new)}" + "".join(f"\n  {p}" for p in report.new))
    console.print(f"[bold]Dropped[/] from the source: {len(report.dropped)}" + "".join(f"\n  {p}" for p in report.dropped))


def finetune(
    source: str | Path,
    task: str,
    *,
    data: str | None = None,
    freeze: list[str] | None = None,
    head_only: bool = False,
    head: str = "head",
    checkpoint: str = "best",
    preset: str | None = None,
    overrides: list[str] | None = None,
    run_dir: str | Path | None = None,
    console: Console | None = None,
):
    """Fine-tune ``task`` from the parameters of run ``source``; returns (TrainResult, MatchReport)."""
    from astroflax.config import build_config
    from astroflax.runs import load_run
    from astroflax.train.loop import train

    console = console or Console(stderr=True, soft_wrap=True)
    default_dir = None
    if str(source) == "pretrained":  # the model shipped for this task
        from astroflax.pretrained import pretrained_path

        source = pretrained_path(task)
        default_dir = Path("runs") / f"pretrained-ft-{task}"
    source = Path(source)
    if (source / "manifest.json").is_file():  # an export: its verified params.npz
        source_params, manifest = export_params(source)
        src_task, src_step = str(manifest["task"]), int(manifest["source"]["checkpoint_step"])
        src_config = dict(manifest.get("config") or {})
    else:
        src = load_run(source, checkpoint)
        # Batch-norm statistics travel with the weights they normalise (paths do not collide with params).
        source_params = {p: np.asarray(x) for p, x in {**_flat(src.state.params), **_flat(src.state.model_state)}.items()}
        src_task, src_step, src_config = src.cfg.task, src.step, src.cfg.model_dump(mode="json")
    # Same task: the new run builds the source's model (its architecture), so that every parameter
    # fits; without this a shipped full-preset model fine-tuned under the quick preset's smaller
    # default widths restored almost nothing. --set model.KEY=... still changes any of it.
    source_model = {"model": src_config["model"]} if src_task == task and "model" in src_config else None
    run_dir = Path(run_dir) if run_dir else (default_dir or source.with_name(f"{source.name}-ft-{task}"))
    extra: dict[str, Any] = {"run_dir": str(run_dir)}
    if data:
        extra["data"] = {"path": data}
    base = build_config(task, preset, None, overrides or [], extra=extra, file_values=source_model)
    optim_extra: dict[str, Any] = {}
    if freeze:
        optim_extra["freeze"] = [*base.optim.freeze, *freeze]
    if head_only:
        optim_extra["train_only"] = [head]
    cfg = (build_config(task, preset, None, overrides or [], extra={**extra, "optim": optim_extra},
                        file_values=source_model) if optim_extra else base)

    found: dict[str, MatchReport] = {}

    def init_params(params):
        new, report = match_params(source_params, params)
        if not report.restored:
            raise CheckpointError(
                f"no parameter of {source} (task {src_task}) matches the model of task {task} by path and shape; "
                "nothing to fine-tune from"
            )
        print_report(report, source, src_step, console)
        (run_dir / "finetune_source.json").parent.mkdir(parents=True, exist_ok=True)
        (run_dir / "finetune_source.json").write_text(
            json.dumps({"source": str(source), "step": src_step, "task": src_task, **report.to_json()}, indent=1)
        )
        found["report"] = report
        return new

    result = train(cfg, console=console, init_params=init_params)
    return result, found.get("report")


def export_params(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Parameters and batch-norm statistics of an export (checksums, shapes and finiteness verified
    by the loader), keyed like :func:`astroflax.train.optim.flat_params`, and its manifest."""
    from astroflax.export.loader import ExportFormatError, load_export

    try:
        model = load_export(directory)
    except ExportFormatError as exc:  # the standalone loader's error: one line, exit 2, like a bad checkpoint
        raise CheckpointError(str(exc)) from None
    out: dict[str, np.ndarray] = {}
    for key, value in model.params.items():
        _, _, path = key.partition("/")  # "params/convs/0/conv/kernel" -> "convs.0.conv.kernel"
        arr = np.asarray(value)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            raise CheckpointError(f"{directory}: parameter {key!r} has non-finite values; not fine-tuning from it")
        out[path.replace("/", ".")] = arr
    return out, model.manifest


def _flat(tree: Any) -> dict[str, Any]:
    from astroflax.train.optim import flat_params

    return flat_params(jax.device_get(tree))
