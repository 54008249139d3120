"""Pretrained models shipped with the package: predict or fine-tune without training first.

Each ``astroflax/pretrained/<task>/`` is an ``astroflax export`` directory (StableHLO function,
``params.npz`` and ``manifest.json`` with sha256 checksums, the training config, the data
constants and the calibration; ``docs/export_format.md``) plus ``MODEL_CARD.md``: what it was
trained on, with which preset, its test figures, known limits and the licence of the data.
``scripts/pretrain.py`` trains and writes them, so every shipped model can be reproduced.

An export, not a checkpoint, because it is what prediction needs (no optimiser state: a third of
the size), it is verified on load (checksums, shapes, finite values), and it loads with NumPy
(``allow_pickle=False``) and ``jax.export`` alone.
"""

from __future__ import annotations

from pathlib import Path

from astroflax.errors import ConfigError

PRETRAINED_DIR = Path(__file__).parent
MODEL_CARD = "MODEL_CARD.md"


def available() -> list[str]:
    """Tasks with a shipped pretrained model."""
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "manifest.json").is_file())


def pretrained_path(task: str) -> Path:
    """The export directory of ``task``'s pretrained model (a one-line error naming the ones there are)."""
    path = PRETRAINED_DIR / task
    if not (path / "manifest.json").is_file():
        have = available()
        raise ConfigError(f"no pretrained model for task {task!r}; pretrained models: "
                          f"{', '.join(have) if have else 'none'} (scripts/pretrain.py makes them)")
    return path
