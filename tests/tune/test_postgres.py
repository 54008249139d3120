"""``astroflax tune --storage postgresql://...`` against a real PostgreSQL server.

The server is started by ``postgres.postgres_server()`` (tests/tune/postgres.py) in a temporary
directory, as an unprivileged user when the tests run as root. Without the server binaries the
test fails (scripts/test.sh installs Debian's postgresql package); it does not skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import run_cli, tune_argv, write_space
from postgres import PostgresUnavailable, postgres_server

SPACE = {"optim.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}
PASSWORD = "s3cret-pw-7f3a"  # trust auth ignores it; it must never be written down or printed


@pytest.fixture(scope="module")
def pg():
    try:
        with postgres_server() as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.fail(f"PostgreSQL server not available: {exc}", pytrace=False)


def _table_rows(stdout: str) -> list[list[str]]:
    """The body rows of a rich table as lists of stripped cells (the header's borders are ┃)."""
    return [[c.strip() for c in line.strip().strip("│").split("│")] for line in stdout.splitlines()
            if line.strip().startswith("│")]


def test_two_workers_share_a_postgresql_study(tmp_path, pg):
    import optuna
    import psycopg
    from optuna.trial import TrialState

    study_dir = tmp_path / "study"
    space = write_space(tmp_path / "space.yaml", SPACE)
    url = pg.url(password=PASSWORD)
    proc = run_cli(*tune_argv(study_dir, space, "--study", "pg-photoz", "--storage", url, "--workers", "2",
                              "--trials", "4", "--pruner", "none", "--sampler", "random", "--no-evaluate",
                              # a worker with nothing to start polls every heartbeat/2 s (default 10)
                              "--heartbeat", "5"), timeout=300)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted((study_dir / "workers").glob("*.log")))
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{logs}\n--- server log\n{pg.log_tail()}"

    # The records are in PostgreSQL, not in a SQLite file of the study directory.
    assert not list(study_dir.glob("study.db*")), sorted(p.name for p in study_dir.iterdir())
    study = optuna.load_study(study_name="pg-photoz", storage=pg.sqlalchemy_url)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, [(t.number, t.state.name) for t in trials]
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    for t in trials:
        assert 1e-3 <= t.params["optim.lr"] <= 3e-2
        run_dir = study_dir / t.user_attrs["run_dir"]
        assert run_dir.is_dir() and (run_dir / "metrics.jsonl").is_file(), (t.number, t.user_attrs)
    # Both workers ran trials: they start together and each pays a JAX start-up of several seconds
    # before its first ask, while a trial takes 1-3 s; the first to ask takes trial 0 and releases
    # the ask lock as it starts training, so the other takes trial 1 (one worker running all 4
    # would need a start-up 3 trials later than the other's; not seen in repeated runs, loaded or not).
    by_worker = [(t.number, t.user_attrs["worker"], t.user_attrs["pid"]) for t in trials]
    assert {w for _, w, _ in by_worker} == {0, 1}, by_worker
    assert len({pid for _, _, pid in by_worker}) == 2, by_worker  # two worker processes, not the main one
    with psycopg.connect(pg.url()) as con:  # the same rows, read without Optuna
        (count,) = con.execute("SELECT count(*) FROM trials t JOIN studies s USING (study_id) "
                               "WHERE s.study_name = 'pg-photoz' AND t.state = 'COMPLETE'").fetchone()
    assert count == 4

    # The URL is kept without its password; the password is nowhere in the study directory or output.
    spec = json.loads((study_dir / "study.json").read_text())
    assert spec["storage"] == f"postgresql://{pg.user}:***@127.0.0.1:{pg.port}/{pg.dbname}"
    assert PASSWORD not in proc.stdout + proc.stderr
    leaked = [str(p) for p in study_dir.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    assert not leaked

    # `tune show` reads the same study from PostgreSQL: the best trial first.
    show = run_cli("tune", "show", str(study_dir), "--storage", url, env={"COLUMNS": "200"})
    assert show.returncode == 0, f"{show.stdout}\n{show.stderr}"
    assert "4 complete" in show.stderr
    rows = _table_rows(show.stdout)
    assert rows and rows[0][0].split()[0] == str(study.best_trial.number), show.stdout
    assert PASSWORD not in show.stdout + show.stderr
    # By name, from another machine's point of view: no study directory here, only the storage.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    by_name = subprocess.run([sys.executable, "-m", "astroflax", "tune", "show", "pg-photoz", "--storage", url],
                             capture_output=True, text=True, timeout=120, cwd=elsewhere, env={**os.environ, "COLUMNS": "200"})
    assert by_name.returncode == 0, by_name.stderr
    rows = _table_rows(by_name.stdout)
    assert len(rows) == 4 and rows[0][0] == str(study.best_trial.number), by_name.stdout
    # Without --storage, `show` cannot know the password and says so in one line.
    again = run_cli("tune", "show", str(study_dir))
    assert again.returncode == 2, f"{again.stdout}\n{again.stderr}"
    assert "--storage" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("auth", ["nobody", f"nobody:{PASSWORD}"], ids=["no-password", "password"])
def test_unreachable_postgresql_storage_is_one_line_error(tmp_path, auth):
    study_dir = tmp_path / "study"
    space = write_space(tmp_path / "space.yaml", SPACE)
    proc = run_cli(*tune_argv(study_dir, space, "--storage", f"postgresql://{auth}@127.0.0.1:1/nonexistent",
                              "--trials", "1"), timeout=120)  # port 1: nothing listens, refused at once
    assert proc.returncode == 2, f"{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --storage "), proc.stderr
    assert "127.0.0.1:1/nonexistent" in lines[0] and "Traceback" not in proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
    assert not (study_dir / "study.json").exists()  # nothing was created: the same command can run again
    assert not list(study_dir.glob("study.db*"))
