"""Typed records: manifests and drill reports read as attributes, tolerate older layouts, and write the same JSON;
the check rules on them (core/monitoring/health.py)."""

import json
from datetime import UTC, datetime, timedelta

from cidadao_backup_dagster.core.artifacts.drill_reports import DrillReport
from cidadao_backup_dagster.core.artifacts.manifest import FORMAT_VERSION, Manifest, iso
from cidadao_backup_dagster.core.monitoring.health import (
    drill_duration_verdict,
    drill_passed_verdict,
    drill_recency_verdict,
    encryption_verdict,
)

ARTIFACT = {
    "key": "postgres/app/daily/2026-11-20/app_2026-11-20_x.dump.zst",
    "uri": "s3://b/postgres/app/daily/2026-11-20/app_2026-11-20_x.dump.zst",
    "encryption": {"format": "age-encryption.org/v1", "recipients": ["age1abc"]},
    "raw_bytes": 4000,
    "raw_sha256": "r" * 64,
    "stored_bytes": 1000,
    "stored_sha256": "s" * 64,
}
TIMINGS = {"started_at": "2026-11-20T03:00:00Z", "snapshot_at": "2026-11-20T03:00:01Z", "total_seconds": 2.5}


def test_a_postgres_manifest_reads_as_attributes_and_writes_the_same_keys():
    data = {
        "format_version": FORMAT_VERSION,
        "kind": "postgres-dump",
        "partition": "2026-11-20",
        "artifact": ARTIFACT,
        "source": {"url": "postgresql://u@h:5432/app", "server_version": "16.4", "port": 5432},
        "contents": {"tables": {"public.a": 3, "public.b": 4}, "table_count": 2, "rows_total": 7},
        "tools": {"pg_dump": "pg_dump (PostgreSQL) 16.4", "python": "3.11"},
        "timings": TIMINGS,
        "run": {"dagster_run_id": "r1", "late": True},
    }
    manifest = Manifest(data)
    assert manifest.artifact.uri == ARTIFACT["uri"] and manifest.artifact.stored_bytes == 1000
    assert manifest.artifact.compression_ratio == 4.0 and manifest.artifact.encryption.recipients == ("age1abc",)
    assert manifest.timings.snapshot_at == "2026-11-20T03:00:01Z" and manifest.timings.total_seconds == 2.5
    assert manifest.postgres.tables == {"public.a": 3, "public.b": 4} and manifest.postgres.rows_total == 7
    assert manifest.source.server_version == "16.4" and manifest.tools.pg_dump.startswith("pg_dump")
    assert manifest.late and manifest.run.dagster_run_id == "r1" and manifest.encrypted
    assert json.loads(manifest.to_json()) == data and manifest.to_dict() is data


def test_redis_and_export_contents_are_typed_per_domain():
    redis = Manifest(
        {
            "partition": "2026-11-20T03",
            "dagster_partition": "2026-11-20-03:00",
            "artifact": ARTIFACT,
            "timings": {**TIMINGS, "fetch_seconds": 1.5},
            "contents": {"format": "rdb", "keys_per_db": {"0": 5}, "keys_total": 5, "rdb_version": 11, "crc64": "ab"},
        }
    )
    assert redis.dagster_partition == "2026-11-20-03:00" and redis.redis.format == "rdb"
    assert redis.redis.keys_per_db == {"0": 5} and redis.redis.rdb_version == 11 and redis.timings.work_seconds == 1.5
    export = Manifest(
        {
            "partition": "2026-11-20",
            "artifact": {**ARTIFACT, "lines": 40},
            "timings": TIMINGS,
            "contents": {
                "table": "public.investigations",
                "columns": [{"name": "id", "type": "uuid"}],
                "records": 40,
                "source_rows": 40,
                "window": {"column": "created_at", "start": "a", "end": "b"},
            },
        }
    )
    assert export.export.records == 40 and export.export.columns[0].name == "id" and export.artifact.lines == 40
    assert export.export.window.column == "created_at"


def test_an_older_manifest_without_optional_sections_still_reads():
    legacy = Manifest({"partition": "2025-01-01", "artifact": {"key": "k", "stored_bytes": 3}, "timings": TIMINGS})
    assert legacy.artifact.uri == "k" and legacy.artifact.encryption is None and not legacy.encrypted
    assert legacy.format_version == FORMAT_VERSION and not legacy.late and legacy.source.url == ""
    assert legacy.postgres.tables == {} and legacy.redis.keys_total == 0 and legacy.tools.pg_dump is None


def test_drill_reports_parse_full_and_minimal_layouts():
    minimal = DrillReport.parse(
        {"passed": True, "partition": "2026-10-01", "backup_partition": "x", "finished_at": "t"}
    )
    assert minimal.passed and minimal.problems == () and minimal.tables is None and minimal.keys_restored == {}
    assert DrillReport.of(None) is None
    full = DrillReport.parse(
        {
            "kind": "redis-restore-drill",
            "partition": "2026-11-01",
            "backup_partition": "2026-10-31-23:00",
            "backup_uri": "s3://b/k",
            "passed": False,
            "problems": ["db0: short"],
            "duration_seconds": 12.5,
            "keys_restored": {"0": 4},
            "finished_at": "2026-11-01T05:30:00Z",
        }
    )
    assert not full.passed and full.problems == ("db0: short",) and full.keys_restored == {"0": 4}
    verdict = drill_passed_verdict(full, "snapshot")
    assert not verdict.passed and verdict.description == "Drill failed: db0: short (snapshot 2026-10-31-23:00)"


def test_drill_rules_live_in_the_core():
    assert drill_duration_verdict(100, 1800)[0].passed
    assert drill_duration_verdict(1000, 1800)[1] == "WARN" and not drill_duration_verdict(1000, 1800)[0].passed
    assert drill_duration_verdict(2000, 1800)[1] == "ERROR"
    now = datetime(2026, 11, 20, tzinfo=UTC)
    report = DrillReport.parse({"passed": True, "backup_partition": "p", "finished_at": iso(now - timedelta(days=40))})
    assert not drill_recency_verdict(report, now, "backup").passed
    assert not drill_recency_verdict(None, now, "backup").passed


def test_encryption_rule():
    unencrypted = Manifest({"partition": "p", "artifact": {"key": "k", "stored_bytes": 1}})
    assert not encryption_verdict(unencrypted, True, "export").passed
    assert "re-run the export" in encryption_verdict(unencrypted, True, "export").description
    assert encryption_verdict(unencrypted, False, "export").passed
    encrypted = Manifest({"partition": "p", "artifact": ARTIFACT})
    assert encryption_verdict(encrypted, True, "backup").metadata == {"recipients": "age1abc"}
