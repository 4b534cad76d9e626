"""Lifecycle tiers, immutability and cold-tier restores against a real (moto) S3 server."""

import dagster as dg
import pytest

from cidadao_backup_dagster.core.artifacts.storage import S3Storage
from cidadao_backup_dagster.core.errors import BackupError
from cidadao_backup_dagster.core.protection.lifecycle import desired_rules
from cidadao_backup_dagster.definitions import build_defs


@pytest.fixture
def s3_env(monkeypatch, aws_env, make_bucket, make_database):
    bucket = make_bucket()
    monkeypatch.setenv("DATABASE_URL", make_database("cbd_prot"))
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"s3://{bucket}/cidadao")
    monkeypatch.delenv("OFFSITE_STORAGE_URL", raising=False)
    monkeypatch.setenv("CIDADAO_ENV", "production")
    return bucket


def run_storage_checks():
    daily = [
        dg.AssetCheckKey(dg.AssetKey("postgres_daily_backup"), n) for n in ("storage_lifecycle", "storage_immutable")
    ]
    job = dg.define_asset_job("storage_checks_only", selection=dg.AssetSelection.checks(*daily))
    result = (
        dg.Definitions.merge(build_defs(), dg.Definitions(jobs=[job]))
        .resolve_job_def("storage_checks_only")
        .execute_in_process(instance=dg.DagsterInstance.ephemeral())
    )
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_lifecycle_is_applied_then_drift_is_reported(s3_env, s3_client):
    before = run_storage_checks()
    assert not before["storage_lifecycle"].passed and "no lifecycle rule" in before["storage_lifecycle"].description
    assert build_defs().resolve_job_def("apply_s3_lifecycle").execute_in_process().success
    rules = s3_client.get_bucket_lifecycle_configuration(Bucket=s3_env)["Rules"]
    assert [r["ID"] for r in rules] == [desired_rules("cidadao")[0]["ID"]]
    assert [t["StorageClass"] for t in rules[0]["Transitions"]] == ["GLACIER", "DEEP_ARCHIVE"]
    assert run_storage_checks()["storage_lifecycle"].passed
    rules[0]["Expiration"] = {"Days": 5}  # someone shortened it by hand
    s3_client.put_bucket_lifecycle_configuration(Bucket=s3_env, LifecycleConfiguration={"Rules": rules})
    drifted = run_storage_checks()["storage_lifecycle"]
    assert not drifted.passed and drifted.severity == dg.AssetCheckSeverity.WARN
    assert "Expiration" in drifted.description


def test_versioning_and_object_lock_are_required_in_production(s3_env, s3_client, monkeypatch):
    off = run_storage_checks()["storage_immutable"]
    assert not off.passed and "versioning is Disabled" in off.description and "Object Lock" in off.description
    s3_client.put_bucket_versioning(Bucket=s3_env, VersioningConfiguration={"Status": "Enabled"})
    half = run_storage_checks()["storage_immutable"]
    assert not half.passed and half.description == "Object Lock is off"
    locked = f"{s3_env}-locked"
    s3_client.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)  # also turns versioning on
    try:
        monkeypatch.setenv("BACKUP_STORAGE_URL", f"s3://{locked}/cidadao")
        assert run_storage_checks()["storage_immutable"].passed
    finally:
        s3_client.delete_bucket(Bucket=locked)


def test_an_object_in_a_cold_tier_explains_the_restore_it_needs(s3_client, make_bucket):
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="p/postgres/db/daily/x.dump.zst", Body=b"z" * 10, StorageClass="GLACIER")
    storage = S3Storage(s3_client, bucket, "p")
    with pytest.raises(BackupError) as err:
        storage.open_read("postgres/db/daily/x.dump.zst")
    assert "restore-object" in str(err.value) and "cold storage class" in str(err.value)
