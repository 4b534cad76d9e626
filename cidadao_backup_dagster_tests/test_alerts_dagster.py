"""Alert sensors end to end: real runs of the project's jobs in a test instance, the sensors evaluated on it,
and a local HTTP server receiving the webhook (or standing in for Slack's Web API)."""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from cidadao_backup_dagster.core.artifacts.manifest import Manifest, iso, write_manifest
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.definitions import build_defs
from cidadao_backup_dagster.defs.monitoring.resources import AlertSettings
from cidadao_backup_dagster.defs.postgres import daily_checks

from .test_alerts_core import Receiver

DBNAME = "cbd_alerts_db"
PASSWORD = "al3rt-Pa55word"  # rides in DATABASE_URL; must never reach a message
HOOK_SECRET = "T0001/B0002/hook-secret-token"
SERIES = f"postgres/{DBNAME}/daily"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A source URL that is only parsed (no database is touched), a local storage folder, no alert channel."""
    for var in ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "ALERT_WEBHOOK_URL", "ALERT_MIN_SEVERITY", "OFFSITE_STORAGE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/{DBNAME}")
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    return LocalStorage(tmp_path / "backups")


@pytest.fixture
def webhook(monkeypatch, env, receiver):
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"{receiver.url}/hooks/{HOOK_SECRET}")
    return receiver


def tick(defs, name, instance, cursor=None, resources=None):
    """One evaluation of a sensor, as the daemon does it."""
    sensor = defs.resolve_sensor_def(name)
    resources = resources or {"alerts": defs.resources["alerts"]}
    with dg.build_sensor_context(instance=instance, definitions=defs, resources=resources, cursor=cursor) as ctx:
        return sensor.evaluate_tick(ctx)


def put_backup(storage, partition, taken_at, size=3000):
    """A crafted history entry: an object of `size` bytes and its manifest."""
    key = f"{SERIES}/{partition}/{DBNAME}_{partition}.dump.zst"
    storage.put_bytes(key, b"x" * size)
    artifact = {"key": key, "uri": storage.uri(key), "stored_bytes": size, "stored_sha256": "0" * 64,
                "raw_bytes": size, "raw_sha256": ""}  # fmt: skip
    write_manifest(storage, SERIES, Manifest({"partition": partition, "artifact": artifact, "timings": {
        "snapshot_at": iso(taken_at)}}))  # fmt: skip


def run_checks(defs, instance, *names, partition=None):
    checks = [c for c in daily_checks() if any(k.name in names for k in c.check_keys)]
    job = dg.define_asset_job("alert_test_checks", selection=dg.AssetSelection.checks(*checks))
    resolved = dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("alert_test_checks")
    tags = {"dagster/partition": partition} if partition else {}
    return resolved.execute_in_process(instance=instance, tags=tags, raise_on_error=False)


def test_a_failed_backup_run_posts_exactly_one_alert(webhook, monkeypatch):
    monkeypatch.setenv("BACKUP_STORAGE_URL", "ftp://somewhere/backups")
    defs = build_defs()
    with dg.instance_for_test() as instance:
        first = tick(defs, "run_failure_alert_sensor", instance)  # the first tick only sets the cursor
        result = defs.resolve_job_def("postgres_daily_backup_job").execute_in_process(
            partition_key="2026-11-24", instance=instance, raise_on_error=False
        )
        assert not result.success
        second = tick(defs, "run_failure_alert_sensor", instance, first.cursor)
        third = tick(defs, "run_failure_alert_sensor", instance, second.cursor)
    assert third.skip_message is None or "webhook" not in third.skip_message
    (body,) = webhook.json()
    assert body["level"] == "high" and body["kind"] == "run_failure"
    assert body["job"] == "postgres_daily_backup_job" and body["partition"] == "2026-11-24"
    assert body["run_id"] == result.run_id
    assert "BACKUP_STORAGE_URL" in body["details"] and "unsupported scheme" in body["details"]
    raw = webhook.posts[0]["body"].decode()
    assert PASSWORD not in raw and HOOK_SECRET not in raw
    assert webhook.posts[0]["path"] == f"/hooks/{HOOK_SECRET}"


def test_failing_freshness_is_one_critical_alert_per_incident(webhook, env):
    defs = build_defs()
    now = datetime.now(UTC)
    put_backup(env, "2026-11-20", now - timedelta(days=3))  # the newest valid backup is 72 h old
    with dg.instance_for_test() as instance:
        assert run_checks(defs, instance, "freshness").success
        data = tick(defs, "check_alert_sensor", instance)
        (body,) = webhook.json()
        assert body["level"] == "critical" and body["kind"] == "asset_check"
        assert (body["asset"], body["check"], body["partition"]) == ("postgres_daily_backup", "freshness", None)
        assert "2026-11-20" in body["details"] and "backup_age_hours > 48" in body["text"]

        run_checks(defs, instance, "freshness")  # evaluated again, still failing: the same incident
        data = tick(defs, "check_alert_sensor", instance, data.cursor)
        assert len(webhook.posts) == 1

        put_backup(env, "2026-11-24", now - timedelta(hours=2))  # a backup lands: the check passes
        run_checks(defs, instance, "freshness")
        data = tick(defs, "check_alert_sensor", instance, data.cursor)
        assert len(webhook.posts) == 1 and "0 open incident" in data.skip_message

        env.delete(f"{SERIES}/2026-11-24/{DBNAME}_2026-11-24.dump.zst")  # and is lost again: a new incident
        run_checks(defs, instance, "freshness")
        data = tick(defs, "check_alert_sensor", instance, data.cursor)
        assert [b["level"] for b in webhook.json()] == ["critical", "critical"]
        data = tick(defs, "check_alert_sensor", instance, data.cursor)  # nothing new evaluated
        assert len(webhook.posts) == 2


def test_size_anomaly_is_a_warning_and_the_failed_run_is_left_to_the_check(webhook, env):
    defs = build_defs()
    now = datetime.now(UTC)
    for day in range(10, 17):
        put_backup(env, f"2026-11-{day:02d}", now - timedelta(days=24 - day), size=9000)
    put_backup(env, "2026-11-24", now - timedelta(hours=1), size=1000)  # -89% from the median
    with dg.instance_for_test() as instance:
        assert run_checks(defs, instance, "size_deviation", partition="2026-11-24").success
        data = tick(defs, "check_alert_sensor", instance)
        (body,) = webhook.json()
        assert body["level"] == "warning" and body["check"] == "size_deviation"
        assert body["partition"] == "2026-11-24" and "Backup Size Anomaly" in body["text"]

        # The crafted dump is not a real archive: the blocking integrity check fails, and so does the run.
        first = tick(defs, "run_failure_alert_sensor", instance)
        failed = run_checks(defs, instance, "integrity", partition="2026-11-24")
        evaluation = failed.get_asset_check_evaluations()[0]
        assert not evaluation.passed and evaluation.blocking
        second = tick(defs, "run_failure_alert_sensor", instance, first.cursor)
        tick(defs, "check_alert_sensor", instance, data.cursor)
    assert not failed.success  # a failed blocking check fails its step
    assert "blocking check(s) postgres_daily_backup:integrity" in second.skip_message
    kinds = [(b["kind"], b["level"], b["check"]) for b in webhook.json()]
    assert kinds == [("asset_check", "warning", "size_deviation"), ("asset_check", "high", "integrity")]


def test_nothing_configured_only_logs_and_does_not_crash(env, receiver):
    defs = build_defs()
    put_backup(env, "2026-11-20", datetime.now(UTC) - timedelta(days=3))
    with dg.instance_for_test() as instance:
        run_checks(defs, instance, "freshness")
        data = tick(defs, "check_alert_sensor", instance)
        assert "log only" in data.skip_message and "critical postgres_daily_backup:freshness" in data.skip_message
        assert json.loads(data.cursor)["open"]["postgres_daily_backup:freshness"]["notified"] == "critical"
        first = tick(defs, "run_failure_alert_sensor", instance)
        defs.resolve_job_def("postgres_weekly_offsite_backup_job").execute_in_process(
            partition_key="2026-11-15", instance=instance, raise_on_error=False
        )  # fails: no OFFSITE_STORAGE_URL
        second = tick(defs, "run_failure_alert_sensor", instance, first.cursor)
    assert "log only" in second.skip_message
    assert receiver.posts == []


def test_a_failed_delivery_is_retried_on_the_next_tick(env, monkeypatch):
    flaky = Receiver(statuses=[503])
    try:
        monkeypatch.setenv("ALERT_WEBHOOK_URL", flaky.url)
        defs = build_defs()
        put_backup(env, "2026-11-20", datetime.now(UTC) - timedelta(days=3))
        with dg.instance_for_test() as instance:
            run_checks(defs, instance, "freshness")
            data = tick(defs, "check_alert_sensor", instance)
            assert flaky.posts == [] and "delivery failed" in data.skip_message
            data = tick(defs, "check_alert_sensor", instance, data.cursor)
            assert [b["level"] for b in flaky.json()] == ["critical"]
            tick(defs, "check_alert_sensor", instance, data.cursor)
            assert len(flaky.posts) == 1
    finally:
        flaky.close()


def test_slack_through_dagster_slack(env, receiver):
    """Slack's Web API stood in for by the local server: chat.postMessage with the bot token."""
    token = "xoxb-test-not-a-real-token"
    alerts = AlertSettings(
        slack_token=token, slack_channel="#backups", slack_api_url=f"{receiver.url}/api/"
    )
    defs = build_defs()
    put_backup(env, "2026-11-20", datetime.now(UTC) - timedelta(days=3))
    with dg.instance_for_test() as instance:
        run_checks(defs, instance, "freshness")
        data = tick(defs, "check_alert_sensor", instance, resources={"alerts": alerts})
    (post,) = receiver.posts
    assert post["path"] == "/api/chat.postMessage"
    assert post["headers"]["Authorization"] == f"Bearer {token}"
    sent = json.loads(post["body"])
    assert sent["channel"] == "#backups" and "CRITICAL" in sent["text"] and "postgres_daily_backup" in sent["text"]
    assert token not in post["body"].decode() and "Slack #backups" in data.skip_message


def test_half_configured_slack_fails_the_tick_naming_the_variable(env, monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-half-configured-secret")
    defs = build_defs()
    put_backup(env, "2026-11-20", datetime.now(UTC) - timedelta(days=3))
    with dg.instance_for_test() as instance:
        run_checks(defs, instance, "freshness")
        with pytest.raises(Exception, match="SLACK_CHANNEL") as info:
            tick(defs, "check_alert_sensor", instance)
    assert "xoxb-half-configured-secret" not in str(info.value)
