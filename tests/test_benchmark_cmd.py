"""`astroflax benchmark`: the published table (astroflax/evaluate/published.py) covers every task,
its metric keys exist in a real evaluation report (one tiny photoz run), bad input fails like
`astroflax train`, and docs/benchmarks.md names every task and every published value."""

from __future__ import annotations

import json
import math
import re

import pytest
import yaml

from astroflax.evaluate.published import PUBLISHED, format_measured, lookup
from astroflax.tasks import all_tasks
from conftest import REPO, run_cli, set_args
from test_photoz import TINY as TINY_PHOTOZ

DOC = REPO / "docs" / "benchmarks.md"
FIELDS = {"metric", "label", "published", "published_text", "reference", "their_data", "data_differ", "verified"}


def _rows():
    return [(task, row) for task, rows in PUBLISHED.items() for row in rows]


def test_published_table_covers_every_registered_task():
    assert set(PUBLISHED) == set(all_tasks()), "a task without a published row (or a row for no task)"
    for task, rows in PUBLISHED.items():
        assert rows, task
    for task, row in _rows():
        assert FIELDS <= set(row) <= FIELDS | {"note"}, (task, row)
        assert all(isinstance(row[k], str) and row[k].strip() for k in FIELDS - {"published"}), (task, row)
        # The number and its printed text cannot disagree; no number at all must say why.
        if row["published"] is None:
            assert "no figure" in row["published_text"], (task, row)
        else:
            assert math.isfinite(row["published"])
            assert format(row["published"], "g") in row["published_text"], (task, row)
        # a reference names a year
        assert re.search(r"\b(19|20)\d\d\b", row["reference"]), row["reference"]


def test_benchmark_photoz_prints_measured_next_to_published(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("benchmark", "photoz", "--preset", "quick", "--run-dir", str(run_dir), *set_args(TINY_PHOTOZ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # trained through `astroflax train`'s code path: its config, its evaluation table, its report
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["preset"] == "quick" and cfg["train"]["steps"] == 30 and cfg["model"]["hidden"] == [32, 32]
    assert "Finished at step 30" in proc.stderr and "coverage_68" in proc.stdout
    assert (run_dir / "report" / "index.html").is_file()

    report = json.loads((run_dir / "eval" / "test.json").read_text())
    assert report["task"] == "photoz" and report["checkpoint_step"] == 30
    out = proc.stdout
    assert "against published figures" in out
    table = out[out.index("against published figures"):]
    assert "missing" not in table and "warning" not in proc.stderr
    for i, row in enumerate(PUBLISHED["photoz"], 1):
        value = lookup(report, row["metric"])  # KeyError: a metric key that no real report has
        assert isinstance(value, float) and math.isfinite(value), row["metric"]
        assert format_measured(value) in table, (row["metric"], value)
        assert row["published_text"] in table
        assert row["reference"].split(",")[0] in table
        assert f"#{i}" in table
    # the line saying how the data differ, and the measured value in the row of its metric
    assert "Data (#1, #2, #3): theirs: " + PUBLISHED["photoz"][0]["their_data"] in table
    assert PUBLISHED["photoz"][0]["data_differ"] in table
    nmad_row = next(line for line in table.splitlines() if line.startswith("│ 1 │"))
    assert format_measured(report["sigma_nmad"]) in nmad_row and "0.0205" in nmad_row


@pytest.mark.parametrize("args", [["nosuchtask"], ["photoz", "--preset", "bogus"]])
def test_bad_input_fails_like_train(args):
    bench = run_cli("benchmark", *args)
    train = run_cli("train", *args)
    assert bench.returncode == train.returncode == 2
    lines = bench.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), bench.stderr
    assert bench.stderr == train.stderr
    assert "Traceback" not in bench.stderr and bench.stdout == ""


def test_doc_names_every_task_and_every_published_value():
    text = DOC.read_text()
    for task in all_tasks():
        assert f"`{task}`" in text, task
    for task, row in _rows():
        assert row["published_text"] in text, (task, row["published_text"])
        assert row["reference"].split(",")[0] in text, (task, row["reference"])
    assert "astroflax benchmark" in text
    readme = (REPO / "README.md").read_text()
    assert "astroflax benchmark" in readme and "docs/benchmarks.md" in readme


def test_lookup_dotted_keys():
    report = {"a": 1.0, "targets": {"accuracy_snr_ge_20": 0.5}, "x": {"y": None}}
    assert lookup(report, "targets.accuracy_snr_ge_20") == 0.5
    assert format_measured(lookup(report, "x.y")) == "n/a"
    with pytest.raises(KeyError):
        lookup(report, "targets.nope")
    with pytest.raises(KeyError):
        lookup(report, "a.b")
