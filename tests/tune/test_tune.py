"""``astroflax tune`` on real Optuna, real training runs and a real SQLite storage: the search
space is validated like the config, a grid finds the known-best corner, the median pruner
prunes, the study's best value is the best trial's own metrics, the best config trains, and an
ensemble can take the top trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import TINY_PHOTOZ, run_main, tune_argv, write_space

from astroflax.config import build_config, load_yaml_file
from astroflax.tune.study import StudySpec, storage_url


def open_study(study_dir: Path) -> optuna.Study:
    spec = StudySpec.load(study_dir)
    return optuna.load_study(study_name=spec.name, storage=storage_url(study_dir, None))


def run_metric(study_dir: Path, trial: optuna.trial.FrozenTrial, metric: str = "val_loss") -> list[float]:
    """The trial's validation values of ``metric`` as its run directory's metrics.jsonl has them."""
    lines = (study_dir / trial.user_attrs["run_dir"] / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)[metric] for line in lines if json.loads(line).get("split") == "val"]


# ------------------------------------------------------------------- search space


@pytest.mark.parametrize("space, expected", [
    ({"optim.lrr": [1e-3, 1e-2]}, "key 'optim.lrr' is not a config key of task 'photoz' (did you mean 'optim.lr'?)"),
    ({"optim.lr": {"type": "float", "low": 1e-2, "high": 1e-3}}, "key 'optim.lr': low 0.01 > high 0.001"),
    ({"optim.lr": {"type": "float", "low": 0.0, "high": 1e-2, "log": True}}, "log: true needs low > 0"),
    ({"optim.lr": {"type": "float", "low": 1e-3}}, "needs 'low' and 'high'"),
    ({"optim.lr": {"type": "gaussian", "low": 1e-3, "high": 1e-2}}, "key 'optim.lr': type = 'gaussian': Input should be 'float', 'int' or 'categorical'"),
    ({"train.batch_size": {"type": "int", "low": -4, "high": 64}}, "train.batch_size = -4 is refused by the config"),
    ({"model.head": ["gaussian", "banana"]}, "model.head = 'banana' is refused by the config"),
    ({"optim.lr": [1e-3], "model.num_components": {"type": "int", "low": 2, "high": 4, "when": {"model.hed": "mixture"}}},
     "'when' names 'model.hed', which is not a config key"),
])
def test_a_bad_search_space_is_one_line_naming_the_key(tmp_path, capsys, space, expected):
    path = write_space(tmp_path / "space.yaml", space)
    code, _, err = run_main(tune_argv(tmp_path / "study", path, "--trials", "2"), capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: search space {path}: "), err
    assert expected in lines[0], lines[0]
    assert not (tmp_path / "study" / "study.json").exists()  # nothing started


def test_grid_refuses_a_continuous_range_and_bad_options(tmp_path, capsys):
    path = write_space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2}})
    code, _, err = run_main(tune_argv(tmp_path / "s", path, "--sampler", "grid"), capsys)
    assert code == 2 and "error: --sampler grid: key 'optim.lr' is a continuous range" in err, err
    code, _, err = run_main(tune_argv(tmp_path / "s", path, "--sampler", "bayes"), capsys)
    assert code == 2 and "error: --sampler 'bayes': choose from tpe, random, grid, cmaes" in err, err
    code, _, err = run_main(tune_argv(tmp_path / "s", path, "--metric", "test_loss"), capsys)
    assert code == 2 and "tuned on the validation split" in err, err


def test_conditional_keys_are_sampled_only_when_their_condition_holds(tmp_path):
    from astroflax.tune.space import SearchSpace

    cfg = build_config("photoz", "quick", None, TINY_PHOTOZ)
    space = SearchSpace.from_dict({
        "model.head": ["gaussian", "mixture"],
        "model.num_components": {"type": "int", "low": 2, "high": 5, "when": {"model.head": "mixture"}},
        "model.hidden": [[8], [16, 16]],
    }, cfg)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = []
    for _ in range(12):
        trial = study.ask()
        values = space.suggest(trial, cfg)
        seen.append(values)
        study.tell(trial, 0.0)
    for v in seen:
        assert ("model.num_components" in v) == (v["model.head"] == "mixture"), v
        assert v["model.hidden"] in ([8], [16, 16])  # lists round-trip through Optuna's categorical
    assert {v["model.head"] for v in seen} == {"gaussian", "mixture"}


# -------------------------------------------------------------------------- a grid


@pytest.fixture(scope="module")
def grid_study(tmp_path_factory):
    """A 2 x 2 grid where the best corner is known: more steps at the larger learning rate."""
    root = tmp_path_factory.mktemp("grid")
    space = write_space(root / "space.yaml", {"train.steps": [20, 60], "optim.lr": [1e-4, 3e-2]})
    study_dir = root / "study"
    proc = subprocess.run([sys.executable, "-m", "astroflax", *tune_argv(study_dir, space, "--sampler", "grid",
                                                                        "--pruner", "none", "--trials", "10")],
                          capture_output=True, text=True, timeout=600, cwd=root)
    return study_dir, proc


def test_grid_runs_every_point_and_finds_the_known_best_corner(grid_study):
    study_dir, proc = grid_study
    assert proc.returncode == 0, proc.stderr
    study = open_study(study_dir)
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)  # capped at the grid
    assert {(t.params["train.steps"], t.params["optim.lr"]) for t in trials} == {(20, 1e-4), (20, 3e-2), (60, 1e-4),
                                                                                  (60, 3e-2)}
    assert study.best_trial.params == {"train.steps": 60, "optim.lr": 3e-2}
    # The value of every trial is its run's best validation loss, as the run directory logged it.
    for t in trials:
        assert t.value == min(run_metric(study_dir, t)), t.number
        run_dir = study_dir / t.user_attrs["run_dir"]
        cfg = load_yaml_file(run_dir / "config.yaml")
        assert cfg["train"]["steps"] == t.params["train.steps"] and cfg["optim"]["lr"] == t.params["optim.lr"]
        assert cfg["study"] == f"{study_dir.absolute()}#{t.number}"
        assert (run_dir / "report" / "index.html").is_file() and (run_dir / "checkpoints").is_dir()
    # One line per trial, and the test figures of the best trial (chosen on validation only).
    assert sum(line.startswith("trial ") for line in proc.stderr.splitlines()) == 4, proc.stderr
    assert f"test split, best trial {study.best_trial.number}:" in proc.stderr
    assert (study_dir / study.best_trial.user_attrs["run_dir"] / "eval" / "test.json").is_file()


def test_the_best_config_trains_with_train_config(grid_study):
    study_dir, _ = grid_study
    best = open_study(study_dir).best_trial
    path = study_dir / "best_config.yaml"
    assert path.read_text().startswith(f"# Best config of study {study_dir}")
    cfg = build_config("photoz", None, path, [])
    assert cfg.train.steps == 60 and cfg.optim.lr == 3e-2 and cfg.run_dir is None
    assert cfg.study == f"{study_dir.absolute()}#{best.number}"
    trial_cfg = load_yaml_file(study_dir / best.user_attrs["run_dir"] / "config.yaml")
    ours = cfg.model_dump(mode="json")
    for key in ("data", "model", "optim", "schedule", "checkpoint"):
        assert ours[key] == trial_cfg[key], key


def test_tune_show_lists_the_best_trials(grid_study, capsys):
    study_dir, _ = grid_study
    best = open_study(study_dir).best_trial
    code, out, err = run_main(["tune", "show", str(study_dir), "--top", "2", "--html"], capsys)
    assert code == 0, err
    assert "Trials: 4 complete" in err
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and rows[0].split("│")[1].strip() == str(best.number), out
    assert f"{best.value:.5g}" in rows[0]
    code, _, err = run_main(["tune", "show", str(study_dir / "nope")], capsys)
    assert code == 2 and "no such study directory" in err


def test_the_study_report_renders_in_a_browser(grid_study, tmp_path):
    from conftest import load_in_chromium

    study_dir, _ = grid_study
    page = study_dir / "report" / "index.html"
    attrs, dom, _ = load_in_chromium(page, tmp_path)
    assert attrs.get("ready") == "1" and attrs.get("js-errors") == "0", attrs
    assert int(attrs["images-total"]) == 5 and attrs["images-ok"] == attrs["images-total"], attrs  # all five plots
    for section in ("summary", "plots", "trials", "space"):
        assert f'id="{section}"' in dom
    best = open_study(study_dir).best_trial
    assert f"best: trial {best.number}" in dom
    assert f'href="../trials/{best.number:04d}/report/index.html"' in dom
    assert (study_dir / "trials" / f"{best.number:04d}" / "report" / "index.html").is_file()


def test_an_ensemble_takes_the_top_trials(grid_study, tmp_path, capsys):
    study_dir, _ = grid_study
    study = open_study(study_dir)
    ranked = sorted((t for t in study.get_trials()), key=lambda t: (t.value, t.number))
    code, _, err = run_main(["ensemble", "photoz", "--from-study", str(study_dir), "-n", "2",
                             "--run-dir", str(tmp_path / "ens"), "--no-evaluate"], capsys)
    assert code == 0, err
    spec = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert spec["from_study"]["trials"] == [t.number for t in ranked[:2]]
    for name, t in zip(spec["members"], ranked[:2]):
        assert load_yaml_file(tmp_path / "ens" / name / "config.yaml")["optim"]["lr"] == t.params["optim.lr"]
    code, _, err = run_main(["ensemble", "photoz", "--from-study", str(study_dir), "-n", "9",
                             "--run-dir", str(tmp_path / "ens2")], capsys)
    assert code == 2 and "has only 4 complete trial(s)" in err


def test_the_checklist_says_whether_a_config_was_tuned(grid_study):
    from astroflax.diagnostics.checklist import hyperparameters_tuned

    study_dir, _ = grid_study
    best = open_study(study_dir).best_trial
    item = hyperparameters_tuned(f"{study_dir.absolute()}#{best.number}")
    assert item["status"] == "pass" and item["value"]["trial"] == best.number
    assert item["link"] == str((study_dir / "report" / "index.html").resolve())
    assert hyperparameters_tuned(None)["status"] == "fail"


# ----------------------------------------------------------------- TPE and pruning


def test_tpe_with_the_median_pruner_prunes_and_reports_the_best_trials_own_metric(tmp_path, capsys):
    space = write_space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 1e-5, "high": 3e-2, "log": True}})
    study_dir = tmp_path / "study"
    code, _, err = run_main(tune_argv(study_dir, space, "--trials", "6", "--no-evaluate",
                                      overrides=["train.steps=80"]), capsys)
    assert code == 0, err
    study = open_study(study_dir)
    states = [t.state for t in study.get_trials()]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1, states
    assert states.count(optuna.trial.TrialState.COMPLETE) + states.count(optuna.trial.TrialState.PRUNED) == 6
    assert study.get_trials()[0].user_attrs.get("baseline") is True  # trial 0 is the config as given
    assert study.get_trials()[0].params["optim.lr"] == build_config("photoz", "quick", None, TINY_PHOTOZ).optim.lr
    best = study.best_trial
    assert study.best_value == min(run_metric(study_dir, best))
    for t in study.get_trials():
        if t.state == optuna.trial.TrialState.PRUNED:
            # a pruned trial stopped at its last report, checkpointed there, short of 80 steps
            last = max(t.intermediate_values)
            assert last < 80 and t.user_attrs["steps"] == last
            logged = run_metric(study_dir, t)
            assert logged[-1] == t.intermediate_values[last]
            assert (study_dir / t.user_attrs["run_dir"] / "checkpoints" / str(last)).is_dir()
    # Intermediate values are the run's validation losses at every evaluation.
    assert list(best.intermediate_values.values()) == run_metric(study_dir, best)


def test_cmaes_with_hyperband_runs_its_trials(tmp_path, capsys):
    space = write_space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
                                                  "optim.weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2,
                                                                         "log": True}})
    study_dir = tmp_path / "study"
    code, _, err = run_main(tune_argv(study_dir, space, "--trials", "3", "--sampler", "cmaes", "--pruner", "hyperband",
                                      "--no-evaluate", "--seed", "3", overrides=["train.steps=40"]), capsys)
    assert code == 0, err
    trials = open_study(study_dir).get_trials()
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 3 and len(trials) == 3
    assert len({t.params["optim.lr"] for t in trials}) == 3  # three different points
    for t in trials:
        assert 1e-3 <= t.params["optim.lr"] <= 3e-2 and 1e-6 <= t.params["optim.weight_decay"] <= 1e-2


# ------------------------------------------------------------------------ workers


def test_two_workers_on_the_embedded_storage_run_each_trial_once(tmp_path, capsys):
    space = write_space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
                                                  "model.hidden": [[8], [16]]})
    study_dir = tmp_path / "study"
    code, _, err = run_main(tune_argv(study_dir, space, "--trials", "4", "--workers", "2", "--pruner", "none",
                                      "--sampler", "random", "--no-evaluate"), capsys)
    assert code == 0, err
    trials = open_study(study_dir).get_trials()
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), trials
    run_dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(run_dirs)) == 4
    assert sorted(p.name for p in (study_dir / "trials").iterdir()) == sorted(Path(r).name for r in run_dirs)
    for t in trials:  # each trial trained once: one start line, one run of evaluations
        log = (study_dir / t.user_attrs["run_dir"] / "train.log").read_text()
        assert log.count("Training photoz") == 1, log
        assert [r for r in run_metric(study_dir, t)] and len(run_metric(study_dir, t)) == 3
    logs = [(study_dir / "workers" / f"worker-{i}.log").read_text() for i in range(2)]
    ran = [int(log.rsplit("ran ", 1)[1].split()[0]) for log in logs]
    assert sum(ran) == 4, logs
    assert sum(line.startswith("trial ") for line in err.splitlines()) == 4, err  # tune prints each trial once


@pytest.mark.slow  # a worker is killed mid-trial; the heartbeat fails it after 3 s and the other worker retries it
def test_a_worker_killed_mid_trial_is_failed_by_the_heartbeat_and_its_trial_retried(tmp_path):
    space = write_space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}})
    study_dir = tmp_path / "study"
    argv = tune_argv(study_dir, space, "--trials", "2", "--workers", "2", "--pruner", "none", "--sampler", "random",
                     "--heartbeat", "1", "--no-evaluate", "--no-baseline",
                     # long enough that a trial is still running after its first checkpoint (a
                     # photoz step is 0.5 ms with the training split on the device)
                     overrides=["train.steps=3000", "train.eval_every=100", "train.log_every=100"])
    proc = subprocess.Popen([sys.executable, "-m", "astroflax", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    victim = None
    try:
        deadline = time.monotonic() + 240
        while victim is None and time.monotonic() < deadline:  # a running trial with a checkpoint on disk
            time.sleep(0.05)
            if not (study_dir / "study.json").exists():
                continue
            for t in open_study(study_dir).get_trials(states=(optuna.trial.TrialState.RUNNING,)):
                ckpts = study_dir / "trials" / f"{t.number:04d}" / "checkpoints"
                if "pid" in t.user_attrs and ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
                    victim = t
                    break
        assert victim is not None, "no trial reached its first checkpoint"
        os.kill(victim.user_attrs["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    trials = open_study(study_dir).get_trials()
    by_number = {t.number: t for t in trials}
    assert by_number[victim.number].state == optuna.trial.TrialState.FAIL  # failed by the heartbeat, not left running
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.COMPLETE
    retry = retries[0]
    assert retry.params == victim.params and retry.user_attrs["continued_from"] == victim.number
    assert "Resuming" in (study_dir / retry.user_attrs["run_dir"] / "train.log").read_text()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2 and not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert "ended by SIGKILL" in err


def test_a_stopped_study_resumes_and_continues_the_interrupted_trial(tmp_path):
    space = write_space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}})
    study_dir = tmp_path / "study"
    # 2,000 steps, so that trial 0 is still running when its first checkpoint appears (with the
    # training split on the device a photoz step is 0.5 ms: 400 steps ended between two polls).
    argv = tune_argv(study_dir, space, "--trials", "2", "--pruner", "none", "--no-evaluate", "--no-baseline",
                     overrides=["train.steps=2000", "train.eval_every=100", "train.log_every=100"])
    proc = subprocess.Popen([sys.executable, "-m", "astroflax", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        first = study_dir / "trials" / "0000" / "checkpoints"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (first.is_dir() and any(p.name.isdigit() for p in first.iterdir())):
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "Study stopped by SIGTERM" in err and "--resume" in err
    stopped = open_study(study_dir).get_trials()[0]
    assert stopped.state == optuna.trial.TrialState.FAIL and stopped.user_attrs["interrupted"] == "SIGTERM"
    saved = max(int(p.name) for p in first.iterdir() if p.name.isdigit())

    proc = subprocess.run([sys.executable, "-m", "astroflax", "tune", "photoz", "--study-dir", str(study_dir),
                           "--resume", "--no-evaluate"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Re-queued interrupted trial(s) 0" in proc.stderr
    trials = open_study(study_dir).get_trials()
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.params == stopped.params
    log = (study_dir / retry.user_attrs["run_dir"] / "train.log").read_text()
    assert f"from checkpoint step {saved} of 2000" in log
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 2


def test_a_finished_study_dir_is_not_overwritten(grid_study, capsys):
    study_dir, _ = grid_study
    space = write_space(study_dir.parent / "space2.yaml", {"optim.lr": [1e-3, 1e-2]})
    code, _, err = run_main(tune_argv(study_dir, space), capsys)
    assert code == 2 and "already holds a study; continue it with --resume" in err, err

