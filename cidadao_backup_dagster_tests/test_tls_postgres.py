"""A managed-style server: TLS only (`hostssl ... scram-sha-256`, a throwaway CA, CN=localhost and SAN 127.0.0.1).
The URL's `?sslmode=verify-full&sslrootcert=...` must reach every connection (psycopg, pg_dump, pg_restore,
on the source, the restore target and the scratch server); a URL without TLS must fail saying to add sslmode."""

import psycopg
import pytest

from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.demo import seed

from .pg_servers import debian_bin_dirs, make_tls_files, private_cluster
from .test_recovery import failure_message, leftover_databases, output_metadata, run


@pytest.fixture(scope="module")
def tls_server():
    bin_dirs = debian_bin_dirs()
    if not bin_dirs:
        pytest.fail("initdb not found under /usr/lib/postgresql/*/bin: install the postgresql server package")
    with private_cluster(bin_dirs[-1], tls=True) as cluster:
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE cbd_tls")
        seed(PgConnection.from_url(cluster.url("cbd_tls")), investigations=300)
        yield cluster


@pytest.fixture
def env(monkeypatch, tmp_path, tls_server):
    for var in ("OFFSITE_STORAGE_URL", "RESTORE_TMPDIR", "DRILL_DATABASE_URL", "RESTORE_TARGET_PASSWORD", "PG_BIN_DIR",
                "PG_BIN_DIRS", "BACKUP_AGE_RECIPIENTS", "CIDADAO_ENV", "PGSSLMODE", "PGSSLROOTCERT"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABASE_URL", tls_server.url("cbd_tls"))
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    return tmp_path


def dumps(folder) -> list:
    return list((folder / "backups").rglob("*.dump.zst"))


def test_backup_restore_drill_and_recover_rows_over_verified_tls(env, tls_server, monkeypatch):
    with psycopg.connect(tls_server.url("cbd_tls")) as conn:  # every connection this server accepts is TLS
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]

    backed = run("postgres_daily_backup_job", partition="2026-11-24")
    assert backed.success, failure_message(backed)
    assert {e.check_name: e.passed for e in backed.get_asset_check_evaluations()}["integrity"]

    # A target given as server only, without TLS settings or password: the source's server, so it inherits both.
    restored = run(
        "restore_postgres",
        {"target_server_url": f"postgresql://postgres@127.0.0.1:{tls_server.port}", "target_database": "cbd_tls_copy"},
    )
    assert restored.success, failure_message(restored)
    assert output_metadata(restored)["rows"] == 316
    with psycopg.connect(tls_server.url("cbd_tls_copy")) as conn:
        assert conn.execute("SELECT count(*) FROM investigations").fetchone()[0] == 300

    # The scratch server named with its own TLS settings (and no database part) for the drill and recover_rows.
    scratch = tls_server.url().replace("/postgres?", "?")
    monkeypatch.setenv("DRILL_DATABASE_URL", scratch)
    drill = run("postgres_restore_drill_job", partition="2026-11-01")
    assert drill.success, failure_message(drill)
    assert {e.check_name: e.passed for e in drill.get_asset_check_evaluations()}["drill_passed"]

    with psycopg.connect(tls_server.url("cbd_tls")) as conn:
        deleted = conn.execute("DELETE FROM investigations WHERE status = 'failed' RETURNING id").fetchall()
    assert len(deleted) > 5
    recovered = run("recover_rows", {"where": "status = 'failed'", "dry_run": False})
    assert recovered.success, failure_message(recovered)
    assert output_metadata(recovered)["inserted"] == len(deleted)
    assert sorted(leftover_databases(tls_server.url(), "cbd_")) == ["cbd_tls", "cbd_tls_copy"]  # no scratch left


def test_a_url_without_tls_fails_saying_to_add_sslmode(env, tls_server, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", tls_server.url("cbd_tls", tls={"sslmode": "disable"}))
    result = run("postgres_daily_backup_job", partition="2026-11-24")
    assert not result.success
    message = failure_message(result)
    assert "no encryption" in message and "the server accepts only TLS connections: add sslmode" in message
    assert "sslmode=verify-full&sslrootcert=" in message and tls_server.password not in message
    assert dumps(env) == []


def test_a_certificate_from_another_ca_is_refused_under_verify_full(env, tls_server, monkeypatch, tmp_path):
    other_ca, _, _ = make_tls_files(tmp_path / "other", name="someone else's CA")
    tls = {"sslmode": "verify-full", "sslrootcert": str(other_ca)}
    monkeypatch.setenv("DATABASE_URL", tls_server.url("cbd_tls", tls=tls))
    result = run("postgres_daily_backup_job", partition="2026-11-24")
    assert not result.success
    message = failure_message(result)
    assert "certificate verify failed" in message and "sslrootcert must name the CA file" in message
    assert dumps(env) == []
