"""``digits``: a small CNN classifier of the bundled MNIST digits; the judge of ``vae`` samples.

Data: the 5,000 bundled digits (:mod:`astroflax.data.digits`) as grey levels / 255, with the
fixed split (3,600 train / 400 val / 1,000 test). Model:
:class:`~astroflax.models.vae.DigitClassifier`. Loss: cross-entropy (the classification
builder's).

Its second use: the ``vae`` task measures the *conditional accuracy* of generated digits
with a CNN trained independently of the VAE (own architecture, grey-level input, own seed).
:func:`judge` trains that CNN through the general trainer into the cache and reuses it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from astroflax.data import digits
from astroflax.data.cache import content_hash
from astroflax.data.splits import indices_from_codes
from astroflax.errors import AstroflaxError
from astroflax.models.vae import DigitClassifier
from astroflax.tasks.base import Dataset, Section
from astroflax.tasks.builders import classification_task

JUDGE_FORMAT = 1  # bump when judge() trains differently under the same config (invalidates the cache)


class DigitsData(Section):
    """No options: the bundled digits as grey levels / 255."""


class DigitsModel(Section):
    channels: list[Annotated[int, Field(ge=1)]] = Field([16, 32], min_length=2, max_length=2,
                                                        description="output channels of the two 3x3 conv blocks")
    hidden: int = Field(128, ge=1, description="width of the dense layer after the conv blocks")


def _arrays(images: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    grey = digits.flat_pixels(images, "none").reshape(-1, *digits.IMAGE_SHAPE)
    return {"image": grey, "label": labels.astype(np.int32), "row": ids.astype(np.int64)}


def load_data(cfg) -> Dataset:
    d = digits.load_bundled_mnist()
    splits = {name: _arrays(d["image"][idx], d["label"][idx], d["source_row"][idx])
              for name, idx in indices_from_codes(d["split"]).items()}
    info = {
        "class_names": digits.CLASS_NAMES,
        "num_classes": digits.NUM_CLASSES,
        "image_shape": list(digits.IMAGE_SHAPE),
        "data_version": str(d["version"]),
        "split_sizes": {k: len(v["label"]) for k, v in splits.items()},
    }
    return Dataset(splits=splits, info=info, version=f"mnist5k-{d['version']}-grey")


def build_model(cfg, info: dict, rngs) -> DigitClassifier:
    return DigitClassifier(info["num_classes"], channels=tuple(cfg.model.channels), hidden=cfg.model.hidden, rngs=rngs)


def make_logits_fn(cfg, info: dict) -> Callable[..., Any]:
    return lambda model, batch, train, rng: model(batch["image"])


def load_inputs(cfg, info: dict, path: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Digits in the MNIST CSV layout (784 pixels 0-255, then a label, which is ignored here)."""
    images, labels = digits.read_digit_csv(path)
    ids = np.arange(1, len(labels) + 1, dtype=np.int64)  # 1-based row numbers
    return _arrays(images, labels, ids), ids


TASK = classification_task(
    "digits",
    "small CNN classifier of 5,000 real MNIST digits (the judge of vae samples)",
    data_config=DigitsData,
    model_config=DigitsModel,
    load_data=load_data,
    build_model=build_model,
    make_logits_fn=make_logits_fn,
    load_inputs=load_inputs,
    id_name="row",
    host_keys=("row",),
    targets={"accuracy": (">=", 0.96)},  # quick: 0.970 on the 1,000 test digits
)


def judge(steps: int = 800, seed: int = 0, note_dir: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """The CNN that judges generated digits (a :class:`~astroflax.runs.LoadedRun`) and a note on
    it: settings, test accuracy, ``cached`` (True when it was already trained).

    Trained once per (steps, seed, data) with the ``quick`` preset through the general trainer
    into ``cache_dir()/vae/judge-<hash>``, on the training split (the test split scores it),
    then reused: every ``vae`` evaluation with the same settings is judged by the same weights.
    They are the last weights (the schedule decays to its end), not the best on validation.
    ``judge.json`` is written last and marks a complete judge. With ``note_dir`` the note is
    also written to ``note_dir/classifier.json``: the record of which judge scored a run.
    """
    from astroflax.config import build_config
    from astroflax.runs import load_run
    from astroflax.runtime import cache_dir

    cfg = build_config("digits", "quick", extra={"train": {"steps": int(steps), "seed": int(seed),
                                                            "eval_every": int(steps), "progress": False}})
    data_version = str(digits.load_bundled_mnist()["version"])
    run_dir = cache_dir() / "vae" / f"judge-{content_hash(cfg.model_dump(mode='json'), data_version, JUDGE_FORMAT)}"
    cached = (run_dir / "judge.json").is_file()
    if cached:
        run = load_run(run_dir, "latest")
    else:
        cfg.run_dir = str(run_dir)
        run = _train_judge(cfg, data_version)
    note = {**json.loads((run_dir / "judge.json").read_text()), "cached": cached}
    if note_dir is not None:
        Path(note_dir).mkdir(parents=True, exist_ok=True)
        (Path(note_dir) / "classifier.json").write_text(json.dumps(note, indent=1))
    return run, note


def _train_judge(cfg, data_version: str) -> Any:
    """Train (or finish training) the judge in ``cfg.run_dir``, score it on the test split and
    write ``judge.json`` atomically."""
    from rich.console import Console

    from astroflax.runs import load_run
    from astroflax.train.loop import train

    run_dir = Path(cfg.run_dir)
    result = train(cfg, console=Console(stderr=True, quiet=True))
    if result.stopped_by not in (None, "early_stopping"):  # a signal: never mark a half-trained judge complete
        raise AstroflaxError(f"training of the vae judge in {run_dir} stopped by {result.stopped_by} at step "
                             f"{result.step}; evaluate again to finish it")
    dataset = TASK.load_data(cfg)
    test = dataset.split("test")
    run = load_run(run_dir, "latest")
    probs = run.predict(test)
    m = cfg.model
    note = {
        "steps": cfg.train.steps, "seed": cfg.train.seed, "data_version": data_version,
        "architecture": f"DigitClassifier(conv{m.channels[0]}-conv{m.channels[1]}-fc{m.hidden})",
        "input": "grey levels / 255",
        "test_accuracy": float(np.mean(probs.argmax(-1) == test["label"])),
        "num_train": dataset.info["split_sizes"]["train"], "num_test": dataset.info["split_sizes"]["test"],
        "run_dir": str(run_dir),
    }
    tmp = run_dir / f"judge.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(note, indent=1))
    os.replace(tmp, run_dir / "judge.json")
    return run
