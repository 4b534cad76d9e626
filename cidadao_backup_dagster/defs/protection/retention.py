"""`apply_retention`: delete expired artifacts of every class, never crossing the safety floors.

The plan comes from core.retention.plan_retention (a pure function); this op only gathers inputs, shows the
plan, and (unless dry_run) deletes manifest-first, one audit record per deleted artifact.
"""

from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from ...core.errors import BackupError, ConfigurationError
from ...core.protection.retention import Policy, delete_artifact, inventory, plan_retention
from ..audit import audited
from .classes import ArtifactClass


class RetentionSettings(dg.ConfigurableResource):
    """Retention per artifact class (days), with the floor of newest valid artifacts always kept."""

    days: str = Field(
        default="",
        description="Overrides, e.g. 'postgres_daily=14,redis_hourly=3' (BACKUP_RETENTION_DAYS); "
        "classes not named keep their defaults",
    )
    min_keep: int = Field(default=3, description="Newest valid artifacts always kept per class (RETENTION_MIN_KEEP)")

    def policy(self, artifact_class: ArtifactClass) -> Policy:
        overrides = {}
        for item in filter(None, (x.strip() for x in self.days.split(","))):
            name, _, value = item.partition("=")
            try:
                overrides[name.strip()] = float(value)
            except ValueError:
                raise ConfigurationError(
                    "BACKUP_RETENTION_DAYS", f"{item!r} is not name=days", "write e.g. postgres_daily=14"
                ) from None
        return Policy(keep_days=overrides.get(artifact_class.name, artifact_class.keep_days), min_keep=self.min_keep)


class RetentionConfig(dg.Config):
    dry_run: bool = Field(default=True, description="Show the plan only. The daily schedule runs with false.")


def build_retention_job(classes: list[ArtifactClass]) -> dg.JobDefinition:
    needed = {key for c in classes for key in (c.storage_key, *c.resource_keys)}

    @dg.op(
        required_resource_keys={"retention", *needed},
        description="Plan and apply retention for every artifact class; dry run shows the plan.",
        tags={"cidadao/domain": "protection"},
    )
    def apply_retention_op(context: dg.OpExecutionContext, config: RetentionConfig) -> dg.Output:
        resources, now = context.resources, datetime.now(UTC)
        rows, totals = [], {"deleted": 0, "kept": 0}
        unsafe: list[str] = []  # classes whose storage could not be read for sure: nothing of theirs deleted
        for artifact_class in classes:
            try:
                storage = getattr(resources, artifact_class.storage_key).open()
                series = artifact_class.series(resources)
                policy = resources.retention.policy(artifact_class)
            except (ConfigurationError, BackupError) as exc:
                context.log.warning(f"{artifact_class.name}: skipped ({exc})")
                rows.append(f"| {artifact_class.name} | skipped | | {exc} |")
                continue
            try:
                protected = artifact_class.protected(resources, context.log.warning)
                plan = plan_retention(inventory(storage, series), policy, now, protected)
            except Exception as exc:  # noqa: BLE001 - unsure means stop: any read error spares the whole class
                cause = f"{type(exc).__name__}: {exc}"
                context.log.error(f"{artifact_class.name}: nothing deleted, storage could not be read ({cause})")
                rows.append(f"| {artifact_class.name} | stopped | | could not read: {cause} |")
                unsafe.append(f"{artifact_class.name} ({cause})")
                continue
            context.log.info(
                f"{artifact_class.name} ({storage.uri(series)}), keep {policy.keep_days:g} days, floor "
                f"{policy.min_keep}:\n" + "\n".join(plan.describe() or ["(nothing stored)"])
            )
            for artifact in plan.delete:
                if config.dry_run:
                    continue
                target = storage.uri(artifact.manifest_key or f"{series}/{artifact.partition}/")
                with audited(context, storage, "delete", target) as audit:
                    audit["objects"] = delete_artifact(storage, series, artifact)
            totals["deleted"] += len(plan.delete)
            totals["kept"] += len(plan.keep)
            gone = ", ".join(a.label for a in plan.delete) or "—"
            rows.append(f"| {artifact_class.name} | {len(plan.delete)} | {len(plan.keep)} | {gone} |")
        verb = "would delete" if config.dry_run else "deleted"
        table = f"| class | {verb} | kept | partitions {verb} |\n|---|---|---|---|\n" + "\n".join(rows)
        metadata = {
            "dry_run": dg.MetadataValue.bool(config.dry_run),
            "plan": dg.MetadataValue.md(table),
            "deleted": dg.MetadataValue.int(0 if config.dry_run else totals["deleted"]),
            "planned_deletions": dg.MetadataValue.int(totals["deleted"]),
            "kept": dg.MetadataValue.int(totals["kept"]),
        }
        if unsafe:
            raise dg.Failure(
                "Retention deleted nothing of these classes because their storage could not be read for sure: "
                + "; ".join(unsafe)
                + ". Fix the storage access (credentials, permissions, endpoint, identity) and run again; the "
                "other classes were handled.",
                metadata=metadata,
                allow_retries=False,
            )
        return dg.Output(
            None,
            metadata={
                "dry_run": dg.MetadataValue.bool(config.dry_run),
                "plan": dg.MetadataValue.md(table),
                "deleted": dg.MetadataValue.int(0 if config.dry_run else totals["deleted"]),
                "planned_deletions": dg.MetadataValue.int(totals["deleted"]),
                "kept": dg.MetadataValue.int(totals["kept"]),
            },
        )

    @dg.job(
        name="apply_retention",
        description="Deletes expired backups, snapshots and exports (manifest first), never the newest valid "
        "ones of a class nor a drill-proven backup. Dry run by default when launched by hand.",
        tags={"cidadao/domain": "protection"},
    )
    def apply_retention():
        apply_retention_op()

    return apply_retention


def build_retention_schedule(job: dg.JobDefinition) -> dg.ScheduleDefinition:
    # 04:30 UTC: after the 03:00 daily backup and its checks.
    return dg.ScheduleDefinition(
        name="apply_retention_schedule",
        job=job,
        cron_schedule="30 4 * * *",
        execution_timezone="UTC",
        run_config={"ops": {"apply_retention_op": {"config": {"dry_run": False}}}},
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
