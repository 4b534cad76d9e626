"""Alerts (the strategy's "Monitoring & Alerts") as plain Python: which severity a failed check or run gets,
what the message says, one notification per incident, and delivery to Slack, a webhook, or the log.

Severities, from the strategy's `monitoring/backup_health.yml`:

| strategy alert             | condition                      | severity | here                                     |
|----------------------------|--------------------------------|----------|------------------------------------------|
| PostgreSQL Backup Failed   | backup_age_hours > 48          | critical | a `freshness` check failing with ERROR   |
| Redis Persistence Disabled | redis_rdb_last_save_age > 3600 | high     | Redis `last_save` / `persistence_config` |
| Backup Size Anomaly        | backup_size_deviation > 50%    | warning  | a `size_deviation` check (WARN)          |

Every other check failing with ERROR, and every failed run, is at least `high`; other WARN failures are
`warning`.

Incidents: an incident is one (asset, check, partition) failing. `IncidentBook` replays check evaluations in
time order and notifies each incident once: again only after the check passed in between (a new incident),
or when the incident got worse (a WARN turned into an ERROR). Its whole state is a small JSON document (the
sensor's cursor). Nothing here imports Dagster.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace

from ..errors import ConfigurationError
from ..secrets import redact_data, redact_text

LEVELS = ("warning", "high", "critical")
ICONS = {"warning": "🟡", "high": "🟠", "critical": "🔴"}
MAX_TEXT = 600  # characters of a check description / error kept in a message

# Strategy alerts: (name, condition, action) per rule.
CRITICAL_FRESHNESS = (
    "Backup Failed",
    "the newest valid backup is older than its limit (strategy: backup_age_hours > 48)",
    "Notify DevOps: see the docs/recovery.md runbook '`freshness` failed' (is the schedule running? the last "
    "runs? the queue?)",
)
HIGH_REDIS = (
    "Redis Persistence Disabled",
    "the live Redis is not persisting (strategy: redis_rdb_last_save_age > 3600)",
    "Check Redis configuration: appendonly yes, appendfsync everysec, save rules; the last BGSAVE's status",
)
WARNING_SIZE = (
    "Backup Size Anomaly",
    "the stored size is far from the recent median (strategy: backup_size_deviation > 50%)",
    "Log for manual review: compare row_counts with the previous partition (docs/recovery.md runbook "
    "'`size_deviation` warned')",
)
REDIS_PERSISTENCE_CHECKS = {"last_save", "persistence_config"}


def level_rank(level: str) -> int:
    return LEVELS.index(level)


def parse_level(text: str, variable: str = "ALERT_MIN_SEVERITY") -> str:
    value = (text or "warning").strip().lower()
    if value not in LEVELS:
        raise ConfigurationError(variable, f"{text!r} is not a severity", "use warning, high or critical")
    return value


@dataclass(frozen=True)
class Alert:
    level: str  # warning | high | critical
    kind: str  # asset_check | run_failure
    title: str
    summary: str  # what failed, one line
    details: str  # the check's description / the run's error (redacted, truncated)
    action: str
    incident: str  # dedup key
    asset: str | None = None
    check: str | None = None
    partition: str | None = None
    run_id: str | None = None
    job: str | None = None
    link: str | None = None

    def text(self) -> str:
        """The message, as posted to Slack and logged."""
        lines = [f"{ICONS[self.level]} *{self.level.upper()}* · {self.title}", self.summary]
        if self.details:
            lines.append(f"> {self.details}")
        lines.append(f"Action: {self.action}")
        if self.link:
            lines.append(self.link)
        return "\n".join(lines)

    def payload(self) -> dict:
        """The webhook's JSON body: `text` (what Slack-compatible webhooks display) plus structured fields."""
        return {"text": self.text(), "source": "cidadao-backup-dagster", **asdict(self)}


def _clip(text: str | None, secrets: Iterable[str] = ()) -> str:
    text = redact_text(" ".join((text or "").split()), tuple(secrets))
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def check_incident_key(asset: str, check: str, partition: str | None) -> str:
    return f"{asset}:{check}" + (f"[{partition}]" if partition else "")


def classify_check(asset: str, check: str, severity: str) -> tuple[str, tuple[str, str, str]]:
    """(level, (title, condition, action)) for a failed check. `severity` is ERROR or WARN."""
    error = severity.upper() == "ERROR"
    if check == "freshness" and error:
        return "critical", CRITICAL_FRESHNESS
    if check in REDIS_PERSISTENCE_CHECKS:
        return "high", HIGH_REDIS
    if check == "size_deviation":
        return ("high" if error else "warning"), WARNING_SIZE
    if error:
        return "high", (
            f"Check `{check}` failed",
            "a check with ERROR severity failed",
            "Investigate now (docs/recovery.md runbooks)",
        )
    return "warning", (f"Check `{check}` warned", "a check with WARN severity failed", "Log for manual review")


def check_alert(
    asset: str,
    check: str,
    partition: str | None,
    severity: str,
    description: str | None,
    *,
    run_id: str | None = None,
    link: str | None = None,
    secrets: Iterable[str] = (),
) -> Alert:
    level, (title, condition, action) = classify_check(asset, check, severity)
    where = f"`{asset}` · check `{check}`" + (f" · partition `{partition}`" if partition else "")
    return Alert(
        level=level,
        kind="asset_check",
        title=f"{title}: {asset}",
        summary=f"{where} failed ({severity.upper()}): {condition}.",
        details=_clip(description, secrets),
        action=action,
        incident=check_incident_key(asset, check, partition),
        asset=asset,
        check=check,
        partition=partition,
        run_id=run_id or None,
        link=link,
    )


def run_failure_alert(
    job: str,
    run_id: str,
    error: str | None,
    *,
    partition: str | None = None,
    link: str | None = None,
    secrets: Iterable[str] = (),
) -> Alert:
    where = f"job `{job}`" + (f" · partition `{partition}`" if partition else "") + f" · run `{run_id[:8]}`"
    return Alert(
        level="high",
        kind="run_failure",
        title=f"Run failed: {job}",
        summary=f"{where} failed.",
        details=_clip(error, secrets),
        action="Read the run's failure (it names the cause), fix it and re-run the partition "
        "(docs/recovery.md runbook 'A backup run failed'); earlier backups are untouched",
        incident=f"run:{run_id}",
        partition=partition,
        run_id=run_id,
        job=job,
        link=link,
    )


# ---------------------------------------------------------------------------------------------- incidents


@dataclass(frozen=True)
class Evaluation:
    """One check evaluation, as read from the instance."""

    asset: str
    check: str
    partition: str | None
    passed: bool
    severity: str  # ERROR | WARN
    description: str | None
    timestamp: float
    run_id: str = ""

    @property
    def signature(self) -> str:
        return f"{self.run_id}|{self.asset}|{self.check}|{self.partition or ''}|{self.timestamp:.6f}"


# What an open incident keeps of its latest failing evaluation: what check_alert builds its message from.
ALERT_FIELDS = ("asset", "check", "partition", "severity", "description", "run_id")
LOOKBACK_S = 600.0  # evaluations can be stored a little after their timestamp: re-read this window each tick
FORGET_AFTER_S = 30 * 86400.0  # an open incident not seen failing for 30 days is dropped from the state


@dataclass
class IncidentBook:
    """Open incidents and what was already read, serialisable to the sensor's cursor.

    `open[key]` = {"level", "since", "last", "notified"} where `notified` is the level that was delivered
    (None until a delivery succeeded, so a failed delivery is retried on the next tick)."""

    after: float = 0.0  # high-water mark of evaluation timestamps read
    seen: dict[str, float] = field(default_factory=dict)  # signatures read within the lookback window
    open: dict[str, dict] = field(default_factory=dict)
    latest: dict[str, float] = field(default_factory=dict)  # newest evaluation applied per key (lookback window)

    @classmethod
    def from_cursor(cls, cursor: str | None) -> IncidentBook:
        if not cursor:
            return cls()
        try:
            data = json.loads(cursor)
            return cls(
                after=float(data["after"]),
                seen=dict(data["seen"]),
                open=dict(data["open"]),
                latest=dict(data.get("latest", {})),
            )
        except (ValueError, KeyError, TypeError):
            return cls()  # an unreadable cursor starts over (incidents still open are notified again)

    def to_cursor(self) -> str:
        state = {"after": self.after, "seen": self.seen, "open": self.open, "latest": self.latest}
        return json.dumps(state, sort_keys=True)

    @property
    def since(self) -> float:
        """Read evaluations with a timestamp after this (the first tick reads everything)."""
        return self.after - LOOKBACK_S if self.after else 0.0

    def ingest(self, evaluations: Iterable[Evaluation], now: float) -> None:
        """Replay new evaluations in time order. A failure opens an incident (or updates the open one: its
        latest description, and its level when it got worse); a pass closes it. An incident that opened and
        closed within one batch is gone before anyone is told: it resolved itself."""
        fresh = sorted((e for e in evaluations if e.signature not in self.seen), key=lambda e: e.timestamp)
        for ev in fresh:
            self.seen[ev.signature] = ev.timestamp
            self.after = max(self.after, ev.timestamp)
            key = check_incident_key(ev.asset, ev.check, ev.partition)
            if ev.timestamp < self.latest.get(key, 0.0):
                continue  # stored late, and a newer evaluation of the same check already decided the state
            self.latest[key] = ev.timestamp
            if ev.passed:
                self.open.pop(key, None)
                continue
            level, _ = classify_check(ev.asset, ev.check, ev.severity)
            incident = self.open.setdefault(key, {"level": level, "since": ev.timestamp, "notified": None})
            if level_rank(level) > level_rank(incident["level"]):
                incident["level"] = level
            latest = {f: getattr(ev, f) for f in ALERT_FIELDS}
            incident.update(latest, last=ev.timestamp, description=_clip(ev.description))
        horizon = self.after - LOOKBACK_S
        self.seen = {s: t for s, t in self.seen.items() if t > horizon}
        self.latest = {k: t for k, t in self.latest.items() if t > horizon}
        self.open = {k: v for k, v in self.open.items() if now - v["last"] < FORGET_AFTER_S}

    def due(self, secrets: Iterable[str] = (), link: Callable[[str], str | None] = lambda asset: None) -> list[Alert]:
        """One alert per open incident not yet notified at its current level, most severe first."""
        out = []
        for inc in self.open.values():
            if inc["notified"] is not None and level_rank(inc["level"]) <= level_rank(inc["notified"]):
                continue
            alert = check_alert(**{f: inc[f] for f in ALERT_FIELDS}, link=link(inc["asset"]), secrets=secrets)
            if level_rank(inc["level"]) > level_rank(alert.level):  # escalated earlier within the incident
                alert = replace(alert, level=inc["level"])
            out.append(alert)
        return sorted(out, key=lambda a: -level_rank(a.level))

    def mark_notified(self, key: str) -> None:
        if key in self.open:
            self.open[key]["notified"] = self.open[key]["level"]


# ---------------------------------------------------------------------------------------------- delivery


class AlertDeliveryError(Exception):
    """A notification could not be delivered (the message names the channel, never its secret)."""


@dataclass(frozen=True)
class Channels:
    """Where alerts go. `slack_post(channel, text)` is the dagster-slack client's chat_postMessage."""

    webhook_url: str = ""
    slack_channel: str = ""
    slack_post: Callable[[str, str], None] | None = None
    min_level: str = "warning"
    timeout_s: float = 10.0

    @property
    def configured(self) -> list[str]:
        out = []
        if self.slack_post is not None and self.slack_channel:
            out.append(f"Slack {self.slack_channel}")
        if self.webhook_url:
            out.append("webhook")
        return out

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.webhook_url,) if self.webhook_url else ()


def post_webhook(url: str, payload: dict, timeout_s: float = 10.0) -> None:
    """JSON POST; raises AlertDeliveryError without ever quoting the URL (webhook URLs carry their secret)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "cidadao-backup-dagster"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise AlertDeliveryError(f"ALERT_WEBHOOK_URL answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AlertDeliveryError(f"ALERT_WEBHOOK_URL is unreachable ({type(reason).__name__})") from None


def deliver(alert: Alert, channels: Channels, log: Callable[[str], None]) -> list[str]:
    """Log the alert, then send it to every configured channel (when its level reaches `min_level`).
    Returns where it went; raises AlertDeliveryError when a configured channel failed (after trying all)."""
    # The last exit: whatever a caller put in the alert, no registered secret leaves in it.
    text, payload = redact_text(alert.text(), channels.secrets), redact_data(alert.payload(), channels.secrets)
    log(text)
    if level_rank(alert.level) < level_rank(channels.min_level):
        return ["log (below ALERT_MIN_SEVERITY)"]
    sent, failures = [], []
    if channels.slack_post is not None and channels.slack_channel:
        try:
            channels.slack_post(channels.slack_channel, text)
            sent.append(f"Slack {channels.slack_channel}")
        except Exception as exc:  # slack_sdk raises SlackApiError / URLError; the token is never in them
            failures.append(f"Slack {channels.slack_channel}: {redact_text(str(exc), channels.secrets)[:200]}")
    if channels.webhook_url:
        try:
            post_webhook(channels.webhook_url, payload, channels.timeout_s)
            sent.append("webhook")
        except AlertDeliveryError as exc:
            failures.append(str(exc))
    if failures:
        raise AlertDeliveryError("; ".join(failures))
    return sent or ["log only (no SLACK_BOT_TOKEN + SLACK_CHANNEL, no ALERT_WEBHOOK_URL)"]
