"""Point-in-time recovery as an operator and the monitoring see it, on the private PostgreSQL 15 cluster of
test_pitr.py (its fixtures): restore_postgres with target_time through the real CLI, the base backup's checks
(integrity against its backup_manifest, freshness) and the monthly PITR drill."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest
import zstandard

from cidadao_backup_dagster.core.artifacts.layout import series_prefix
from cidadao_backup_dagster.core.artifacts.manifest import all_valid_manifests, parse_manifest
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.postgres.backup import backup_postgres
from cidadao_backup_dagster.core.postgres.pitr import archive_wal, base_backup, base_series
from cidadao_backup_dagster.core.postgres.pitr.drill import read_report
from cidadao_backup_dagster.core.postgres.pitr.health import base_freshness
from cidadao_backup_dagster.defs.postgres.pitr_checks import build_base_checks

from .test_pitr import (  # noqa: F401 - fixtures
    PG15,
    SETTINGS,
    cluster,
    deleted_after_an_instant,
    ids,
    insert,
    pitr_env,
    restore_tmp,
    source,
    whole_second,
)

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not (PG15 / "initdb").exists(), reason="needs the PostgreSQL 15 server binaries")


def dg_launch(job: str, config: Path, home: Path) -> subprocess.CompletedProcess:
    """`dg launch --job <job> -c <config>` in a subprocess, with a Dagster instance of its own (the environment
    is the test's: POSTGRES_PITR, DATABASE_URL, BACKUP_STORAGE_URL, ...)."""
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    cmd = [str(Path(sys.executable).with_name("dg")), "launch", "-m", "cidadao_backup_dagster.definitions"]
    cmd += ["--job", job, "-c", str(config)]
    return subprocess.run(cmd, env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True, text=True)


def test_restore_to_an_instant_from_the_cli(cluster, source, restore_tmp, pitr_env):  # noqa: F811
    """The operator's path: rows, base, more rows, T, DELETE, one WAL run, then `dg launch --job restore_postgres
    -c restore.yaml` with target_time T -> exactly T's rows in target_database; the source untouched."""
    storage = LocalStorage(restore_tmp / "backups")  # BACKUP_STORAGE_URL of pitr_env
    instant = deleted_after_an_instant(cluster, source, storage, 70, 90)

    target = f"{source}_cli"
    config = restore_tmp / "restore.yaml"
    config.write_text(
        "ops:\n  restore_postgres_op:\n    config:\n"
        f"      target_time: '{instant.isoformat()}'\n      target_database: {target}\n"
    )
    try:
        out = dg_launch("restore_postgres", config, restore_tmp / "home")
        assert out.returncode == 0, out.stderr[-3000:]
        assert ids(cluster.conn(target)) == list(range(1, 91))
        assert ids(cluster.conn(source)) == []  # the source is untouched
        assert list(pitr_env.iterdir()) == []  # the throwaway server and its files are gone
    finally:
        cluster.sql(f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")


# ------------------------------------------------------------------------------------------ base backup checks


def verdicts(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def rebuilt_base(stored: bytes, name: str, content: bytes) -> tuple[bytes, bytes]:
    """(raw tar, zstd) of a stored base with file `name` rewritten (same size): its backup_manifest disagrees."""
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(stored)
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name == name:
                assert len(content) == len(data)
                data = content
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue(), zstandard.ZstdCompressor().compress(out.getvalue())


def test_base_checks_pass_and_name_a_tampered_member(cluster, source, restore_tmp, pitr_env):  # noqa: F811
    """base_integrity re-reads the newest base as a restore does: a flipped byte fails its SHA-256, a rewritten
    file with matching hashes in the manifest fails pg_verifybackup, each naming the object; base_freshness."""
    import dagster as dg

    from cidadao_backup_dagster.defs.postgres import pitr as pitr_defs
    from cidadao_backup_dagster.defs.resources import build_resources
    from cidadao_backup_dagster.defs.sources import default_pg

    binding, resources = default_pg(), build_resources()
    base = pitr_defs.build_base_asset(binding)
    checks = build_base_checks(binding, base)
    assert {k.name for c in checks for k in c.check_keys} == {"base_integrity", "base_freshness"}
    insert(cluster, source, 1, 20)
    result = dg.materialize(
        [base, *checks],
        resources=resources,
        partition_key=binding.partitions.weekly.get_last_partition_key(),
        run_config={"ops": {base.op.name: {"config": {"allow_late": True}}}},
    )
    assert result.success
    assert {name: e.passed for name, e in verdicts(result).items()} == {"base_integrity": True, "base_freshness": True}

    def integrity():
        run = dg.materialize([base, *checks], resources=resources, selection=dg.AssetSelection.checks(*checks))
        return verdicts(run)["base_integrity"]

    storage = LocalStorage(restore_tmp / "backups")
    (manifest,) = [m for m in all_valid_manifests(storage, base_series(source)) if m.kind == "postgres-base-backup"]
    stored = storage.root / manifest.artifact_key  # storage never overwrites: the test writes the folder itself
    original = stored.read_bytes()
    flipped = bytearray(original)
    flipped[-100] ^= 0xFF
    stored.write_bytes(bytes(flipped))
    failed = integrity()
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
    assert manifest.artifact_key in failed.description and "SHA-256" in failed.description

    # Every hash in the manifest matches, and still a file differs from what the server wrote: pg_verifybackup.
    raw, packed = rebuilt_base(original, "PG_VERSION", b"14\n")
    stored.write_bytes(packed)
    data = json.loads((storage.root / manifest.key).read_text())
    data["artifact"].update(
        stored_sha256=hashlib.sha256(packed).hexdigest(), stored_bytes=len(packed),
        raw_sha256=hashlib.sha256(raw).hexdigest(), raw_bytes=len(raw),
    )  # fmt: skip
    (storage.root / manifest.key).write_text(json.dumps(data))
    failed = integrity()
    assert not failed.passed and "pg_verifybackup" in failed.description and "PG_VERSION" in failed.description
    assert manifest.artifact_key in failed.description
    assert list(pitr_env.iterdir()) == []  # the scratch folders are gone

    newest = parse_manifest(storage, manifest.key)
    assert base_freshness(newest, now=newest.taken_at + timedelta(days=7)).passed
    stale = base_freshness(newest, now=newest.taken_at + timedelta(days=9))
    assert (stale.passed, stale.severity) == (False, "ERROR") and "more than 8 days" in stale.description
    assert not base_freshness(None).passed


# ------------------------------------------------------------------------------------------ the PITR drill


def test_pitr_drill_agrees_with_the_newest_dump_exactly_on_a_quiet_database(cluster, source, restore_tmp, pitr_env):  # noqa: F811
    """Base, more rows, a quiet second, the daily dump, then writes after it: the recovery to the dump's
    snapshot instant holds exactly the dump's row counts (nothing after it). Before the WAL reaches the instant
    the drill fails with a stored report; after a WAL run it passes, and the shared drill checks see it."""
    import dagster as dg

    from cidadao_backup_dagster.defs.drills import MONTHLY
    from cidadao_backup_dagster.defs.postgres.pitr_drill import build_pitr_drill
    from cidadao_backup_dagster.defs.resources import build_resources
    from cidadao_backup_dagster.defs.sources import default_pg

    storage = LocalStorage(restore_tmp / "backups")
    conn = cluster.conn(source)
    cluster.sql("CREATE TABLE notes (id int PRIMARY KEY)", source)
    insert(cluster, source, 1, 40)
    base_backup(conn, storage, source=source, partition="2026-11-30", settings=SETTINGS)
    insert(cluster, source, 41, 60)
    cluster.sql("INSERT INTO notes SELECT generate_series(1, 7)", source)
    archive_wal(conn, storage, source=source, settings=SETTINGS)  # the archive stops before the dump
    whole_second(cluster)  # the dump's instant is recorded to the second: no commit in that second before it
    dump = backup_postgres(
        conn, storage, series=series_prefix("postgres", source, "daily"), partition="2026-12-01", settings=SETTINGS
    )
    assert dump.tables == {"public.items": 60, "public.notes": 7}
    cluster.sql("DELETE FROM items WHERE id > 10", source)  # after the dump: not in the recovery
    cluster.sql("INSERT INTO notes VALUES (8)", source)

    drill, checks, _job, schedule = build_pitr_drill(default_pg())
    assert schedule.cron_schedule == "0 6 1 * *"
    resources, month = build_resources(), MONTHLY.get_last_partition_key()

    def run() -> tuple[dict, dict]:
        result = dg.materialize([drill, *checks], resources=resources, partition_key=month, raise_on_error=False)
        (materialization,) = result.asset_materializations_for_node(drill.op.name)
        return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}, materialization.metadata

    verdicts, meta = run()  # the dump's instant is beyond the archive
    assert verdicts["drill_passed"] is False and meta["passed"].value is False
    report = read_report(storage, source, month)
    assert report["passed"] is False and "recoverable until" in report["problems"][0]

    archive_wal(conn, storage, source=source, settings=SETTINGS)
    verdicts, meta = run()
    assert verdicts == {"drill_passed": True, "drill_duration_within_rto": True, "recent_passing_drill": True}
    assert (meta["tables"].value, meta["rows"].value, meta["dump_partition"].value) == (2, 67, "2026-12-01")
    assert meta["proved_backup"].value == "2026-11-30" and meta["target_time"].value == dump.timings.snapshot_at
    report = read_report(storage, source, month)
    assert report["passed"] and report["rows_recovered"] == 67 and report["problems"] == []
    assert 0 < report["duration_seconds"] < report["rto_seconds"]
    assert list(pitr_env.iterdir()) == []  # the throwaway server is gone
