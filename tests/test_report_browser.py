"""The HTML report in a real headless browser (Debian's chromium): images decode, no script or
console errors, text is escaped, and a broken image or a script error is caught."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import special

from astroflax.config import build_config
from astroflax.evaluate import calibration as cal
from astroflax.report.html import write_report
from astroflax.tasks import classify

CLASS_NAMES = ["SN Ia", "SN II", "<b>evil</b> & co", "AGN"]


def chromium_binary() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium is required for this test (apt-get install -y chromium; .ci/run installs it)"
    return path


def load_in_chromium(page: Path, tmp: Path, screenshot: Path | None = None) -> tuple[dict[str, str], str, str]:
    """Load ``page`` from disk; returns the <body> data attributes, the DOM after load and stderr."""
    cmd = [
        chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'chromium-profile'}",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--window-size=1300,2600",
    ]
    if screenshot is not None:
        cmd.append(f"--screenshot={screenshot}")
    cmd += ["--dump-dom", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:500]
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    return attrs, proc.stdout, proc.stderr


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def make_run_dir(root: Path) -> Path:
    """A run directory with every input the report reads, produced by the real writers."""
    run = root / "run"
    run.mkdir()
    cfg = build_config("transients", "quick", None, [], extra={"run_dir": str(run)})
    (run / "config.yaml").write_text(cfg.to_yaml())
    rng = np.random.default_rng(0)
    k, n_val, n_test = len(CLASS_NAMES), 600, 800
    info = {
        "class_names": CLASS_NAMES, "num_classes": k,
        "split_sizes": {"train": 3000, "val": n_val, "test": n_test},
        "class_counts": {"train": [1500, 800, 400, 300], "val": [300, 160, 80, 60], "test": [400, 213, 107, 80]},
        "max_len": 128, "positive_class": "SN Ia",
    }
    (run / "data_info.json").write_text(json.dumps(info))
    lines = []
    for step in range(10, 210, 10):
        lines.append({"step": step, "split": "train", "loss": 2.0 * np.exp(-step / 80) + 0.3, "lr": 1e-3 * (1 - step / 250),
                      "accuracy": 1 - np.exp(-step / 90), "grad_norm": 1.0, "nonfinite": 0.0})
        if step % 50 == 0:
            lines.append({"step": step, "split": "val", "val_loss": 2.1 * np.exp(-step / 90) + 0.35,
                          "val_accuracy": 0.9 - 0.6 * np.exp(-step / 90), "val_auc_snia": 0.8})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run / "train_summary.json").write_text(json.dumps({"step": 200, "total_steps": 200, "stopped_by": None,
                                                         "best_step": 200, "best_value": 0.4, "wall_time": 12.5}))

    def overconfident(n):
        z = rng.normal(size=(n, k)) * 2.0
        labels = np.array([rng.choice(k, p=p) for p in special.softmax(z, axis=1)])
        return special.softmax(3.0 * z, axis=1), labels

    val_p, val_y = overconfident(n_val)
    record = cal.fit_calibration(val_p, val_y, 200)
    cal.save_calibration(run, record)
    test_p, test_y = overconfident(n_test)
    after = cal.apply_temperature(test_p, record["temperature"])
    rep = classify.report(after, {"label": test_y}, info, run / "eval" / "test")
    rep["calibration"] = {"temperature": record["temperature"], "note": "synthetic",
                          "before": cal.calibration_metrics(test_p, test_y), "after": cal.calibration_metrics(after, test_y)}
    rep["uncertainty"] = {"methods": {"deterministic": cal.calibration_metrics(test_p, test_y),
                                      "deterministic + temperature scaling": cal.calibration_metrics(after, test_y)}}
    rep = {"task": "transients", "split": "test", "checkpoint_step": 200, **rep}
    (run / "eval" / "test.json").write_text(json.dumps(rep))
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("report"))


def test_report_renders_in_chromium(run_dir, tmp_path):
    page = write_report(run_dir)
    assert page == run_dir / "report" / "index.html"
    text = page.read_text()
    # Self-contained: no external resources of any kind.
    assert not re.search(r'(src|href)="(?!data:|#)', text), re.findall(r'(?:src|href)="[^"]{0,60}', text)[:5]
    shot = tmp_path / "report.png"
    attrs, dom, stderr = load_in_chromium(page, tmp_path, shot)
    assert attrs.get("ready") == "1", attrs
    # training curves + confusion matrix + reliability + ROC
    assert int(attrs["images-total"]) >= 4, attrs
    assert attrs["images-ok"] == attrs["images-total"], attrs
    assert attrs["js-errors"] == "0", re.search(r'<pre id="js-errors"[^>]*>(.*?)</pre>', dom, re.S)
    assert console_lines(stderr) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    # Text is escaped: the hostile class name shows up as text, never as markup.
    assert "&lt;b&gt;evil&lt;/b&gt; &amp; co" in dom and "<b>evil</b>" not in dom
    for section in ("config", "data", "training", "evaluation", "calibration", "uncertainty", "checklist"):
        assert f'id="{section}"' in dom
    assert "T = 2.9" in dom or "T = 3" in dom  # the fitted temperature of the 3x overconfident set
    checklist = dom[dom.index('id="checklist"'):]
    assert ("<table" in checklist.split("</section>")[0] or "not available" in checklist
            or "the checklist failed" in checklist)


def test_broken_image_and_script_errors_are_caught(run_dir, tmp_path):
    """The checks above can fail: a corrupt PNG and a script error are both reported."""
    broken = tmp_path / "broken_run"
    shutil.copytree(run_dir, broken)
    (broken / "eval" / "test" / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    page = write_report(broken)
    page.write_text(page.read_text().replace("</main>", "<script>undefined_function_call();</script></main>"))
    attrs, _, stderr = load_in_chromium(page, tmp_path)
    assert int(attrs["images-ok"]) == int(attrs["images-total"]) - 1, attrs
    assert int(attrs["js-errors"]) >= 2, attrs  # the image error and the ReferenceError
    assert any("undefined_function_call" in line for line in console_lines(stderr)), stderr[-2000:]


def test_missing_figure_is_a_visible_note_not_a_broken_image(run_dir, tmp_path):
    moved = tmp_path / "moved_run"
    shutil.copytree(run_dir, moved)
    (moved / "eval" / "test" / "confusion_matrix.png").unlink()
    rep = json.loads((moved / "eval" / "test.json").read_text())
    rep["figures"]["confusion_matrix"] = str(tmp_path / "elsewhere" / "confusion_matrix.png")
    (moved / "eval" / "test.json").write_text(json.dumps(rep))
    text = write_report(moved).read_text()
    assert "figure test: confusion_matrix missing" in text
    assert text.count("<img ") == 3  # training curves, reliability, roc
