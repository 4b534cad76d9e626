"""Retention planning (pure) and applying it on both storage backends, with the safety floors."""

from datetime import UTC, datetime, timedelta

import pytest

from cidadao_backup_dagster.core.artifacts.layout import is_manifest_name
from cidadao_backup_dagster.core.artifacts.manifest import Manifest, iso, valid_manifests, write_manifest
from cidadao_backup_dagster.core.protection.retention import (
    Artifact,
    Policy,
    delete_artifact,
    inventory,
    plan_retention,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def day(n: int) -> str:
    return (NOW - timedelta(days=n)).strftime("%Y-%m-%d")


def history(ages, valid=True):
    return [Artifact(day(n), NOW - timedelta(days=n) + timedelta(hours=3), valid) for n in ages]


def deleted(plan):
    return sorted(a.partition for a in plan.delete)


def test_expired_artifacts_go_and_young_ones_stay():
    plan = plan_retention(history(range(1, 11)), Policy(keep_days=7, min_keep=3), NOW)
    assert deleted(plan) == sorted(day(n) for n in (8, 9, 10))


def test_the_newest_valid_ones_survive_even_when_all_are_old():
    plan = plan_retention(history([40, 50, 60, 70]), Policy(keep_days=7, min_keep=3), NOW)
    assert deleted(plan) == [day(70)]
    assert {a.partition for a, why in plan.keep if "newest 3" in why} == {day(40), day(50), day(60)}


def test_invalid_artifacts_do_not_count_toward_the_floor():
    items = history([40, 50, 60, 70]) + [Artifact(day(1), NOW, False), Artifact(day(2), NOW, False)]
    plan = plan_retention(items, Policy(keep_days=30, min_keep=3), NOW)
    assert deleted(plan) == [day(70)]  # the floor is the three newest VALID ones (40, 50, 60)


def test_the_drill_proven_backup_is_never_deleted():
    plan = plan_retention(history(range(1, 20)), Policy(keep_days=7), NOW, protected={day(15)})
    assert day(15) not in deleted(plan) and day(16) in deleted(plan)


def test_single_backup_is_never_expired():
    plan = plan_retention(history([400]), Policy(keep_days=7, min_keep=1), NOW)
    assert plan.delete == []


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        Policy(keep_days=0)
    with pytest.raises(ValueError):
        Policy(keep_days=7, min_keep=0)


def _put(storage, series, partition, taken_at, size=100):
    key = f"{series}/{partition}/obj_{partition}.dump.zst"
    storage.put_bytes(key, b"x" * size)
    data = {
        "partition": partition,
        "artifact": {"key": key, "stored_bytes": size},
        "timings": {"snapshot_at": iso(taken_at)},
    }
    write_manifest(storage, series, Manifest(data))


def test_apply_plan_on_storage_removes_exactly_the_plan(storage):
    series = "postgres/db/daily"
    for n in range(1, 11):
        _put(storage, series, day(n), NOW - timedelta(days=n))
    storage.put_bytes(f"{series}/{day(30)}/orphan.dump.zst", b"left by a crashed run")  # no manifest
    plan = plan_retention(inventory(storage, series), Policy(keep_days=7), NOW)
    assert deleted(plan) == sorted([day(8), day(9), day(10), day(30)])
    for artifact in plan.delete:
        removed = delete_artifact(storage, series, artifact)
        assert is_manifest_name(removed[0].rsplit("/", 1)[-1]) or artifact.taken_at is None
    remaining = sorted(m.partition for m in valid_manifests(storage, series))
    assert remaining == sorted(day(n) for n in range(1, 8))
    assert not [k for k in storage.list_keys(f"{series}/") if day(30) in k or day(9) in k]


# ------------------------------------------------------------------------------ the apply_retention job


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_apply_retention_job_dry_run_then_real_with_floors_and_drill_protection(
    backend, monkeypatch, tmp_path, make_database, request
):
    import json as _json

    import dagster as dg

    from cidadao_backup_dagster.core.artifacts.storage import LocalStorage, S3Storage
    from cidadao_backup_dagster.core.protection.audit import read_audit
    from cidadao_backup_dagster.definitions import build_defs

    db = make_database("cbd_ret")
    dbname = db.rsplit("/", 1)[1]
    monkeypatch.setenv("DATABASE_URL", db)
    monkeypatch.delenv("BACKUP_RETENTION_DAYS", raising=False)
    if backend == "local":
        monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/b")
        storage = LocalStorage(tmp_path / "b")
    else:
        request.getfixturevalue("aws_env")
        bucket = request.getfixturevalue("make_bucket")()
        monkeypatch.setenv("BACKUP_STORAGE_URL", f"s3://{bucket}/ret")
        storage = S3Storage(request.getfixturevalue("s3_client"), bucket, "ret")
    monkeypatch.setenv("OFFSITE_STORAGE_URL", f"file://{tmp_path}/off")
    series = f"postgres/{dbname}/daily"
    now = datetime.now(UTC)
    for n in range(1, 13):  # twelve daily backups, 1..12 days old
        partition = (now - timedelta(days=n)).strftime("%Y-%m-%d")
        _put(storage, series, partition, now - timedelta(days=n) + timedelta(hours=1))
    proven = (now - timedelta(days=11)).strftime("%Y-%m-%d")
    report = {"passed": True, "partition": "2026-10-01", "backup_partition": proven, "finished_at": iso(now)}
    storage.put_bytes(f"drills/postgres/{dbname}/2026-10-01/report.json", _json.dumps(report).encode())

    def run(dry_run):
        return (
            build_defs()
            .resolve_job_def("apply_retention")
            .execute_in_process(
                run_config={"ops": {"apply_retention_op": {"config": {"dry_run": dry_run}}}},
                instance=dg.DagsterInstance.ephemeral(),
            )
        )

    dry = run(True)
    (out,) = [e for e in dry.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert out.event_specific_data.metadata["planned_deletions"].value == 4  # days 8, 9, 10, 12
    assert len(valid_manifests(storage, series)) == 12  # the dry run deleted nothing
    assert run(False).success
    remaining = {m.partition for m in valid_manifests(storage, series)}
    expected = {(now - timedelta(days=n)).strftime("%Y-%m-%d") for n in (1, 2, 3, 4, 5, 6, 7, 11)}
    assert remaining == expected
    deletions = [r for r in read_audit(storage) if r["action"] == "delete"]
    assert len(deletions) == 4 and all(r["result"] == "ok" for r in deletions)
