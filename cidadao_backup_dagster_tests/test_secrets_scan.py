"""The secrets scans: run the jobs on a persistent Dagster instance (and through the `dagster` CLI), then search
everything that was written — the instance's event log and run storage (SQLite files), run configs, compute
logs, manifests, audit records, drill reports, alert bodies and the processes' own output — for every secret.
None may be found.

1. Well-formed password-bearing DATABASE_URL and REDIS_URL: back up, restore, recover, drill.
2. Every mistyped URL shape of issue 12 (a missing ':', unencoded '@ / # % ?' in the password, a password read
   as a port, credentials in a storage URL or the S3 endpoint), with every other secret of the environment set
   (target passwords, AWS secret and session token, Slack token, webhook URL, age identity), alerts delivered
   to a local webhook and a stand-in Slack API."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.definitions import build_defs
from cidadao_backup_dagster.defs.monitoring.resources import AlertSettings
from cidadao_backup_dagster.demo import seed

from .conftest import unique_name
from .redis_fixtures import populate_every_type
from .test_alerts_core import Receiver
from .test_redaction import PG_SHAPES, REDIS_SHAPES, STORAGE_SHAPES, Secret, fresh

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

    output = capfd.readouterr()
    haystacks = scan_folders(home, storage_root)
    assert any(p.startswith(str(storage_root)) and "manifest" in p for p in haystacks)
    assert any("/audit/" in p for p in haystacks)
    haystacks["run configs"] = "\n".join(configs).encode()
    haystacks["event log"] = "\n".join(events).encode()
    haystacks["stdout/stderr"] = (output.out + output.err).encode()
    assert_no_leaks(haystacks, [PG_PASSWORD, REDIS_PASSWORD])


def scan_folders(*roots: Path) -> dict[str, bytes]:
    """Every file under `roots`, as bytes (SQLite stores text as is, so a secret in an event is found)."""
    return {str(p): p.read_bytes() for root in roots for p in Path(root).rglob("*") if p.is_file()}


def instance_text(instance) -> dict[str, bytes]:
    runs = instance.get_runs()
    return {
        "run configs": "\n".join(json.dumps(r.run_config) for r in runs).encode(),
        "run tags": "\n".join(json.dumps(r.tags) for r in runs).encode(),
        "event log": "\n".join(repr(e) for r in runs for e in instance.all_logs(r.run_id)).encode(),
    }


def assert_no_leaks(haystacks: dict[str, bytes], secrets) -> None:
    found = {s: [where for where, data in haystacks.items() if s.encode() in data] for s in secrets}
    leaks = {s: where for s, where in found.items() if where}
    assert not leaks, f"secrets found: {leaks}"


# ------------------------------------------------------------------------------------- mistyped URLs

PARTITION, CLI_PARTITION, HOUR, CLI_HOUR, WEEK = (
    "2026-11-24",
    "2026-11-23",
    "2026-11-24-13:00",
    "2026-11-24-14:00",
    "2026-11-15",
)
REPO = Path(__file__).resolve().parents[1]
# One process for all steps (its compute logs are captured all the same): a step process each costs minutes here.
IN_PROCESS = json.dumps({"execution": {"config": {"in_process": {}}}})


def tick_until_quiet(defs, name, instance, alerts, cursor=None, most=200):
    """Evaluate a sensor as the daemon does until a tick finds nothing new (a run failure sensor notifies one
    failed run per tick)."""
    sensor = defs.resolve_sensor_def(name)
    for _ in range(most):
        with dg.build_sensor_context(
            instance=instance, definitions=defs, resources={"alerts": alerts}, cursor=cursor
        ) as context:
            result = sensor.evaluate_tick(context)
        if result.cursor in (None, cursor):  # None: the tick left the cursor as it was
            return cursor
        cursor = result.cursor
    raise AssertionError(f"{name} still found news after {most} ticks")


def test_mistyped_urls_leak_nowhere(make_database, redis_server, monkeypatch, tmp_path, capfd, drop_later):
    for var in ("OFFSITE_STORAGE_URL", "BACKUP_AGE_RECIPIENTS", "CIDADAO_ENV", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    secrets: list[str] = []
    receiver = Receiver()

    def secret(tag: str, char: str = "x") -> Secret:
        made = Secret(tag, char)
        secrets.extend(made.fragments)
        return made

    # Every other secret the process knows, from the environment.
    keys = tmp_path / "keys"
    keys.mkdir()
    subprocess.run(["age-keygen", "-o", str(keys / "age.key")], check=True, capture_output=True)
    identity = next(line for line in (keys / "age.key").read_text().splitlines() if line.startswith("AGE-SECRET"))
    hook = f"hooks/{fresh('T0001/B0002/hook-token')}"
    environment = {
        "RESTORE_TARGET_PASSWORD": fresh("restore-target-pw"),
        "REDIS_TARGET_PASSWORD": fresh("redis-target-pw"),
        "AWS_SECRET_ACCESS_KEY": fresh("aws/Secret+Access"),
        "AWS_SESSION_TOKEN": fresh("aws-session-token"),
        "SLACK_BOT_TOKEN": fresh("xoxb-slack-token"),
    }
    for name, value in {**environment, "SLACK_CHANNEL": "#backups", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
                        "ALERT_WEBHOOK_URL": f"{receiver.url}/{hook}",
                        "BACKUP_AGE_IDENTITY_FILE": str(keys / "age.key")}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    secrets += [*environment.values(), hook, identity]

    # One source per URL shape (BACKUP_SOURCES_FILE), plus a well-formed one whose password holds ':'.
    good_db = make_database("cbd_mistyped")
    seed(PgConnection.from_url(good_db), investigations=40)
    colon_pg = secret("pgcolon", ":")
    colon_rd = secret("rdcolon", ":")
    good_redis = redis_server(password=str(colon_rd))
    good_redis.client().mset({"session:1": "a", "session:2": "b"})
    target_redis = redis_server(password=environment["REDIS_TARGET_PASSWORD"])  # run config names no password
    sources = {"postgres": [], "redis": []}
    pg_urls = {"pg_colon": good_db.replace("postgres@", f"postgres:{colon_pg}@")}
    for name, template, char in PG_SHAPES:
        pg_urls[f"pg_{name}"] = template.format(pw=secret(f"pg{name}", char), db=f"db_{name}")
    rd_urls = {"rd_colon": good_redis.url(password=str(colon_rd))}
    for name, template, char in REDIS_SHAPES:
        rd_urls[f"rd_{name}"] = template.format(pw=secret(f"rd{name}", char), port=good_redis.port)
    for kind, urls in (("postgres", pg_urls), ("redis", rd_urls)):
        for name, url in urls.items():
            monkeypatch.setenv(f"{name.upper()}_URL", url)
            sources[kind].append({"name": name, "url_env": f"{name.upper()}_URL"})
    (tmp_path / "sources.yaml").write_text(json.dumps(sources))  # JSON is YAML
    monkeypatch.setenv("BACKUP_SOURCES_FILE", str(tmp_path / "sources.yaml"))
    storage_root = tmp_path / "backups"
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{storage_root}")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    storage_urls = [(v, t.format(pw=secret(f"st{i}", c))) for i, (v, t, c) in enumerate(STORAGE_SHAPES)]
    endpoint = f"https://AKIAEXAMPLE:{secret('endpoint')}@127.0.0.1:9"
    restored = unique_name("cbd_mistyped_restored")
    drop_later.append(restored)
    home, cli_home = tmp_path / "dagster_home", tmp_path / "dagster_home_cli"
    home.mkdir()

    try:
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            defs = build_defs()
            alerts = AlertSettings(
                slack_token=environment["SLACK_BOT_TOKEN"],
                slack_channel="#backups",
                slack_api_url=f"{receiver.url}/api/",
                webhook_url=f"{receiver.url}/{hook}",
            )
            failures = tick_until_quiet(defs, "run_failure_alert_sensor", instance, alerts)  # sets the cursor
            checks = tick_until_quiet(defs, "check_alert_sensor", instance, alerts)

            def run(job, partition=None, config=None, definitions=None):
                return (
                    (definitions or defs)
                    .resolve_job_def(job)
                    .execute_in_process(
                        partition_key=partition, run_config=config, instance=instance, raise_on_error=False
                    )
                )

            for name in pg_urls:
                assert run(f"{name}__postgres_daily_backup_job", PARTITION).success == (name == "pg_colon")
                target = restored if name == "pg_colon" else unique_name("cbd_never_made")
                restore = {"ops": {f"{name}__restore_postgres_op": {"config": {"target_database": target}}}}
                assert run(f"{name}__restore_postgres", config=restore).success == (name == "pg_colon")
            for name in rd_urls:
                assert run(f"{name}__redis_snapshot_job", HOUR).success == (name == "rd_colon")
                restore = {"ops": {f"{name}__restore_redis_op": {"config": {"target_url": target_redis.url()}}}}
                assert run(f"{name}__restore_redis", config=restore).success == (name == "rd_colon")
            # Credentials in storage URLs and in the S3 endpoint.
            for variable, url in storage_urls:
                monkeypatch.setenv(variable, url)
                job = (
                    "postgres_weekly_offsite_backup_job"
                    if variable == "OFFSITE_STORAGE_URL"
                    else "postgres_daily_backup_job"
                )
                partition = WEEK if variable == "OFFSITE_STORAGE_URL" else PARTITION
                assert not run(f"pg_colon__{job}", partition, definitions=build_defs()).success
            monkeypatch.setenv("BACKUP_STORAGE_URL", "s3://cbd-bucket/backups")
            monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
            assert not run("pg_colon__postgres_daily_backup_job", PARTITION, definitions=build_defs()).success
            monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{storage_root}")
            monkeypatch.delenv("AWS_ENDPOINT_URL")
            monkeypatch.delenv("OFFSITE_STORAGE_URL")

            tick_until_quiet(defs, "run_failure_alert_sensor", instance, alerts, failures)
            tick_until_quiet(defs, "check_alert_sensor", instance, alerts, checks)
            haystacks = instance_text(instance)
        output = capfd.readouterr()
        haystacks["stdout/stderr"] = (output.out + output.err).encode()

        # The same shapes through the CLI, as an operator runs it: a run worker with compute logs on disk.
        cli_home.mkdir()
        (cli_home / "dagster.yaml").write_text((REPO / "deploy" / "local" / "dagster.yaml").read_text())

        def cli(select, partition, **env):
            cmd = [str(Path(sys.executable).with_name("dg")), "launch", "-m", "cidadao_backup_dagster.definitions",
                   "--assets", ",".join(select), "--partition", partition, "--config-json", IN_PROCESS]  # fmt: skip
            out = subprocess.run(cmd, env={**os.environ, "DAGSTER_HOME": str(cli_home), **env},
                                 capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
            assert "RUN_FAILURE" in out.stdout + out.stderr or "RUN_SUCCESS" in out.stdout + out.stderr, out.stderr
            return (out.stdout + out.stderr).encode()

        haystacks["cli postgres"] = cli([f"{n}/postgres_daily_backup" for n in pg_urls], CLI_PARTITION)
        haystacks["cli redis"] = cli([f"{n}/redis_snapshot" for n in rd_urls], CLI_HOUR)
        haystacks["cli storage"] = cli(
            ["pg_colon/postgres_daily_backup"], CLI_PARTITION, BACKUP_STORAGE_URL=storage_urls[0][1]
        )
    finally:
        receiver.close()

    haystacks.update(scan_folders(home, cli_home, storage_root))
    bodies = [p["body"] for p in receiver.posts]
    haystacks.update({f"alert {i} ({p['path'].split('/')[1]})": p["body"] for i, p in enumerate(receiver.posts)})
    # The scan looked where the secrets would be: failures were alerted, compute logs and manifests were written.
    assert len(bodies) >= 2 * (len(PG_SHAPES) + len(REDIS_SHAPES))  # webhook + Slack per failed run, at least
    assert any(str(cli_home) in p and "compute_logs" in p for p in haystacks)
    assert any(str(storage_root) in p and "manifest" in p for p in haystacks)
    assert_no_leaks(haystacks, secrets)
    assert any(b"percent-encode the password" in b for b in bodies)  # the error says what to do
