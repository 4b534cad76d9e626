"""Alert sensors: failed runs and failed asset checks, notified through Slack (dagster-slack), a webhook, or
only the log. Severities, messages and deduplication live in core/alerts.py; these sensors only read the
instance and deliver."""

import time

import dagster as dg

from ...core.errors import ConfigurationError
from ...core.monitoring.alerts import AlertDeliveryError, Evaluation, IncidentBook, deliver, run_failure_alert
from .resources import AlertSettings

HISTORY_PER_CHECK = 50  # newest executions read per check and tick (a tick normally finds one or two new)
# Execution record statuses of a check that ran to a result (the other one, PLANNED, has no result yet).
# Compared by value: Dagster does not export the enum.
COMPLETED = frozenset({"SUCCEEDED", "FAILED"})


DESCRIPTIONS = {
    "run_failure_alert_sensor": "Notifies (severity high) when a run of this code location fails: through Slack "
    "when SLACK_BOT_TOKEN and SLACK_CHANNEL are set, ALERT_WEBHOOK_URL when set, else only in this log. A run "
    "that Dagster will retry is not notified (its retry is); a run failed by a blocking check is left to "
    "check_alert_sensor, so one incident gives one message.",
    "check_alert_sensor": "Notifies failed asset checks once per incident (asset + check + partition, until it "
    "passes again; again if it gets worse): critical = freshness ERROR (backup older than its limit), high = "
    "Redis persistence (last_save, persistence_config) and any other ERROR check, warning = size_deviation and "
    "other WARN checks. Slack / ALERT_WEBHOOK_URL / log, as the run failure sensor. State lives in the cursor.",
}


def _every_minute(name: str) -> dict:
    """Both sensors: running by default, evaluated at most once a minute."""
    return {
        "name": name,
        "minimum_interval_seconds": 60,
        "default_status": dg.DefaultSensorStatus.RUNNING,
        "description": DESCRIPTIONS[name],
    }


def _logger(context, level: str):
    return context.log.warning if level == "warning" else context.log.error


def _channels(context, alerts: AlertSettings, pending: list):
    """The configured channels. A misconfiguration fails the tick naming the variable, after logging the
    alerts it would have sent (so they are not lost from sight)."""
    try:
        return alerts.channels()
    except ConfigurationError:
        for alert in pending:
            _logger(context, alert.level)(alert.text())
        raise


def _asset_path(key: dg.AssetKey) -> str:
    return "/".join(key.path)


def _failure_text(event) -> str:
    """A step failure as the operator should read it: a dg.Failure's own description, else the error
    message without its exception class path."""
    data = event.event_specific_data
    if data is None:
        return ""
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description.strip()
    message = data.error.message.strip() if data.error else ""
    head, sep, rest = message.partition(": ")
    return rest if sep and head.replace(".", "").replace("_", "").isalnum() else message


@dg.run_failure_sensor(**_every_minute("run_failure_alert_sensor"))
def run_failure_alert_sensor(context: dg.RunFailureSensorContext, alerts: AlertSettings):
    run = context.dagster_run
    if run.tags.get("dagster/will_retry", "").lower() == "true":
        return dg.SkipReason(f"Run {run.run_id} will be retried; its retry reports if it fails too")
    records = context.instance.get_records_for_run(
        run_id=run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    blocking = [
        e.event_log_entry.dagster_event.event_specific_data
        for e in records
        if not e.event_log_entry.dagster_event.event_specific_data.passed
        and e.event_log_entry.dagster_event.event_specific_data.blocking
    ]
    if blocking:
        names = ", ".join(f"{_asset_path(e.asset_key)}:{e.check_name}" for e in blocking)
        return dg.SkipReason(f"Run {run.run_id} failed on blocking check(s) {names}: check_alert_sensor notifies")
    errors = [_failure_text(e) for e in context.get_step_failure_events()]
    error = " | ".join(dict.fromkeys(m for m in errors if m)) or context.failure_event.message
    alert = run_failure_alert(
        run.job_name,
        run.run_id,
        error,
        partition=run.tags.get("dagster/partition"),
        link=alerts.link(f"runs/{run.run_id}"),
        secrets=alerts.secrets(),
    )
    # A delivery failure fails this tick (shown on the sensor and on the run); a misconfiguration too.
    where = deliver(alert, _channels(context, alerts, [alert]), _logger(context, alert.level))
    return dg.SkipReason(f"{alert.level} alert for run {run.run_id}: {', '.join(where)}")


@dg.sensor(**_every_minute("check_alert_sensor"))
def check_alert_sensor(context: dg.SensorEvaluationContext, alerts: AlertSettings):
    if context.repository_def is None:
        return dg.SkipReason("No repository in this evaluation: nothing to watch")
    book = IncidentBook.from_cursor(context.cursor)
    storage = context.instance.event_log_storage
    evaluations = []
    for key in sorted(context.repository_def.asset_graph.asset_check_keys, key=lambda k: k.to_user_string()):
        for record in storage.get_asset_check_execution_history(key, limit=HISTORY_PER_CHECK):
            if record.status.value not in COMPLETED or record.event is None or record.event.timestamp <= book.since:
                continue
            data = record.event.dagster_event.event_specific_data
            evaluations.append(
                Evaluation(
                    asset=_asset_path(key.asset_key),
                    check=key.name,
                    partition=record.partition,
                    passed=bool(data.passed),
                    severity=data.severity.value,
                    description=data.description,
                    timestamp=record.event.timestamp,
                    run_id=record.run_id,
                )
            )
    book.ingest(evaluations, now=time.time())
    due = book.due(alerts.secrets(), lambda asset: alerts.link(f"assets/{asset}?view=checks"))
    channels = _channels(context, alerts, due) if due else None  # misconfigured: the tick fails, cursor unchanged
    sent, failed = [], []
    for alert in due:
        try:
            where = deliver(alert, channels, _logger(context, alert.level))
        except AlertDeliveryError as exc:
            context.log.error(f"Could not deliver the alert for {alert.incident} ({exc}); retrying next tick")
            failed.append(alert.incident)
            continue
        book.mark_notified(alert.incident)
        sent.append(f"{alert.level} {alert.incident} -> {', '.join(where)}")
    summary = f"{len(evaluations)} evaluation(s) read, {len(book.open)} open incident(s)"
    if sent:
        summary += f"; notified: {', '.join(sent)}"
    if failed:
        summary += f"; delivery failed (retried next tick): {', '.join(failed)}"
    return dg.SensorResult(cursor=book.to_cursor(), skip_reason=dg.SkipReason(summary))


alert_sensors = [run_failure_alert_sensor, check_alert_sensor]
