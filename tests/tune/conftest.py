"""Shared pieces of the ``astroflax tune`` tests: a tiny photoz config (a trial trains in ~1 s)
and a writer for search-space files. Test modules here import ``from conftest import ...``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

# pytest loads each folder's conftest.py as the module ``conftest``: the parent's helpers are
# loaded under another name (as tests/reliability/conftest.py does) and re-exported.
_PARENT = Path(__file__).resolve().parents[1] / "conftest.py"
_NAME = "astroflax_tests_conftest"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, _PARENT)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)

from astroflax_tests_conftest import *  # noqa: E402,F401,F403
from astroflax_tests_conftest import REPO, run_cli, run_main, set_args  # noqa: E402,F401

TINY_PHOTOZ = ["model.hidden=[8]", "model.head=gaussian", "train.batch_size=64", "train.eval_batch_size=512",
               "train.steps=60", "train.eval_every=20", "train.log_every=20", "schedule.warmup_steps=1"]


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def tune_argv(study_dir: Path, space: Path, *more: str, overrides: list[str] | None = None) -> list[str]:
    """``astroflax tune photoz`` on the tiny config, in ``study_dir``."""
    return ["tune", "photoz", "--space", str(space), "--study-dir", str(study_dir),
            *set_args(TINY_PHOTOZ + list(overrides or [])), *more]


def _browser_helpers():
    """``load_in_chromium`` of tests/test_report_browser.py (loaded by path: it is a test module)."""
    spec = importlib.util.spec_from_file_location("astroflax_tests_report_browser", REPO / "tests" / "test_report_browser.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_in_chromium(page: Path, tmp: Path):
    return _browser_helpers().load_in_chromium(page, tmp)
