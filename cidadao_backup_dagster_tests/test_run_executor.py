"""Runs execute their steps in the run's own process (definitions.EXECUTOR): no interpreter per check step,
while every check keeps its own evaluation and a failed blocking check still stops what depends on it.

The evidence is the run's own event log, as the UI reads it: the multiprocess executor records a
STEP_WORKER_STARTING/STEP_WORKER_STARTED pair per step and each step's events carry its worker's pid."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.definitions import EXECUTOR, build_defs
from cidadao_backup_dagster.demo import seed

REPO = Path(__file__).resolve().parents[1]
T = dg.DagsterEventType
WORKER_EVENTS = {T.STEP_WORKER_STARTING, T.STEP_WORKER_STARTED}
MULTIPROCESS = {"execution": {"config": {"multiprocess": {}}}}


def run_events(instance, run_id):
    return [r.dagster_event for r in instance.all_logs(run_id) if r.dagster_event is not None]


def step_pids(events) -> dict[str, int]:
    return {e.step_key: e.pid for e in events if e.event_type == T.STEP_START}


def run_pid(events) -> int:
    return next(e.pid for e in events if e.event_type == T.RUN_START)


# ------------------------------------------------------------------------------- the operator's CLI run


@pytest.fixture
def backup_env(make_database, tmp_path):
    url = make_database("cbd_exec")
    seed(PgConnection.from_url(url), investigations=50)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if k not in ("OFFSITE_STORAGE_URL", "BACKUP_SOURCES_FILE")}
    env.update(
        DAGSTER_HOME=str(home),
        DATABASE_URL=url,
        BACKUP_STORAGE_URL=f"file://{tmp_path}/backups",
        BACKUP_EXPECTED_SIZE_MB="off",
    )
    return env


def test_dg_launch_backup_runs_every_step_in_the_run_process(backup_env, monkeypatch, tmp_path):
    cmd = [
        str(Path(sys.executable).with_name("dg")), "launch", "-m", "cidadao_backup_dagster.definitions",
        "--assets", "postgres_daily_backup", "--partition", "2026-11-22",
    ]  # fmt: skip
    out = subprocess.run(cmd, env=backup_env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]

    monkeypatch.setenv("DAGSTER_HOME", backup_env["DAGSTER_HOME"])
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
        events = run_events(instance, run.run_id)
        asset = dg.AssetKey("postgres_daily_backup")
        check_keys = build_defs().resolve_asset_graph().get_check_keys_for_assets({asset})
        records = {key: instance.get_latest_asset_check_evaluation_record(key) for key in check_keys}

    assert run.status == dg.DagsterRunStatus.SUCCESS
    # (a) one process: no step worker was started, and every step ran in the process that started the run.
    assert not WORKER_EVENTS & {e.event_type for e in events}
    pids = step_pids(events)
    assert len(pids) == 1 + len(check_keys) and set(pids.values()) == {run_pid(events)}
    # (b) each check is still its own step with its own evaluation, recorded in its own history.
    evaluations = [e.event_specific_data for e in events if e.event_type == T.ASSET_CHECK_EVALUATION]
    assert sorted(e.check_name for e in evaluations) == sorted(k.name for k in check_keys)
    assert {"integrity", "size_deviation", "freshness", "encrypted"} <= {k.name for k in check_keys}
    assert all(r is not None and r.run_id == run.run_id for r in records.values())
    assert all(e.passed for e in evaluations)


def test_every_job_of_the_code_location_uses_the_in_process_executor(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    monkeypatch.setenv("POSTGRES_PITR", "on")  # the PITR assets' jobs too
    jobs = {job.name: job.executor_def for job in build_defs().resolve_all_job_defs()}
    assert {"__ASSET_JOB", "postgres_daily_backup_job", "redis_snapshot_job", "postgres_wal_archive_job"} <= set(jobs)
    assert all(executor is EXECUTOR for executor in jobs.values()), jobs


# ---------------------------------------------------------------------- gating, with the same executor


@dg.asset
def gated_source():
    return 1


@dg.asset_check(asset=gated_source, blocking=True)
def gate():
    return dg.AssetCheckResult(passed=False)


@dg.asset_check(asset=gated_source)
def beside_gate():
    return dg.AssetCheckResult(passed=True)


@dg.asset(deps=[gated_source])
def gated_downstream():
    return 2


def gated_job():
    """The code location's executor around a blocking check that fails (reconstructable: module level)."""
    defs = dg.Definitions(
        assets=[gated_source, gated_downstream],
        asset_checks=[gate, beside_gate],
        jobs=[dg.define_asset_job("gated", selection=dg.AssetSelection.all(include_sources=False))],
        executor=EXECUTOR,
    )
    return defs.resolve_job_def("gated")


@pytest.mark.parametrize("run_config", [{}, MULTIPROCESS], ids=["default", "multiprocess"])
def test_a_failed_blocking_check_still_stops_downstream_work(run_config, tmp_path, monkeypatch):
    # Step processes (the multiprocess case) must import this module.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        with dg.execute_job(dg.reconstructable(gated_job), instance, run_config=run_config) as result:
            assert not result.success
            events = run_events(instance, result.run_id)
    by_type = {}
    for e in events:
        by_type.setdefault(e.event_type, set()).add(e.step_key)
    evaluations = {e.event_specific_data.check_name: e.event_specific_data.passed for e in events
                   if e.event_type == T.ASSET_CHECK_EVALUATION}  # fmt: skip
    assert evaluations == {"gate": False, "beside_gate": True}
    assert by_type[T.STEP_START] == {"gated_source", "gated_source_gate", "gated_source_beside_gate"}
    materialized = {e.event_specific_data.materialization.asset_key for e in events if e.is_step_materialization}
    assert materialized == {dg.AssetKey("gated_source")}
    pids = set(step_pids(events).values())
    if run_config:  # the control: the signal the CLI test relies on is there when steps get their own process
        assert WORKER_EVENTS <= set(by_type) and run_pid(events) not in pids
    else:
        assert not WORKER_EVENTS & set(by_type) and pids == {run_pid(events)}
