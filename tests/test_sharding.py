"""Data parallelism: 4 forced host devices give the same losses as 1 device."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, set_args

pytestmark = pytest.mark.slow  # two training processes (1 and 4 devices)

# The smallest photoz model: data parallelism does not depend on the model, and this one starts
# and compiles in a few seconds (the transformer took 63 s for the two processes).
OVERRIDES = ["model.hidden=[16]", "model.head=gaussian", "train.batch_size=64", "train.eval_batch_size=512",
             "train.steps=20", "train.eval_every=20", "train.log_every=1", "schedule.warmup_steps=2",
             "train.progress=false"]


def losses(run_dir, devices: int, extra: tuple[str, ...] = ()) -> list[float]:
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    proc = run_cli("train", "photoz", "--run-dir", str(run_dir), "--no-evaluate", *set_args([*OVERRIDES, *extra]),
                   env=env, check=True)
    assert f"on {devices} device(s)" in proc.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def test_four_devices_match_one(tmp_path):
    one = losses(tmp_path / "one", 1)
    four = losses(tmp_path / "four", 4)  # the split held on every device, indices split
    streamed = losses(tmp_path / "streamed", 4, ("train.device_data_max_mb=0",))  # each batch split and copied
    assert len(one) == len(four) == len(streamed) == 20
    for step, (a, b, c) in enumerate(zip(one, four, streamed), start=1):
        # relative 1e-5, with a floor of 1: the Gaussian NLL crosses zero during training
        assert abs(a - b) <= 1e-5 * max(abs(a), 1.0), f"step {step}: 1 device {a} vs 4 devices {b}"
        assert abs(a - c) <= 1e-5 * max(abs(a), 1.0), f"step {step}: 1 device {a} vs 4 devices streamed {c}"
    assert one[-1] != one[0]  # it trained
