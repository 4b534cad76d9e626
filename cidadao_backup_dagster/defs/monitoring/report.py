"""`backup_health_report`: one markdown table in the UI with the health of every artifact class, refreshed
daily and after every backup. The rows are computed by core/report.py; this asset feeds it the storages, the
strategy's targets (with the limits configured in the resources) and the latest check results."""

import dagster as dg

from ...core.artifacts.manifest import utc_now
from ...core.errors import BackupError, ConfigurationError
from ...core.monitoring.report import (
    CheckStatus,
    class_health,
    default_targets,
    errored,
    numeric_metadata,
    render_markdown,
    skipped,
    with_alert_limit,
)
from ...core.secrets import redact_text
from ..protection.classes import ArtifactClass

REPORT_ASSET = "backup_health_report"


def _latest_checks(context: dg.AssetExecutionContext, check_keys: set[dg.AssetCheckKey]):
    """asset name -> latest completed evaluation of each of its checks, read from the instance."""
    summaries = context.instance.event_log_storage.get_asset_check_summary_records(list(check_keys))
    by_asset: dict[str, list[CheckStatus]] = {}
    for key in check_keys:
        summary = summaries.get(key)
        record = summary.last_completed_check_execution_record if summary else None  # succeeded or failed
        if record is None or record.event is None:
            continue
        data = record.event.dagster_event.event_specific_data
        by_asset.setdefault("/".join(key.asset_key.path), []).append(
            CheckStatus(key.name, bool(data.passed), data.severity.value, record.partition, record.event.timestamp)
        )
    return lambda asset: by_asset.get(asset, [])


def build_report_asset(
    classes: list[ArtifactClass], resource_keys: set[str], check_keys: set[dg.AssetCheckKey]
) -> dg.AssetsDefinition:
    @dg.asset(
        name=REPORT_ASSET,
        group_name="monitoring",
        kinds={"markdown"},
        required_resource_keys=set(resource_keys),
        description="Backup health at a glance, per artifact class: the newest valid artifact and its age against "
        "the RPO, the last restore drill's duration against the RTO, the size trend (last vs median of the "
        "previous) and the latest check results. Refreshed daily and after every backup; classes whose storage "
        "or source is not configured are listed as skipped.",
        tags={"cidadao/domain": "monitoring"},
    )
    def backup_health_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        resources, now = context.resources, utc_now()
        checks_for = _latest_checks(context, check_keys)
        rows = []
        for artifact_class in classes:
            try:
                storage = getattr(resources, artifact_class.storage_key).open()
                series = artifact_class.series(resources)
            except (ConfigurationError, BackupError) as exc:
                rows.append(skipped(artifact_class.name, str(exc)))
                continue
            limit = artifact_class.alert_limit
            targets = with_alert_limit(default_targets(series), limit(resources) if limit else None)
            try:
                rows.append(
                    class_health(
                        artifact_class.name,
                        storage,
                        series,
                        now=now,
                        targets=targets,
                        size_history=resources.backup_policy.size_history,
                        checks_for=checks_for,
                        asset=artifact_class.asset,
                    )
                )
            except Exception as exc:  # noqa: BLE001 - storage unreachable: report it, keep the other rows
                rows.append(errored(artifact_class.name, redact_text(str(exc))[:300], storage.uri(series)))
        for row in rows:
            if row.status != "ok":
                context.log.warning(f"{row.name}: {row.status}: {'; '.join([row.note, *row.problems]).strip('; ')}")
        metadata: dict = {"report": dg.MetadataValue.md(render_markdown(rows, now))}
        for key, value in numeric_metadata(rows).items():
            metadata[key] = dg.MetadataValue.int(value) if isinstance(value, int) else dg.MetadataValue.float(value)
        return dg.MaterializeResult(metadata=metadata)

    return backup_health_report


def build_report_job(asset: dg.AssetsDefinition):
    return dg.define_asset_job(
        "backup_health_report_job",
        selection=dg.AssetSelection.assets(asset),
        description="Refresh the backup health report.",
    )


def build_report_schedule(job) -> dg.ScheduleDefinition:
    # 06:15 UTC: after the 03:00 backups, the 04:30 retention and the 05:00/05:30 monthly drills.
    return dg.ScheduleDefinition(
        name="backup_health_report_schedule",
        job=job,
        cron_schedule="15 6 * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )


def build_report_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(
        name="backup_health_report_sensor",
        job=job,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Refreshes backup_health_report after new materializations of any other asset (backups, "
        "snapshots, exports, drills); several in one interval give one refresh.",
    )
    def backup_health_report_sensor(context: dg.SensorEvaluationContext):
        after = int(context.cursor) if (context.cursor or "").isdigit() else 0
        newest, changed = after, []
        for key in context.repository_def.asset_graph.get_all_asset_keys():
            if key.to_user_string() == REPORT_ASSET:
                continue
            records = context.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, after_storage_id=after or None), limit=1
            ).records
            if records:
                newest = max(newest, records[0].storage_id)
                changed.append(key.to_user_string())
        if not changed:
            return dg.SkipReason("No new materializations since the last report")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"after-{newest}", tags={"cidadao/trigger": ", ".join(changed)[:200]})],
            cursor=str(newest),
        )

    return backup_health_report_sensor
