"""``astroflax data``: convert a task's data into a streamed on-disk dataset, and describe one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from astroflax.cli.common import ConfigFile, Overrides, Preset, TaskName, err, wide_out
from astroflax.errors import ConfigError

data_app = typer.Typer(no_args_is_help=True, help="Converted datasets: sharded ArrayRecord files + a manifest, streamed by Grain.")


def data_path_override(task: str, path: str) -> str:
    """``--data PATH`` for a task's own readers: ``data.path`` (absolute, so that ``--resume``
    and ``evaluate`` from another directory read the same files)."""
    from astroflax.tasks import get_task

    t = get_task(task)
    if "path" not in t.data_config.model_fields:
        raise ConfigError(f"--data {path}: task {task!r} reads no user files yet; give a dataset converted with "
                          "`astroflax data convert`, or use its bundled data")
    return f"data.path={Path(path).absolute()}"


@data_app.command("convert")
def convert(
    task: TaskName,
    out: Annotated[Path, typer.Option("--out", "-o", help="new dataset directory")],
    input_path: Annotated[Optional[str], typer.Option("--input", "-i", help="the user's data (the task's data.path); "
                                                      "default: the task's bundled data")] = None,
    preset: Preset = None,
    config: ConfigFile = None,
    overrides: Overrides = [],
    shard_mb: Annotated[int, typer.Option("--shard-mb", min=1, help="target shard size in MB")] = 256,
) -> None:
    """Validate TASK's data once and write it as sharded ArrayRecord files with a manifest
    (schema, shards, row counts, content hash, normalisation statistics)."""
    from astroflax.cli.common import require_file
    from astroflax.config import build_config
    from astroflax.data.store import convert as convert_data

    require_file(config, "--config")
    more = [data_path_override(task, input_path)] if input_path else []
    cfg = build_config(task, preset, config, [*overrides, *more])
    manifest = convert_data(cfg, out, shard_bytes=shard_mb * 1024 * 1024, input_path=input_path)
    rows = ", ".join(f"{k} {v['rows']:,}" for k, v in manifest["splits"].items())
    err.print(f"Wrote {out}: {rows} rows; version {manifest['content_hash']}. Train on it with:\n"
              f"  astroflax train {task} --data {out}", highlight=False)


@data_app.command("info")
def info(directory: Annotated[Path, typer.Argument(help="a converted dataset directory")]) -> None:
    """Print a converted dataset's manifest: task, splits, shards, schema, version, statistics."""
    from rich.table import Table

    from astroflax.data.store import read_manifest

    m = read_manifest(directory)
    console = wide_out()
    console.print(f"[bold]{directory}[/]: task {m['task']}, format {m['format']}, version {m['content_hash']}, "
                  f"created {m.get('created')}")
    src = m.get("source") or {}
    if src.get("input"):
        console.print(f"source: {src['input']}")
    splits = Table(title="splits")
    for h in ("split", "rows", "shards", "MB"):
        splits.add_column(h)
    for name, s in m["splits"].items():
        splits.add_row(name, f"{s['rows']:,}", str(len(s["shards"])), f"{s['bytes'] / 1e6:.1f}")
    console.print(splits)
    schema = Table(title="schema (per example)")
    for h in ("field", "dtype", "shape", "mean", "std", "min", "max"):
        schema.add_column(h)
    for f in m["schema"]:
        st = (m.get("normalisation") or {}).get(f["name"], {})
        cell = lambda k: "" if st.get(k) is None else f"{st[k]:.4g}"  # noqa: E731
        schema.add_row(f["name"], f["dtype"], str(tuple(f["shape"])), cell("mean"), cell("std"), cell("min"), cell("max"))
    console.print(schema)


@data_app.command("example")
def example(
    task: TaskName,
    out: Annotated[Path, typer.Option("--out", "-o", help="new directory for the example files")],
) -> None:
    """Write example user data for TASK (made from the bundled data, in the task's user format),
    and print the command that trains on it."""
    from astroflax.data.examples import write_example

    path, settings = write_example(task, out)
    err.print(f"Wrote example {task} data under {out}. Train on it with:\n"
              f"  astroflax train {task} --data {path} {' '.join(settings)}", highlight=False)
