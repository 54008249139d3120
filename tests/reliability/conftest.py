"""Makes the helpers of ``tests/conftest.py`` importable from this folder as ``conftest``, and
trains the tiny runs that ``predict`` needs (once per test session, shared by xdist workers).

Test modules here and in ``tests/`` import ``from conftest import run_cli, ...``. pytest loads
each folder's ``conftest.py`` as the module ``conftest`` (replacing the previous one), so this
file re-exports everything public of the parent one, loaded under another module name.
"""

from __future__ import annotations

import fcntl
import importlib.util
import io
import sys
from pathlib import Path

import pytest

_PARENT = Path(__file__).resolve().parents[1] / "conftest.py"
_NAME = "astroflax_tests_conftest"

if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, _PARENT)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)

from astroflax_tests_conftest import *  # noqa: E402,F401,F403
from astroflax_tests_conftest import REPO, TINY_TRANSIENTS, run_cli, run_main, set_args  # noqa: E402,F401

# The smallest configs that train in seconds: a predict needs a checkpoint, not a good model.
TINY_COMMON = ["train.steps=2", "train.eval_every=2", "train.log_every=2", "checkpoint.every=2",
               "schedule.warmup_steps=1", "train.progress=false"]
TINY_RUNS: dict[str, list[str]] = {
    "photoz": ["model.hidden=[8]", "model.head=gaussian", "train.batch_size=64", "train.eval_batch_size=512"],
    "transients": ["data.max_len=16", "model.d_model=8", "model.num_heads=1", "model.num_layers=1",
                   "train.batch_size=16", "train.eval_batch_size=256"],
    "spectra": ["data.num_pixels=256", "data.num_train=64", "data.val_per_type=2", "data.test_per_snr=1",
                "model.channels=[4,8]", "model.hidden=8", "train.batch_size=32", "train.eval_batch_size=64"],
    "morphology": ["data.image_size=32", "data.train_per_class=8", "data.val_per_class=4", "data.test_per_class=2",
                   "data.cache=false", "model.widths=[4,8]", "train.batch_size=16"],
    "variables": ["data.n_per_class=10", "data.max_len=16", "model.d_model=8", "model.num_heads=1",
                  "model.num_layers=1", "model.num_inducing=4", "train.batch_size=16", "train.eval_batch_size=256"],
    "vae": ["model.latent_dim=2", "model.hidden=[8]", "model.eval_importance_samples=2", "train.batch_size=64",
            "train.eval_batch_size=1000", "checkpoint.async_save=false"],
}


def _shared_root(tmp_path_factory) -> Path:
    """A directory all xdist workers of this session share (the parent of each worker's basetemp)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if base.name.startswith("popen-gw") else base) / "tiny-runs"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``tiny_run(task) -> run directory``: a 2-step run of ``task``, trained once per session
    (a file lock makes the other xdist workers wait for it and reuse it)."""
    root = _shared_root(tmp_path_factory)
    root.mkdir(parents=True, exist_ok=True)

    def get(task: str) -> Path:
        run_dir = root / task
        with open(root / f"{task}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (run_dir / "TRAINED").is_file():
                from rich.console import Console

                from astroflax.config import build_config
                from astroflax.train.loop import train

                cfg = build_config(task, "quick", None, TINY_RUNS[task] + TINY_COMMON,
                                   extra={"run_dir": str(run_dir)})
                train(cfg, resume=None, console=Console(file=io.StringIO()))
                (run_dir / "TRAINED").write_text("ok\n")
        return run_dir

    return get
