"""Alert rules without Dagster: severities, messages, one notification per incident, webhook delivery."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cidadao_backup_dagster.core.errors import ConfigurationError
from cidadao_backup_dagster.core.monitoring.alerts import (
    FORGET_AFTER_S,
    AlertDeliveryError,
    Channels,
    Evaluation,
    IncidentBook,
    check_alert,
    classify_check,
    deliver,
    parse_level,
    run_failure_alert,
)


class Receiver:
    """A local HTTP server recording JSON POSTs; `statuses` are answered in order (then 200)."""

    def __init__(self, statuses=()):
        self.posts: list[dict] = []
        self.statuses = list(statuses)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == 200:
                    receiver.posts.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def json(self) -> list[dict]:
        return [json.loads(p["body"]) for p in self.posts]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.mark.parametrize(
    "asset, check, severity, level",
    [
        ("postgres_daily_backup", "freshness", "ERROR", "critical"),
        ("redis_snapshot", "freshness", "ERROR", "critical"),
        ("investigations_json_export", "freshness", "WARN", "warning"),
        ("redis_snapshot", "last_save", "ERROR", "high"),
        ("redis_snapshot", "persistence_config", "WARN", "high"),
        ("postgres_daily_backup", "size_deviation", "WARN", "warning"),
        ("postgres_daily_backup", "integrity", "ERROR", "high"),
        ("postgres_restore_drill", "drill_duration_within_rto", "WARN", "warning"),
    ],
)
def test_strategy_severities(asset, check, severity, level):
    assert classify_check(asset, check, severity)[0] == level


def test_messages_name_the_failure_and_never_carry_secrets():
    alert = check_alert(
        "postgres_daily_backup",
        "freshness",
        None,
        "ERROR",
        "Cannot read postgresql://backup:hunter2@db:5432/cidadao; token xoxb-SECRET " + "x" * 2000,
        secrets=["xoxb-SECRET"],
    )
    text = alert.text()
    assert "CRITICAL" in text and "postgres_daily_backup" in text and "backup_age_hours > 48" in text
    assert "hunter2" not in text and "xoxb-SECRET" not in text and "backup:***@db" in text
    assert len(alert.details) <= 600
    run = run_failure_alert("postgres_daily_backup_job", "0123456789abcdef", "pg_dump failed", partition="2026-11-24")
    assert run.level == "high" and "2026-11-24" in run.text() and run.incident == "run:0123456789abcdef"


def ev(ts, passed, check="freshness", severity="ERROR", partition=None, asset="postgres_daily_backup"):
    return Evaluation(asset, check, partition, passed, severity, f"evaluated at {ts}", float(ts), run_id=f"r{ts}")


def notify_all(book: IncidentBook) -> list:
    alerts = book.due()
    for alert in alerts:
        book.mark_notified(alert.incident)
    return alerts


def test_one_incident_one_notification_until_it_passes_again():
    book = IncidentBook()
    book.ingest([ev(100, False)], now=100)
    (first,) = notify_all(book)
    assert first.level == "critical" and first.incident == "postgres_daily_backup:freshness"
    book = IncidentBook.from_cursor(book.to_cursor())  # state survives the cursor round trip
    book.ingest([ev(200, False), ev(300, False)], now=300)
    assert notify_all(book) == []
    book.ingest([ev(400, True)], now=400)
    assert notify_all(book) == [] and not book.open
    book.ingest([ev(500, False)], now=500)
    assert [a.level for a in notify_all(book)] == ["critical"]


def test_partitions_are_separate_incidents_and_a_batch_that_recovered_is_silent():
    book = IncidentBook()
    book.ingest(
        [
            ev(1, False, "integrity", partition="2026-11-23"),
            ev(2, False, "integrity", partition="2026-11-24"),
            ev(3, False, "size_deviation", "WARN", partition="2026-11-24"),
            ev(4, True, "size_deviation", "WARN", partition="2026-11-24"),  # re-run fixed it
        ],
        now=10,
    )
    assert sorted(a.incident for a in notify_all(book)) == [
        "postgres_daily_backup:integrity[2026-11-23]",
        "postgres_daily_backup:integrity[2026-11-24]",
    ]


def test_an_incident_that_gets_worse_is_notified_again():
    book = IncidentBook()
    book.ingest([ev(1, False, severity="WARN", asset="investigations_json_export")], now=1)
    assert [a.level for a in notify_all(book)] == ["warning"]
    book.ingest([ev(2, False, severity="WARN", asset="investigations_json_export")], now=2)
    assert notify_all(book) == []
    book.ingest([ev(3, False, severity="ERROR", asset="investigations_json_export")], now=3)
    assert [a.level for a in notify_all(book)] == ["critical"]


def test_evaluations_are_read_once_and_old_incidents_are_forgotten():
    book = IncidentBook()
    book.ingest([ev(1000, False)], now=1000)
    notify_all(book)
    # Re-read in the lookback window (ignored), and an older pass stored late (does not close the incident).
    book.ingest([ev(1000, False), ev(900, True)], now=1001)
    assert "postgres_daily_backup:freshness" in book.open and book.since < 1000
    book.ingest([], now=1000 + FORGET_AFTER_S + 1)
    assert not book.open
    assert IncidentBook.from_cursor("not json").open == {}


def test_undelivered_alerts_stay_due():
    book = IncidentBook()
    book.ingest([ev(1, False)], now=1)
    assert len(book.due()) == 1
    assert len(book.due()) == 1  # nothing was marked notified
    book.mark_notified("postgres_daily_backup:freshness")
    assert book.due() == []


def test_webhook_delivery_and_minimum_severity(receiver):
    logged = []
    alert = check_alert("postgres_daily_backup", "size_deviation", "2026-11-24", "WARN", "1,000 bytes is -67%")
    assert deliver(alert, Channels(webhook_url=receiver.url + "/hook"), logged.append) == ["webhook"]
    (body,) = receiver.json()
    assert body["level"] == "warning" and body["check"] == "size_deviation" and body["partition"] == "2026-11-24"
    assert "Backup Size Anomaly" in body["text"] and logged == [alert.text()]
    assert deliver(alert, Channels(webhook_url=receiver.url, min_level="high"), logged.append) == [
        "log (below ALERT_MIN_SEVERITY)"
    ]
    assert len(receiver.posts) == 1
    assert deliver(alert, Channels(), logged.append)[0].startswith("log only")
    with pytest.raises(ConfigurationError, match="ALERT_MIN_SEVERITY"):
        parse_level("loud")


def test_webhook_failures_name_the_variable_not_the_url(refused_port):
    secret_url = f"http://127.0.0.1:{refused_port}/hooks/T000/B000/very-secret-token"
    alert = run_failure_alert("job", "run", "boom")
    with pytest.raises(AlertDeliveryError) as info:
        deliver(alert, Channels(webhook_url=secret_url, timeout_s=2), lambda _: None)
    assert "ALERT_WEBHOOK_URL" in str(info.value) and "very-secret-token" not in str(info.value)
    failing = Receiver(statuses=[500])
    try:
        with pytest.raises(AlertDeliveryError, match="HTTP 500"):
            deliver(alert, Channels(webhook_url=failing.url), lambda _: None)
    finally:
        failing.close()
