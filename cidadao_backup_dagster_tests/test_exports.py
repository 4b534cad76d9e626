"""The critical data exports' core, on real PostgreSQL and both storage backends: every export is read back
with pandas (and gzip/csv/json from the standard library) and compared value by value with the source."""

import gzip
import io
import json
import math
import threading
from datetime import UTC, datetime, timedelta

import pandas as pd
import psycopg
import pytest
from psycopg.types.json import Jsonb

from cidadao_backup_dagster.core.artifacts.manifest import Manifest, iso, read_manifest, valid_manifests
from cidadao_backup_dagster.core.artifacts.pipeline import stream_to_writer
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.errors import ConfigurationError
from cidadao_backup_dagster.core.exports.export import export_partitions
from cidadao_backup_dagster.core.exports.health import drift_verdict, export_freshness, row_count_verdict, schema_drift
from cidadao_backup_dagster.core.exports.inspect import inspect_export
from cidadao_backup_dagster.core.exports.spec import (
    INVESTIGATIONS_COLUMNS,
    ExportSchemaError,
    ExportSettings,
    ExportSpec,
    Window,
    iter_days,
    parse_columns,
    parse_table,
)
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.demo import SCHEMA

PASSWORD = "exp0rt-Pa55word"
DAY = "2026-11-24"
DAY_START = datetime(2026, 11, 24, tzinfo=UTC)
INVESTIGATIONS = ExportSpec("investigations", "jsonl", INVESTIGATIONS_COLUMNS, "created_at")
AGENTS = ExportSpec("agent_instances", "csv")

# Values that break naive exports: quotes and backslashes (text-mode COPY doubles them), newlines and tabs,
# characters outside the BMP, SQL NULL next to JSON null, deep jsonb, numbers beyond a double's precision,
# and timestamps written with other offsets that land on either side of the UTC day's edges.
TRICKY = [
    ("Contratos de \"merenda\" em São Paulo — it's 100%", "completed", {"anomalies": [{"score": 0.1}]},
     {"agents": ["Zumbi dos Palmares"], "note": "C:\\temp\\new\\table"}, "2026-11-24T00:00:00+00:00"),
    ("linha 1\nlinha 2\r\nlinha\t3 \\n não é quebra", "running", None, {}, "2026-11-24T23:59:59.999999+00:00"),
    ("Ünïcødé ✓ 🇧🇷 中文 עברית \u0001 control", "failed", {"nested": {"deep": [1, 2.5, None, True, "x\"y", {"k": []}]}},
     {"big": 9007199254740993, "neg": -0.000123, "s": "😀"}, "2026-11-24T20:59:59-03:00"),  # 23:59:59 UTC
    ("JSON null, not SQL NULL", "pending", "null", {"n": None}, "2026-11-24T12:00:00.5+05:30"),
    ("next day by offset", "cancelled", {}, {}, "2026-11-24T21:00:00-03:00"),  # 2026-11-25 00:00 UTC
    ("previous day", "completed", {}, {}, "2026-11-23T23:59:59.999999+00:00"),
]  # fmt: skip


def _tricky_database(make_database) -> str:
    url = make_database("cbd_exp")
    with psycopg.connect(url) as conn:
        conn.execute(SCHEMA)
        with conn.cursor() as cur:
            for query, status, results, metadata, created in TRICKY:
                res = Jsonb(None) if results == "null" else (None if results is None else Jsonb(results))
                cur.execute(
                    "INSERT INTO investigations (user_id, query, status, results, metadata, created_at) "
                    "VALUES ('u', %s, %s, %s, %s, %s)",
                    (query, status, res, Jsonb(metadata), created),
                )
            cur.execute(
                "INSERT INTO agent_instances (agent_name, agent_type, status, capabilities, config, "
                "tasks_completed, last_heartbeat) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                ('Zé "Pequeno", o\nsegundo', "investigator", "idle", ["a,b", 'c"d', "ação"],
                 Jsonb({"temperature": 0.2, "tools": ["x", {"y": None}]}), 7, "2026-11-24 10:00:00.123456-03"),
            )  # fmt: skip
            cur.execute(
                "INSERT INTO agent_instances (agent_name, agent_type, status) VALUES ('Nanã', 'memory', 'busy')"
            )
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


@pytest.fixture
def source(make_database) -> PgConnection:
    return PgConnection.from_url(_tricky_database(make_database))


def _source_rows(conn: PgConnection, where: str = "", params=()) -> list[dict]:
    with conn.connect() as c, c.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(f"SELECT id, query, status, results, metadata, created_at FROM investigations {where}", params)
        return cur.fetchall()


def _nan_to_none(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def _read_jsonl(storage, manifest: Manifest) -> pd.DataFrame:
    data = storage.read_bytes(manifest.artifact_key)
    if not gzip.decompress(data):
        return pd.DataFrame(columns=list(INVESTIGATIONS_COLUMNS))
    return pd.read_json(io.BytesIO(data), lines=True, compression="gzip", dtype=False, precise_float=True)


def _export_day(source, storage, day: str = DAY, spec: ExportSpec = INVESTIGATIONS, **kw) -> Manifest:
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    (manifest,) = export_partitions(
        source,
        storage,
        spec,
        series=spec.series(source.dbname, "daily"),
        windows=[Window(day, start, start + timedelta(days=1))],
        **kw,
    )
    return manifest


# ----------------------------------------------------------------------------------------------- JSON


def test_daily_json_export_reads_back_identical_in_pandas(source, storage):
    manifest = _export_day(source, storage)
    expected = _source_rows(
        source, "WHERE created_at >= %s AND created_at < %s ORDER BY id", (DAY_START, DAY_START + timedelta(days=1))
    )
    assert len(expected) == 4  # the day's edges: 00:00:00 in, 23:59:59.999999 in, next 00:00 out, -03:00 offsets
    frame = _read_jsonl(storage, manifest).sort_values("id")
    assert list(frame.columns) == list(INVESTIGATIONS_COLUMNS)  # the strategy's columns, in its order
    assert len(frame) == len(expected)
    for src, (_, got) in zip(expected, frame.iterrows(), strict=True):
        assert got["id"] == str(src["id"])
        assert got["query"] == src["query"]
        assert got["status"] == src["status"]
        assert _nan_to_none(got["results"]) == src["results"]  # nested jsonb as nested JSON; NULL -> null
        assert got["metadata"] == src["metadata"]
        assert got["created_at"].endswith("+00:00")  # ISO 8601 with its offset
        assert pd.Timestamp(got["created_at"]) == pd.Timestamp(src["created_at"])  # same instant, to the µs
    by_query = {r["query"]: r for r in frame.to_dict("records")}
    assert by_query["Ünïcødé ✓ 🇧🇷 中文 עברית \u0001 control"]["metadata"]["big"] == 9007199254740993
    assert "previous day" not in by_query and "next day by offset" not in by_query

    contents = manifest.data["contents"]
    assert contents["records"] == contents["source_rows"] == 4 and manifest.data["artifact"]["lines"] == 4
    assert contents["columns"][3] == {"name": "results", "type": "jsonb"}
    assert contents["window"] == {
        "column": "created_at",
        "start": "2026-11-24T00:00:00Z",
        "end": "2026-11-25T00:00:00Z",
    }
    assert manifest.artifact_key.endswith(".jsonl.gz")
    assert manifest.artifact_key.startswith(f"exports/{source.dbname}/investigations/daily/{DAY}/investigations_{DAY}_")
    assert PASSWORD not in json.dumps(manifest.data)
    assert inspect_export(storage, manifest).ok


def test_each_line_is_one_json_object_readable_by_json_and_jq_style_tools(source, tmp_path):
    storage = LocalStorage(tmp_path)
    manifest = _export_day(source, storage)
    raw = gzip.decompress((tmp_path / manifest.artifact_key).read_bytes())  # what `zcat` prints
    lines = raw.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 5  # four records, each ending with a newline
    objs = [json.loads(line) for line in lines[:-1]]
    assert all(list(o) == list(INVESTIGATIONS_COLUMNS) for o in objs)
    quoted = next(o for o in objs if o["query"].startswith("Contratos"))
    assert quoted["query"] == 'Contratos de "merenda" em São Paulo — it\'s 100%'
    assert quoted["metadata"]["note"] == "C:\\temp\\new\\table"  # backslashes survive (text-mode COPY doubles them)
    assert next(o for o in objs if o["status"] == "running")["query"] == "linha 1\nlinha 2\r\nlinha\t3 \\n não é quebra"


def test_a_month_in_one_call_is_one_snapshot_with_a_file_per_day(source, tmp_path):
    storage = LocalStorage(tmp_path)
    windows = list(iter_days(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)))
    manifests = export_partitions(
        source, storage, INVESTIGATIONS, series=INVESTIGATIONS.series(source.dbname, "daily"), windows=windows
    )
    assert [m.partition for m in manifests] == [w.key for w in windows] and len(manifests) == 30
    assert len({m.data["timings"]["snapshot_at"] for m in manifests}) == 1  # one transaction for all
    records = {m.partition: m.data["contents"]["records"] for m in manifests}
    assert records["2026-11-23"] == 1 and records["2026-11-24"] == 4 and records["2026-11-25"] == 1
    assert sum(records.values()) == len(TRICKY)
    assert all(inspect_export(storage, m).ok for m in manifests)


def test_a_day_without_rows_is_a_valid_empty_export(source, tmp_path):
    storage = LocalStorage(tmp_path)
    manifest = _export_day(source, storage, "2026-06-01")
    contents = manifest.data["contents"]
    assert contents["records"] == contents["source_rows"] == 0 and manifest.data["artifact"]["lines"] == 0
    data = (tmp_path / manifest.artifact_key).read_bytes()
    assert data[:2] == b"\x1f\x8b" and gzip.decompress(data) == b""  # a real (empty) gzip file
    assert len(_read_jsonl(storage, manifest)) == 0
    found = inspect_export(storage, manifest)
    assert found.ok and found.records == 0
    assert row_count_verdict(manifest, found).passed


def test_rows_committed_after_the_snapshot_are_neither_counted_nor_exported(source, tmp_path):
    """The count and the COPY share one REPEATABLE READ snapshot: a row committed in between is in neither."""

    def insert_after_snapshot(_table):
        with psycopg.connect(source.conninfo()) as other:
            other.execute(
                "INSERT INTO investigations (user_id, query, status, created_at) VALUES ('u', 'late', 'pending', %s)",
                (DAY_START + timedelta(hours=6),),
            )

    storage = LocalStorage(tmp_path)
    manifest = _export_day(source, storage, on_resolved=insert_after_snapshot)
    assert manifest.data["contents"]["source_rows"] == manifest.data["contents"]["records"] == 4
    assert "late" not in set(_read_jsonl(storage, manifest)["query"])
    assert _export_day(source, storage).data["contents"]["records"] == 5  # the next run sees it


def test_rerun_keeps_both_exports_and_the_newest_is_current(source, tmp_path):
    storage = LocalStorage(tmp_path)
    first = _export_day(source, storage)
    second = _export_day(source, storage)
    files = sorted(p.name for p in (tmp_path / first.artifact_key).parent.iterdir())
    objects = sorted(k.rsplit("/", 1)[1] for k in (first.artifact_key, second.artifact_key))
    assert [f for f in files if not f.startswith("manifest")] == objects  # a re-run deletes nothing
    assert read_manifest(storage, first.data["series"], first.partition).artifact_key == second.artifact_key
    assert first.raw_sha256 == second.raw_sha256  # same rows, same bytes


def test_json_and_naive_timestamp_columns_stay_one_object_per_line_with_offsets(make_database, tmp_path):
    """`json` is embedded verbatim by row_to_json (its own newlines too) and `timestamp` prints without an
    offset: both are normalised so every line is one object and every timestamp carries +00:00."""
    url = make_database("cbd_exp")
    with psycopg.connect(url) as conn:
        conn.execute(
            'CREATE SCHEMA app; CREATE TABLE app."Events" (id int, "Payload" json, at timestamp, note text, day date)'
        )
        conn.execute(
            """INSERT INTO app."Events" VALUES (1, '{"a":\n  [1, 2]}', '2026-11-24 10:00:00', NULL, '2026-11-24'),
                                               (2, NULL, '2026-11-24 23:00:00.25', 'x', NULL)"""
        )
    spec = ExportSpec("app.Events", "jsonl", ("id", "Payload", "at", "note"), "at")
    storage = LocalStorage(tmp_path)
    manifest = _export_day(PgConnection.from_url(url), storage, spec=spec)
    lines = gzip.decompress((tmp_path / manifest.artifact_key).read_bytes()).splitlines()
    rows = sorted((json.loads(line) for line in lines), key=lambda r: r["id"])
    assert rows == [
        {"id": 1, "Payload": {"a": [1, 2]}, "at": "2026-11-24T10:00:00+00:00", "note": None},
        {"id": 2, "Payload": None, "at": "2026-11-24T23:00:00.25+00:00", "note": "x"},
    ]
    assert manifest.data["contents"]["columns"][1] == {"name": "Payload", "type": "json"}
    assert manifest.artifact_key.startswith(f"exports/{PgConnection.from_url(url).dbname}/app.Events/daily/")


# ------------------------------------------------------------------------------------------------ CSV


def test_weekly_csv_is_byte_for_byte_copy_csv_header_and_reads_back_in_pandas(source, storage):
    series = AGENTS.series(source.dbname, "weekly")
    (manifest,) = export_partitions(source, storage, AGENTS, series=series, windows=[Window("2026-11-22")])
    raw = gzip.decompress(storage.read_bytes(manifest.artifact_key))
    with source.connect() as c, c.cursor() as cur:
        cur.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'")
        with cur.copy("COPY agent_instances TO STDOUT WITH CSV HEADER") as copy:
            reference = b"".join(bytes(chunk) for chunk in copy)
    assert raw == reference  # exactly what `COPY agent_instances TO STDOUT WITH CSV HEADER` writes

    frame = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False)
    with source.connect() as c, c.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SET TimeZone = 'UTC'")
        cols = [r["attname"] for r in cur.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'agent_instances'::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum"
        )]  # fmt: skip
        text_rows = cur.execute(
            "SELECT " + ", ".join(f"{c}::text AS {c}" for c in cols) + " FROM agent_instances ORDER BY id::text"
        ).fetchall()
        typed = {str(r["id"]): r for r in cur.execute("SELECT * FROM agent_instances").fetchall()}
    assert list(frame.columns) == cols
    frame = frame.sort_values("id").reset_index(drop=True)
    for src, (_, got) in zip(text_rows, frame.iterrows(), strict=True):
        for col in cols:
            assert got[col] == (src[col] if src[col] is not None else ""), col  # NULL is an empty field
        row = typed[got["id"]]
        assert json.loads(got["config"]) == row["config"]
        if row["last_heartbeat"] is not None:
            assert pd.Timestamp(got["last_heartbeat"]) == pd.Timestamp(row["last_heartbeat"])
    tricky = frame[frame["agent_name"].str.contains("Pequeno")].iloc[0]
    assert tricky["agent_name"] == 'Zé "Pequeno", o\nsegundo' and tricky["capabilities"] == '{"a,b","c\\"d",ação}'
    assert pd.Timestamp(tricky["last_heartbeat"]) == pd.Timestamp("2026-11-24 13:00:00.123456+00:00")
    contents = manifest.data["contents"]
    assert contents["records"] == contents["source_rows"] == 2
    assert manifest.data["artifact"]["lines"] == 4  # header, two records, and the newline inside a quoted field
    found = inspect_export(storage, manifest)
    assert found.ok and found.records == 2 and found.header == cols


# -------------------------------------------------------------------------------------------- bad input


def test_missing_table_fails_naming_it_and_writes_nothing(source, tmp_path):
    spec = ExportSpec("investigationz", "jsonl", INVESTIGATIONS_COLUMNS, "created_at", table_variable="MY_TABLE_VAR")
    with pytest.raises(ExportSchemaError) as err:
        _export_day(source, LocalStorage(tmp_path), spec=spec)
    assert "'investigationz' does not exist" in str(err.value) and "MY_TABLE_VAR" in str(err.value)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_missing_column_fails_naming_it_and_listing_the_real_ones(source, tmp_path):
    spec = ExportSpec(
        "investigations", "jsonl", ("id", "querry", "status"), "created_at", columns_variable="MY_COLUMNS_VAR"
    )
    with pytest.raises(ExportSchemaError) as err:
        _export_day(source, LocalStorage(tmp_path), spec=spec)
    message = str(err.value)
    assert "'querry'" in message and "MY_COLUMNS_VAR" in message and "query" in message
    assert PASSWORD not in message
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("column, complaint", [("created", "does not exist"), ("status", "not a timestamp")])
def test_bad_time_column_fails_naming_it(source, tmp_path, column, complaint):
    spec = ExportSpec("investigations", "jsonl", INVESTIGATIONS_COLUMNS, column, time_column_variable="TIME_VAR")
    with pytest.raises(ExportSchemaError, match=complaint) as err:
        _export_day(source, LocalStorage(tmp_path), spec=spec)
    assert column in str(err.value) and "TIME_VAR" in str(err.value)


def test_column_and_table_settings_are_parsed_strictly():
    assert parse_columns(" id, query ,status ", "V") == ("id", "query", "status")
    assert parse_columns("*", "V") is None and parse_columns("", "V") is None
    for bad in ("id,,query", "id,query,id"):
        with pytest.raises(ConfigurationError, match="^V: "):
            parse_columns(bad, "V")
    assert parse_table("public.investigations", "T") == ("public", "investigations")
    assert parse_table("investigations", "T") == (None, "investigations")
    for bad in ("a.b.c", ".x", " "):
        with pytest.raises(ConfigurationError, match="^T: "):
            parse_table(bad, "T")
    with pytest.raises(ConfigurationError, match="EXPORT_GZIP_LEVEL"):
        export_partitions(None, None, INVESTIGATIONS, series="s", windows=[Window("x")], settings=ExportSettings(10))


# ------------------------------------------------------------------------------------- reading it back


def _rewrite(storage, manifest: Manifest, content: bytes, *, fix_manifest: bool) -> Manifest:
    """Replace the object's content; with `fix_manifest`, also make the manifest describe it (a consistent
    but wrong export, as a buggy exporter would leave); else leave the manifest as it was (corruption)."""
    import hashlib

    stored = gzip.compress(content)
    storage.put_bytes(manifest.artifact_key, stored)
    if not fix_manifest:
        return manifest
    data = json.loads(json.dumps(manifest.data))
    data["artifact"].update(
        stored_bytes=len(stored),
        stored_sha256=hashlib.sha256(stored).hexdigest(),
        raw_bytes=len(content),
        raw_sha256=hashlib.sha256(content).hexdigest(),
        lines=content.count(b"\n"),
    )
    data["contents"]["records"] = content.count(b"\n")
    return Manifest(data)


def test_inspection_catches_a_missing_row_both_ways(source, tmp_path):
    storage = LocalStorage(tmp_path)
    manifest = _export_day(source, storage)
    raw = gzip.decompress(storage.read_bytes(manifest.artifact_key))
    short = b"".join(raw.splitlines(keepends=True)[1:])
    # Consistent but short (the exporter lost a row): the file matches its manifest, the count does not.
    consistent = _rewrite(storage, manifest, short, fix_manifest=True)
    found = inspect_export(storage, consistent)
    assert found.ok and found.records == 3
    verdict = row_count_verdict(consistent, found)
    assert not verdict.passed and verdict.description.startswith("1 row missing")
    # Edited after the fact: the manifest no longer matches the object.
    found = inspect_export(storage, _rewrite(storage, manifest, short, fix_manifest=False))
    assert not found.ok and any("SHA-256" in p for p in found.problems) and any("lines" in p for p in found.problems)


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "not-json", "wrong-keys", "no-final-newline"])
def test_inspection_catches_damage(source, tmp_path, damage):
    storage = LocalStorage(tmp_path)
    manifest = _export_day(source, storage)
    path = tmp_path / manifest.artifact_key
    data = path.read_bytes()
    raw = gzip.decompress(data)
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
        expect = "truncated"
    elif damage == "bitflip":
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0x40
        path.write_bytes(bytes(flipped))
        expect = "SHA-256"
    elif damage == "not-json":
        manifest = _rewrite(storage, manifest, raw.replace(b'"id":', b'"id" ', 1), fix_manifest=True)
        expect = "line 1 is not JSON"
    elif damage == "wrong-keys":
        manifest = _rewrite(storage, manifest, raw.replace(b'"status":', b'"state":', 1), fix_manifest=True)
        expect = "keys that differ"
    else:
        manifest = _rewrite(storage, manifest, raw[:-1], fix_manifest=True)
        expect = "does not end with a newline"
    found = inspect_export(storage, manifest)
    assert not found.ok and any(expect in p for p in found.problems), found.problems


def test_inspection_of_a_missing_object(source, tmp_path):
    storage = LocalStorage(tmp_path)
    manifest = _export_day(source, storage)
    (tmp_path / manifest.artifact_key).unlink()
    found = inspect_export(storage, manifest)
    assert found.problems == [f"object {storage.uri(manifest.artifact_key)} is missing"]
    assert not row_count_verdict(manifest, found).passed


# ------------------------------------------------------------------------------------- health rules


def _cols(*pairs):
    return [{"name": n, "type": t} for n, t in pairs]


def test_schema_drift_names_added_dropped_and_retyped_columns():
    before = _cols(("id", "uuid"), ("results", "jsonb"), ("legacy", "text"))
    after = _cols(("id", "uuid"), ("results", "json"), ("score", "numeric(5,4)"))
    assert schema_drift(before, after) == [
        "column 'score' added (numeric(5,4))",
        "column 'legacy' dropped (was text)",
        "column 'results' retyped jsonb -> json",
    ]
    assert schema_drift(before, before) == []
    current = Manifest({"partition": "b", "contents": {"columns": after}})
    verdict = drift_verdict(current, Manifest({"partition": "a", "contents": {"columns": before}}))
    assert not verdict.passed and "'legacy' dropped" in verdict.description and "since a" in verdict.description
    assert drift_verdict(current, None).passed


def _manifest(partition: str, snapshot: datetime) -> Manifest:
    return Manifest({"partition": partition, "timings": {"snapshot_at": iso(snapshot)}, "artifact": {}})


def test_freshness_warns_after_48h_and_errors_after_7_days_judging_the_newest_partition():
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    warn, error = timedelta(hours=48), timedelta(days=7)
    ok, severity = export_freshness([_manifest("2026-11-24", now - timedelta(hours=9))], now, warn, error)
    assert ok.passed
    stale, severity = export_freshness([_manifest("2026-11-21", now - timedelta(hours=60))], now, warn, error)
    assert not stale.passed and severity == "WARN" and "60.0 h old" in stale.description
    # A backfill of an old day, made just now, does not make the series fresh.
    valid = [_manifest("2026-10-01", now), _manifest("2026-11-15", now - timedelta(days=8))]
    lost, severity = export_freshness(valid, now, warn, error)
    assert not lost.passed and severity == "ERROR" and "2026-11-15" in lost.description
    none, severity = export_freshness([], now, warn, error)
    assert not none.passed and severity == "ERROR" and "No valid export" in none.description


def test_valid_manifests_limit_reads_only_the_newest(tmp_path, monkeypatch):
    from cidadao_backup_dagster.core.artifacts import manifest as manifest_module
    from cidadao_backup_dagster.core.artifacts.manifest import write_manifest

    storage = LocalStorage(tmp_path)
    for day in range(1, 11):
        key = f"s/2026-11-{day:02d}/x"
        storage.put_bytes(key, b"x")
        data = {"partition": f"2026-11-{day:02d}", "artifact": {"key": key, "stored_bytes": 1}}
        write_manifest(storage, "s", Manifest({**data, "timings": {"snapshot_at": "2026-11-01T00:00:00Z"}}))
    (tmp_path / "s/2026-11-09/x").unlink()  # not valid: its object is gone
    reads = []
    real = manifest_module.parse_manifest  # every manifest read goes through it: count which partitions were read
    monkeypatch.setattr(manifest_module, "parse_manifest", lambda st, k: reads.append(k.split("/")[1]) or real(st, k))
    newest = valid_manifests(storage, "s", before="2026-11-10", limit=3)
    assert [m.partition for m in newest] == ["2026-11-06", "2026-11-07", "2026-11-08"]
    assert reads == ["2026-11-09", "2026-11-08", "2026-11-07", "2026-11-06"]
    assert [m.partition for m in valid_manifests(storage, "s")][-2:] == ["2026-11-08", "2026-11-10"]
    assert read_manifest(storage, "s", "2026-11-10") is not None


# ------------------------------------------------------------------------------------------- pipeline


def test_gzip_codec_streams_one_member_that_gzip_and_pandas_read(tmp_path):
    payload = b"".join(json.dumps({"n": i, "s": "ação"}).encode() + b"\n" for i in range(200_000))
    storage = LocalStorage(tmp_path)
    writer = storage.open_write("x.jsonl.gz")
    stats = stream_to_writer(io.BytesIO(payload), writer, codec="gzip", count_lines=True, read_ahead=2)
    writer.commit()
    stored = (tmp_path / "x.jsonl.gz").read_bytes()
    assert gzip.decompress(stored) == payload and stats.raw_lines == 200_000
    assert stats.raw_bytes == len(payload) and stats.stored_bytes == len(stored)
    assert stored[3] == 0 and stored[4:8] == b"\0\0\0\0"  # no file name, zero mtime: same input, same bytes
    assert len(pd.read_json(tmp_path / "x.jsonl.gz", lines=True)) == 200_000


def test_parallel_gzip_is_one_standard_member_as_small_as_a_single_stream():
    import subprocess
    import zlib

    from cidadao_backup_dagster.core.artifacts.pipeline import GzipStreamWriter

    payload = b"".join(json.dumps({"n": i, "q": f"consulta {i % 977} ação"}).encode() + b"\n" for i in range(150_000))
    outputs = {}
    for threads in (1, 3):
        out = io.BytesIO()
        writer = GzipStreamWriter(out, 6, threads=threads)
        for i in range(0, len(payload), 300_001):  # writes that straddle the 1 MiB blocks
            writer.write(payload[i : i + 300_001])
        writer.close()
        outputs[threads] = out.getvalue()
    assert gzip.decompress(outputs[1]) == payload
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert inflate.decompress(outputs[3]) == payload and inflate.eof and not inflate.unused_data  # one member
    assert subprocess.run(["gzip", "-t"], input=outputs[3]).returncode == 0
    assert len(outputs[3]) < len(outputs[1]) * 1.01  # the 32 KiB priming keeps a single stream's ratio
    for tiny in (b"", b"x"):
        out = io.BytesIO()
        writer = GzipStreamWriter(out, 6, threads=2)
        writer.write(tiny)
        writer.close()
        assert gzip.decompress(out.getvalue()) == tiny


def test_read_ahead_hands_a_source_error_to_the_caller(tmp_path):
    class Failing(io.RawIOBase):
        calls = 0

        def read(self, n=-1):
            self.calls += 1
            if self.calls > 3:
                raise OSError("connection lost")
            return b"x" * 1000

    writer = LocalStorage(tmp_path).open_write("y.gz")
    with pytest.raises(OSError, match="connection lost"):
        stream_to_writer(Failing(), writer, codec="gzip", threads=2, read_ahead=2)
    writer.abort()
    assert not [t for t in threading.enumerate() if t.name.startswith(("gzip-block", "pipeline-read-ahead"))]


# ----------------------------------------------------------------------------------------- encryption


def test_encrypted_export_is_verified_shallow_without_the_key_and_deep_with_it(source, tmp_path):
    from pyrage import decrypt, x25519

    from cidadao_backup_dagster.core.artifacts.crypto import encryption_stage

    identity = x25519.Identity.generate()
    info = {"format": "age-encryption.org/v1", "recipients": ["age:test"]}
    storage = LocalStorage(tmp_path)
    manifest = _export_day(source, storage, encryption=encryption_stage([identity.to_public()]), encryption_info=info)
    assert manifest.artifact_key.endswith(".jsonl.gz.age") and manifest.data["artifact"]["encryption"] == info
    stored = (tmp_path / manifest.artifact_key).read_bytes()
    assert stored.startswith(b"age-encryption.org/v1")
    plain = gzip.decompress(decrypt(stored, [identity]))  # `age -d ... | zcat` gives the JSON Lines
    assert len(plain.splitlines()) == 4 and PASSWORD.encode() not in plain

    shallow = inspect_export(storage, manifest)  # no key: only what is stored can be checked
    assert shallow.ok and shallow.shallow and shallow.records is None
    verdict = row_count_verdict(manifest, shallow)
    assert verdict.passed and "counted while exporting" in verdict.description
    deep = inspect_export(storage, manifest, identities=[identity])
    assert deep.ok and not deep.shallow and deep.records == 4

    wrong = inspect_export(storage, manifest, identities=[x25519.Identity.generate()])
    assert not wrong.ok and any("not one of this artifact's recipients" in p for p in wrong.problems)
    flipped = bytearray(stored)
    flipped[-100] ^= 0x01
    (tmp_path / manifest.artifact_key).write_bytes(bytes(flipped))
    damaged = inspect_export(storage, manifest, identities=[identity])
    assert not damaged.ok and any("SHA-256" in p for p in damaged.problems)
    assert any("Decryption failed" in p for p in damaged.problems)
