"""The secrets scan: back up and restore PostgreSQL and Redis with password-bearing DATABASE_URL and REDIS_URL
on a persistent Dagster instance, then search everything that was written — the instance's event log and
run storage (SQLite files), run configs, compute logs, manifests, audit records, drill reports and the
process's own output — for either password. None may be found."""

import json

import dagster as dg

from cidadao_backup_dagster.core.postgres import PgConnection
from cidadao_backup_dagster.definitions import build_defs
from cidadao_backup_dagster.demo import seed

from .conftest import unique_name
from .redis_fixtures import populate_every_type

pytest_plugins = ["cidadao_backup_dagster_tests.redis_fixtures"]

PG_PASSWORD = "pg-S3cret-in-the-url"
REDIS_PASSWORD = "redis-S3cret-in-the-url"


def test_no_password_anywhere(make_database, redis_server, monkeypatch, tmp_path, capfd, drop_later):
    for var in ("OFFSITE_STORAGE_URL", "BACKUP_AGE_RECIPIENTS", "CIDADAO_ENV", "REDIS_SOURCE_NAME"):
        monkeypatch.delenv(var, raising=False)
    url = make_database("cbd_secrets")
    seed(PgConnection.from_url(url), investigations=150)
    monkeypatch.setenv("DATABASE_URL", url.replace("postgres@", f"postgres:{PG_PASSWORD}@"))  # trust auth: ignored
    source = redis_server(password=REDIS_PASSWORD)
    populate_every_type(source.client(), source)
    monkeypatch.setenv("REDIS_URL", source.url(password=REDIS_PASSWORD))
    storage_root = tmp_path / "backups"
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{storage_root}")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    target = redis_server()
    restored_db = unique_name("cbd_secrets_restored")
    drop_later.append(restored_db)
    home = tmp_path / "dagster_home"
    home.mkdir()

    with dg.instance_for_test(temp_dir=str(home)) as instance:
        defs = build_defs()

        def run(job, partition=None, config=None):
            return defs.resolve_job_def(job).execute_in_process(
                partition_key=partition, run_config=config, instance=instance, raise_on_error=False
            )

        assert run("postgres_daily_backup_job", "2026-11-24").success
        assert run(
            "restore_postgres", config={"ops": {"restore_postgres_op": {"config": {"target_database": restored_db}}}}
        ).success
        assert run("recover_rows", config={"ops": {"recover_rows_op": {"config": {"where": "TRUE"}}}}).success
        assert run("postgres_restore_drill_job", "2026-10-01").success
        assert run("redis_snapshot_job", "2026-11-24-13:00").success
        restore = {"ops": {"restore_redis_op": {"config": {"target_url": target.url()}}}}
        assert run("restore_redis", config=restore).success
        assert run("redis_restore_drill_job", "2026-10-01").success
        # a failing run too: errors are where secrets usually leak
        monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:5432/no_such_database")
        assert (
            not build_defs()
            .resolve_job_def("postgres_daily_backup_job")
            .execute_in_process(partition_key="2026-11-23", instance=instance, raise_on_error=False)
            .success
        )
        configs = [json.dumps(r.run_config) for r in instance.get_runs()]
        events = [repr(e) for r in instance.get_runs() for e in instance.all_logs(r.run_id)]
    assert len(configs) == 8 and len(events) > 50

    written = [p for root in (home, storage_root) for p in root.rglob("*") if p.is_file()]
    assert any(p.name.startswith("manifest") for p in written) and any("/audit/" in str(p) for p in written)
    output = capfd.readouterr()
    haystacks = {str(p): p.read_bytes() for p in written}
    haystacks["run configs"] = "\n".join(configs).encode()
    haystacks["event log"] = "\n".join(events).encode()
    haystacks["stdout/stderr"] = (output.out + output.err).encode()
    for secret in (PG_PASSWORD, REDIS_PASSWORD):
        leaks = [where for where, data in haystacks.items() if secret.encode() in data]
        assert not leaks, f"{secret!r} found in {leaks}"
