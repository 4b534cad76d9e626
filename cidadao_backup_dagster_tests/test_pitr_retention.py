"""PITR retention and the recoverable window: the plan over base chains and WAL (manifests and objects written
through the project's own publish path), what stops it (a read error on S3, a manifest that does not parse, an
object of no one's), and end to end on a private PostgreSQL 15: real base backups and WAL runs, apply_retention
(dry run, then for real), and a restore to an instant inside the kept window afterwards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest

from cidadao_backup_dagster.core.artifacts.layout import run_token
from cidadao_backup_dagster.core.artifacts.manifest import Manifest, iso, publish
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage, S3Storage
from cidadao_backup_dagster.core.errors import StorageReadError
from cidadao_backup_dagster.core.monitoring.report import class_health, default_targets, render_markdown
from cidadao_backup_dagster.core.postgres.pitr import archive_wal, base_backup, restore_to_instant
from cidadao_backup_dagster.core.postgres.pitr.health import recoverable_window
from cidadao_backup_dagster.core.postgres.pitr.layout import (
    base_series,
    format_lsn,
    iso_us,
    parse_lsn,
    segment_name,
    segno_of,
    wal_object_key,
    wal_series,
)
from cidadao_backup_dagster.core.postgres.pitr.retention import RetentionStopped, plan_pitr_retention
from cidadao_backup_dagster.core.protection.retention import Policy, delete_artifact

from . import test_pitr as pitr
from .conftest import make_s3_client
from .test_pitr import cluster, pitr_env, restore_tmp, source  # noqa: F401 - fixtures

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SIZE = 16 * 2**20
SOURCE = "app"


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def put_base(storage, partition: str, taken_at: datetime, start_segno: int, parent: Manifest | None = None):
    """A base backup as base_backup publishes it: its tar, its backup_manifest copy, the manifest last."""
    series = base_series(SOURCE)
    tar = f"{series}/{partition}/{SOURCE}_{partition}_{run_token(taken_at)}.tar.zst"
    side = tar.replace(".tar.zst", ".backup_manifest.zst")
    storage.put_bytes(tar, b"t" * 64)
    storage.put_bytes(side, b"m" * 8)
    start = start_segno * SIZE + 40
    chain = (
        {"kind": "incremental", "parent": parent.artifact_key, "parent_manifest": parent.key}
        if parent
        else {"kind": "full", "parent": None, "parent_manifest": None}
    )
    data = {
        "kind": "postgres-base-backup",
        "partition": partition,
        "artifact": {"key": tar, "stored_bytes": 64},
        "timings": {"snapshot_at": iso(taken_at)},
        "source": {"system_identifier": "7401"},
        "base": {
            "timeline": 1,
            "start_lsn": format_lsn(start),
            "end_lsn": format_lsn(start + 4096),
            "segment_size": SIZE,
            **chain,
            "backup_manifest": {"key": side, "stored_bytes": 8},
        },
    }
    return publish(storage, series, Manifest(data))


def put_wal(storage, segno: int, at: datetime, *, partial: bool = False, end: int | None = None) -> Manifest:
    """One WAL file as a WAL run publishes it (object, then its manifest)."""
    series = wal_series(SOURCE, 1)
    name = segment_name(1, segno, SIZE)
    partition = name + (".partial" if partial else "")
    key = wal_object_key(series, partition, run_token(at), ".zst")
    storage.put_bytes(key, b"w" * 32)
    end = end if end is not None else (segno + 1) * SIZE
    data = {
        "kind": "postgres-wal",
        "partition": partition,
        "artifact": {"key": key, "stored_bytes": 32},
        "timings": {"snapshot_at": iso_us(at), "finished_at": iso(at + timedelta(seconds=3))},
        "source": {"system_identifier": "7401"},
        "wal": {"file": partition, "timeline": 1, "segno": segno, "partial": partial, "segment_size": SIZE,
                "start_lsn": format_lsn(segno * SIZE), "end_lsn": format_lsn(end)},
    }  # fmt: skip
    return publish(storage, series, Manifest(data))


def chains_archive(storage) -> dict[str, Manifest]:
    """Three full chains (weekly bases, an incremental or two on each full) and WAL segments 5..80 with the
    partial of 81 twice (a shorter and a longer copy) and a stale partial of 79 (completed since)."""
    bases: dict[str, Manifest] = {}
    bases["F1"] = put_base(storage, "2026-09-27", ago(60), 10)
    bases["I1a"] = put_base(storage, "2026-10-04", ago(53), 20, bases["F1"])
    bases["I1b"] = put_base(storage, "2026-10-11", ago(46), 30, bases["I1a"])
    bases["F2"] = put_base(storage, "2026-10-18", ago(39), 40)
    bases["I2a"] = put_base(storage, "2026-10-25", ago(32), 50, bases["F2"])
    bases["F3"] = put_base(storage, "2026-11-01", ago(25), 60)
    bases["I3a"] = put_base(storage, "2026-11-08", ago(18), 70, bases["F3"])
    for segno in range(5, 81):
        put_wal(storage, segno, ago(62 - segno * 0.75))
    put_wal(storage, 79, ago(1), partial=True, end=79 * SIZE + 100)
    put_wal(storage, 81, ago(0.02), partial=True, end=81 * SIZE + 100)
    put_wal(storage, 81, ago(0.01), partial=True, end=81 * SIZE + 900)
    return bases


def deleted_keys(plan) -> list[str]:
    return [k for a in plan.delete for k in (*([a.manifest_key] if a.manifest_key else []), *a.object_keys)]


def wal_segnos(keys) -> set[int]:
    return {int(k.split("/")[4][:24][8:16], 16) * 256 + int(k.split("/")[4][16:24], 16) for k in keys if "/wal/" in k}


def test_the_plan_keeps_whole_chains_and_the_wal_they_need(tmp_path):
    """min_keep 1: the newest full chain is the floor; I2a is young, so its full base F2 stays with it (39 days
    old); F1's chain goes, children first; WAL before F2's start goes; from it on only superseded partials."""
    storage = LocalStorage(tmp_path)
    b = chains_archive(storage)
    plan = plan_pitr_retention(storage, SOURCE, Policy(keep_days=35, min_keep=1), NOW)

    gone_bases = [a.manifest_key for a in plan.delete if "/base/" in (a.manifest_key or "")]
    assert gone_bases == [b["I1b"].key, b["I1a"].key, b["F1"].key]  # newest first: a child before its parent
    kept = {a.manifest_key: why for a, why in plan.keep if a.manifest_key}
    assert set(kept) == {b[n].key for n in ("F2", "I2a", "F3", "I3a")}
    assert "chain of kept base 2026-10-25" in kept[b["F2"].key]
    # Each base goes with its tar and its backup_manifest copy (never a leftover), its manifest first.
    first = next(a for a in plan.delete if a.manifest_key == b["F1"].key)
    assert first.object_keys == (b["F1"].artifact_key, b["F1"].data["base"]["backup_manifest"]["key"])

    old_wal = [a for a in plan.delete if a.group and a.problem == ""]
    assert sorted({int(a.partition[16:], 16) for a in old_wal}) == list(range(5, 40))  # F2 starts in segment 40
    superseded = [a for a in plan.delete if a.problem.startswith("superseded")]
    assert {a.partition for a in superseded} == {
        segment_name(1, 79, SIZE) + ".partial",
        segment_name(1, 81, SIZE) + ".partial",
    }
    folder = storage.list_keys(f"{wal_series(SOURCE, 1)}/{segment_name(1, 81, SIZE)}.partial/")
    assert len([k for k in deleted_keys(plan) if k in folder]) == 2  # the shorter copy; the longer one stays

    for artifact in plan.delete:
        delete_artifact(storage, base_series(SOURCE), artifact)
    left = storage.list_keys("postgres/")
    assert all(k not in left for k in deleted_keys(plan))
    assert {k for k in left if "/base/" in k and "manifest-" in k} == {b[n].key for n in ("F2", "I2a", "F3", "I3a")}
    for segno in range(40, 81):  # every segment from the oldest kept base's start on
        assert storage.list_keys(f"{wal_series(SOURCE, 1)}/{segment_name(1, segno, SIZE)}/")
    again = plan_pitr_retention(storage, SOURCE, Policy(keep_days=35, min_keep=1), NOW)
    assert again.delete == []


def test_floors_keep_chains_whatever_their_age(tmp_path):
    storage = LocalStorage(tmp_path)
    b = chains_archive(storage)
    # Everything a year old: the newest two full chains stay, and the WAL from F2's start on.
    plan = plan_pitr_retention(storage, SOURCE, Policy(keep_days=35, min_keep=2), NOW + timedelta(days=365))
    kept = {a.manifest_key for a, _ in plan.keep if a.manifest_key}
    assert kept == {b[n].key for n in ("F2", "I2a", "F3", "I3a")}
    # Young: every base stays; only the WAL before the oldest one's start (no base needs it) and superseded partials go.
    plan = plan_pitr_retention(storage, SOURCE, Policy(keep_days=90, min_keep=2), NOW)
    assert {a.manifest_key for a, _ in plan.keep if a.manifest_key} == {m.key for m in b.values()}
    assert {int(a.partition[16:24], 16) for a in plan.delete if not a.problem} == set(range(5, 10))
    # The full base of a chain damaged: that chain does not count toward the floor, and its incremental keeps it.
    storage.delete(b["F3"].artifact_key)
    plan = plan_pitr_retention(storage, SOURCE, Policy(keep_days=35, min_keep=1), NOW + timedelta(days=365))
    kept = {a.manifest_key: why for a, why in plan.keep if a.manifest_key}
    assert b["F2"].key in kept and b["I2a"].key in kept  # the newest intact chain
    assert "the newest base backup" in kept[b["I3a"].key] and b["F3"].key in kept  # never the newest, nor its chain
    assert min(int(a.partition[16:24], 16) for a in plan.delete if a.group and not a.problem) == 5
    assert max(int(a.partition[16:24], 16) for a in plan.delete if a.group and not a.problem) == 39


def test_unsure_means_nothing_of_the_source_is_deleted(tmp_path):
    storage = LocalStorage(tmp_path)
    chains_archive(storage)
    policy, later = Policy(keep_days=35, min_keep=1), NOW + timedelta(days=365)
    before = storage.list_keys("postgres/")
    # A WAL manifest that does not parse, in a folder that would go.
    damaged = f"{wal_series(SOURCE, 1)}/{segment_name(1, 6, SIZE)}/manifest-20260101T000000000000Z-0000beef.json"
    storage.put_bytes(damaged, b"{not json")
    with pytest.raises(RetentionStopped, match="not a readable manifest"):
        plan_pitr_retention(storage, SOURCE, policy, later)
    storage.delete(damaged)
    # An object no manifest names that is not an unfinished upload of ours, beside the base backups.
    stray = f"{base_series(SOURCE)}/2026-09-27/notes.txt"
    storage.put_bytes(stray, b"someone's file")
    with pytest.raises(RetentionStopped, match="notes.txt"):
        plan_pitr_retention(storage, SOURCE, policy, later)
    storage.delete(stray)
    # A folder in the WAL archive that is not a timeline's.
    storage.put_bytes(f"postgres/{SOURCE}/wal/elsewhere/x", b"?")
    with pytest.raises(RetentionStopped, match="timeline"):
        plan_pitr_retention(storage, SOURCE, policy, later)
    storage.delete(f"postgres/{SOURCE}/wal/elsewhere/x")
    assert storage.list_keys("postgres/") == before
    # An unfinished base upload (a tar no manifest names): a leftover, gone once old.
    leftover = f"{base_series(SOURCE)}/2026-09-27/{SOURCE}_2026-09-27_{run_token(ago(60))}.tar.zst"
    storage.put_bytes(leftover, b"half")
    plan = plan_pitr_retention(storage, SOURCE, policy, later)
    assert any(a.object_keys == (leftover,) and a.manifest_key is None for a in plan.delete)


def failing_wal_reads_proxy(upstream: str):
    """The test_s3_faults proxy answering every GetObject under a `/wal/` folder with a 500 (listings, HEADs
    and the other reads pass through to moto)."""
    from .test_never_lose import INTERNAL_ERROR
    from .test_s3_faults import FaultyProxy

    proxy = FaultyProxy(upstream, fail_first=0)
    proxy.get_faults = 0
    base = proxy.server.RequestHandlerClass

    class Handler(base):
        def do_GET(self):
            if "/wal/" not in urlsplit(self.path).path:
                return self._handle()
            proxy.get_faults += 1
            self.send_response(500)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(INTERNAL_ERROR)))
            self.end_headers()
            self.wfile.write(INTERNAL_ERROR)

    proxy.server.RequestHandlerClass = Handler
    return proxy


def test_a_read_error_on_s3_deletes_nothing(make_bucket, s3_client, moto_endpoint, monkeypatch, aws_env):
    """GETs under wal/ answer 500 after the client's retries: the plan raises (the job then deletes nothing of
    the source, tested below for the class as a whole); every object is still there."""
    bucket = make_bucket()
    chains_archive(S3Storage(s3_client, bucket, "p"))
    before = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"])
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, ctx: 0.01)
    with failing_wal_reads_proxy(moto_endpoint) as proxy:
        faulty = S3Storage(make_s3_client(proxy.url), bucket, "p")
        with pytest.raises(StorageReadError, match="InternalError"):
            plan_pitr_retention(faulty, SOURCE, Policy(keep_days=35, min_keep=1), NOW + timedelta(days=365))
        assert proxy.get_faults >= 3
    assert sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]) == before


def test_the_report_shows_the_recoverable_window(tmp_path):
    storage = LocalStorage(tmp_path)
    b = chains_archive(storage)
    window = recoverable_window(storage, SOURCE)
    assert window.earliest == b["F1"].taken_at and window.latest == ago(0.01)
    assert window.achieved_rpo_seconds == 3.0
    series = base_series(SOURCE)
    row = class_health("postgres_pitr", storage, series, now=NOW, targets=default_targets(series))
    assert row.window == window and row.newest_partition == "2026-11-08"
    text = render_markdown([row], NOW)
    assert f"| **postgres_pitr** | {iso(b['F1'].taken_at)} | {iso(ago(0.01))} | 3 s | 14.4 min |" in text
    assert "over 10 min" in text  # 14.4 minutes behind now: over the 10-minute alert


# ------------------------------------------------------------------------------------------ PostgreSQL 15


def switch(pg, db: str, first: int, last: int) -> None:
    """Rows, then a WAL switch: the next base starts in a later segment."""
    pitr.insert(pg, db, first, last)
    pg.sql("SELECT pg_switch_wal()")


@pytest.mark.skipif(not (pitr.PG15 / "initdb").exists(), reason="needs the PostgreSQL 15 server binaries")
def test_apply_retention_on_a_real_archive_then_restore_inside_the_kept_window(request, monkeypatch):
    """Three full bases A, B, C with WAL runs between; apply_retention (floor of 2 chains, days tiny): a dry run
    deletes nothing; the real run deletes A and the WAL before B's start, nothing else; a restore to an instant
    between B and C, and to one after C, still gives exactly that instant's rows. The report shows the window."""
    import dagster as dg

    from cidadao_backup_dagster.core.protection.audit import read_audit
    from cidadao_backup_dagster.definitions import build_defs

    work = request.getfixturevalue("pitr_env")  # PITR on for a source of the PG15 cluster, storage in its tmp
    pg, db, tmp = (request.getfixturevalue(n) for n in ("cluster", "source", "restore_tmp"))
    storage, conn = LocalStorage(tmp / "backups"), pg.conn(db)
    monkeypatch.setenv("OFFSITE_STORAGE_URL", f"file://{tmp}/offsite")
    monkeypatch.setenv("BACKUP_RETENTION_DAYS", "postgres_pitr=0.00001")  # under a second: every base is "old"
    switch(pg, db, 1, 10)
    a = base_backup(conn, storage, source=db, partition="2026-11-02", settings=pitr.SETTINGS)
    switch(pg, db, 11, 20)
    archive_wal(conn, storage, source=db, settings=pitr.SETTINGS)
    b = base_backup(conn, storage, source=db, partition="2026-11-09", settings=pitr.SETTINGS)
    switch(pg, db, 21, 30)
    between = pitr.server_now(pg)
    switch(pg, db, 31, 35)
    archive_wal(conn, storage, source=db, settings=pitr.SETTINGS)
    c = base_backup(conn, storage, source=db, partition="2026-11-16", settings=pitr.SETTINGS)
    pitr.insert(pg, db, 36, 40)
    instant = pitr.server_now(pg)
    pg.sql("DELETE FROM items", db)
    archive_wal(conn, storage, source=db, settings=pitr.SETTINGS)
    b_start = segno_of(parse_lsn(b.data["base"]["start_lsn"]), b.data["base"]["segment_size"])
    a_start = segno_of(parse_lsn(a.data["base"]["start_lsn"]), a.data["base"]["segment_size"])
    assert a_start < b_start
    before = set(storage.list_keys(f"postgres/{db}/"))

    def run(dry_run: bool):
        instance = dg.DagsterInstance.ephemeral()
        result = build_defs().resolve_job_def("apply_retention").execute_in_process(
            run_config={"ops": {"apply_retention_op": {"config": {"dry_run": dry_run}}}}, instance=instance,
        )  # fmt: skip
        (out,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        return out.event_specific_data.metadata

    dry = run(True)
    assert dry["planned_deletions"].value >= 2 and "postgres_pitr" in dry["plan"].value
    assert set(storage.list_keys(f"postgres/{db}/")) == before  # the dry run deleted nothing
    run(False)
    after = set(storage.list_keys(f"postgres/{db}/"))
    gone = before - after
    assert a.key in gone and a.artifact_key in gone and a.data["base"]["backup_manifest"]["key"] in gone
    assert {b.key, c.key, b.artifact_key, c.artifact_key} <= after
    complete = [k for k in before if ".partial" not in k]
    archived_before_b = {s for s in wal_segnos(complete) if s < b_start}
    assert archived_before_b and wal_segnos(k for k in gone if ".partial" not in k) == archived_before_b
    assert all(segno >= b_start for segno in wal_segnos(after))  # the rest: every file from B's start on
    audited = [r for r in read_audit(storage) if r["action"] == "delete"]
    assert any(r["artifact"].endswith(a.key) for r in audited) and all(r["result"] == "ok" for r in audited)

    with restore_to_instant(storage, source=db, target_time=between, tmp_dir=str(work)) as server:
        assert pitr.ids(server.conn(db)) == list(range(1, 31))
        assert server.plan.base.key == b.key
    with restore_to_instant(storage, source=db, target_time=instant, tmp_dir=str(work)) as server:
        assert pitr.ids(server.conn(db)) == list(range(1, 41))

    window = recoverable_window(storage, db)
    assert window.earliest == b.taken_at and window.latest is not None and window.latest > instant
    assert window.achieved_rpo_seconds is not None and window.achieved_rpo_seconds >= 0
    assert run(False)["planned_deletions"].value == 0  # nothing more: B and C are the floor

    # The health report (its asset, as scheduled) shows the window and the achieved RPO.
    report = (
        build_defs()
        .resolve_job_def("backup_health_report_job")
        .execute_in_process(instance=dg.DagsterInstance.ephemeral())
    )
    (materialization,) = report.asset_materializations_for_node("backup_health_report")
    text = materialization.metadata["report"].value
    assert (
        "Point-in-time recovery" in text and f"| **postgres_pitr** | {iso(b.taken_at)} | {iso(window.latest)} |" in text
    )
    assert materialization.metadata["postgres_pitr_achieved_rpo_s"].value == window.achieved_rpo_seconds
