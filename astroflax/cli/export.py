"""``astroflax export``: a checkpoint as a self-contained serving directory (docs/export_format.md)."""

from __future__ import annotations

from rich.table import Table

from astroflax.cli.common import Checkpoint, RunDir, out_option, wide_out


def export(
    run_dir: RunDir,
    out_dir: out_option("export directory (default RUN_DIR/export)", optional=True) = None,
    checkpoint: Checkpoint = "best",
) -> None:
    """Export a checkpoint for serving: StableHLO (jax.export, symbolic batch) + params.npz + manifest.json."""
    from astroflax.export.writer import export_run

    console = wide_out()
    target = out_dir or run_dir / "export"
    manifest = export_run(run_dir, target, checkpoint)
    table = Table(title=f"Exported {manifest['task']} step {manifest['source']['checkpoint_step']} to {target}",
                  title_justify="left", header_style="bold")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    table.add_column("sha256")
    for name, entry in manifest["files"].items():
        table.add_row(name, f"{entry['bytes']:,}", entry["sha256"][:16] + "…")
    console.print(table)
    inputs = ", ".join(f"{s['name']} {s['dtype']}{s['shape']}" for s in manifest["inputs"])
    console.print(f"inputs: {inputs}\noutput: {manifest['output']['dtype']}{manifest['output']['shape']} "
                  f"({manifest['output']['kind']}); {manifest['params']['count']:,} parameters")
