"""Issue 11, deliver 5: whether a failure is retried, and how the audit records it, follows the error's type
(never its message text). A permanent failure fails at once; a transient one retries."""

import json

import dagster as dg
import pytest

from cidadao_backup_dagster.core.errors import (
    BackupError,
    ConfigurationError,
    PermanentError,
    RefusedError,
    StorageAccessDenied,
    StorageReadError,
    audit_outcome,
    is_permanent,
    pg_error_type,
)
from cidadao_backup_dagster.definitions import build_defs


def retries(result) -> int:
    return len([e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"])


@pytest.fixture
def env(monkeypatch, tmp_path, make_database):
    for var in ("OFFSITE_STORAGE_URL", "BACKUP_SOURCES_FILE", "PG_BIN_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABASE_URL", make_database("cbd_typed"))
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    return tmp_path


def run_backup():
    return build_defs().resolve_job_def("postgres_daily_backup_job").execute_in_process(
        partition_key="2026-11-24", instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )


def test_a_missing_bucket_fails_at_once_without_retries(env, aws_env, monkeypatch):
    monkeypatch.setenv("BACKUP_STORAGE_URL", "s3://no-such-bucket-cbd/x")
    result = run_backup()
    assert not result.success and retries(result) == 0
    assert "not usable (error NoSuchBucket)" in str(result.all_events) or "(error 404)" in str(result.all_events)


def test_a_missing_pg_dump_fails_at_once_without_retries(env, monkeypatch):
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{env}/b")
    monkeypatch.setenv("PG_BIN_DIR", str(env))  # holds no pg_dump
    result = run_backup()
    assert not result.success and retries(result) == 0


def test_a_refused_database_connection_is_transient_and_retried(env, monkeypatch, refused_port):
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{env}/b")
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{refused_port}/nowhere")
    result = run_backup()
    assert not result.success and retries(result) >= 1  # the server may come back: try again


def test_the_audit_says_refused_for_a_refusal_and_failed_for_a_failure(env, monkeypatch):
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{env}/b")
    monkeypatch.delenv("BACKUP_LATE_GRACE_HOURS")  # the real 48 h grace: 2026-11-24 is refused as late
    assert not run_backup().success
    (record,) = [json.loads(p.read_text()) for p in (env / "b" / "audit").rglob("*.json")]
    assert (record["action"], record["result"]) == ("backup", "refused")


def test_types_decide():
    assert is_permanent(PermanentError("x")) and is_permanent(RefusedError("x"))
    assert is_permanent(StorageAccessDenied("x"))
    assert is_permanent(ConfigurationError("V", "p", "f"))
    assert not is_permanent(BackupError("permission denied")) and not is_permanent(StorageReadError("refusing"))
    try:
        try:
            raise RefusedError("no")
        except RefusedError:
            raise dg.Failure("wrapped") from None  # as every asset does: the cause stays the context
    except dg.Failure as failure:
        assert audit_outcome(failure) == "refused"
    assert audit_outcome(dg.Failure("refusing, but only in words")) == "failed"
    assert pg_error_type('FATAL: password authentication failed for user "x"') is PermanentError
    assert pg_error_type("connection refused") is BackupError
