"""A task from outside the package: the three files of docs/adding_a_task.md, installed as a
distribution with an ``astroflax.tasks`` entry point, trained and used through the real CLI."""

from __future__ import annotations

import csv
import json
import re
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, run_cli

DOC = REPO / "docs" / "adding_a_task.md"


def doc_files() -> dict[str, str]:
    """``{relative path: text}`` of every fenced block whose first line is ``# file: PATH``."""
    blocks = re.findall(r"```[a-z]*\n# file: (\S+)\n(.*?)```", DOC.read_text(), re.S)
    return {path: text for path, text in blocks}


def install_as_distribution(files: dict[str, str], site: Path) -> None:
    """What ``pip install`` leaves behind, without a build: the package on a path and a
    ``.dist-info`` whose ``entry_points.txt`` comes from the example's pyproject.toml."""
    project = tomllib.loads(files["pyproject.toml"])["project"]
    for rel, text in files.items():
        if rel != "pyproject.toml":
            (site / rel).parent.mkdir(parents=True, exist_ok=True)
            (site / rel).write_text(text)
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    files = doc_files()
    assert set(files) == {"pyproject.toml", "leavitt/__init__.py", "leavitt/presets.yaml"}  # three files, as promised
    site = tmp_path_factory.mktemp("site")
    install_as_distribution(files, site)
    return {"PYTHONPATH": str(site)}


def test_plugin_task_is_listed_and_configurable(plugin_env):
    proc = run_cli("tasks", env=plugin_env, check=True)
    assert "leavitt" in proc.stdout and "transients" in proc.stdout
    shown = run_cli("config", "show", "leavitt", "--preset", "quick", env=plugin_env, check=True).stdout
    assert "n_stars: 3000" in shown and "steps: 600" in shown
    bad = run_cli("config", "show", "leavitt", "--set", "data.n_star=5", env=plugin_env)
    assert bad.returncode == 2 and "data.n_star" in bad.stderr and "Traceback" not in bad.stderr
    # Without the distribution on the path the task does not exist.
    missing = run_cli("config", "show", "leavitt")
    assert missing.returncode == 2 and "unknown task 'leavitt'" in missing.stderr


def test_plugin_task_trains_evaluates_and_predicts(plugin_env, tmp_path):
    run_dir = tmp_path / "run"
    run_cli("train", "leavitt", "--preset", "quick", "--run-dir", str(run_dir), "--set", "train.progress=false",
            env=plugin_env, check=True)
    report = json.loads((run_dir / "eval" / "test.json").read_text())
    assert report["task"] == "leavitt"
    assert report["rmse"] < 0.3  # the intrinsic scatter is 0.2 mag
    assert 0.55 < report["coverage_68"] < 0.8
    page = (run_dir / "report" / "index.html").read_text()
    assert "rmse" in page and "&lt;= 0.25" in page  # the task's declared target is in the summary
    inputs = tmp_path / "cepheids.csv"
    inputs.write_text("id,log_period,colour\n1,0.5,0.58\n2,1.5,0.83\n")
    out = tmp_path / "m_v.csv"
    run_cli("predict", str(run_dir), "--input", str(inputs), "--output", str(out), env=plugin_env, check=True)
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == ["1", "2"]
    m_v = [float(r["m_v_mean"]) for r in rows]
    # Leavitt law: M_V = -2.43 (log P - 1) - 4.05 -> -2.84 at log P = 0.5, -5.27 at 1.5
    assert m_v[0] == pytest.approx(-2.835, abs=0.25) and m_v[1] == pytest.approx(-5.265, abs=0.25)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,period\n1,3.0\n")
    proc = run_cli("predict", str(run_dir), "--input", str(bad), "--output", str(tmp_path / "x.csv"), env=plugin_env)
    assert proc.returncode == 2 and "missing column(s) colour, log_period" in proc.stderr
