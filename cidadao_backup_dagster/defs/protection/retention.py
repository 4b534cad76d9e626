"""`apply_retention`: delete expired artifacts of every class, never crossing the safety floors.

The plan comes from core.retention.plan_retention (a pure function); this op only gathers inputs, shows the
plan, and (unless dry_run) deletes manifest-first, one audit record per deleted artifact.
"""

from datetime import UTC, datetime
from itertools import groupby

import dagster as dg

from ...core.errors import BackupError, ConfigurationError
from ...core.postgres.pitr.layout import base_series
from ...core.postgres.pitr.retention import plan_pitr_retention, source_of
from ...core.protection.retention import Artifact, Plan, Policy, delete_artifact, inventory, plan_retention
from ..audit import audited
from ..settings import env_field
from .classes import ArtifactClass
from .dry_run import DryRunConfig, daily_for_real, finish


class RetentionSettings(dg.ConfigurableResource):
    """Retention per artifact class (days), with the floor of newest valid artifacts always kept."""

    days: str = env_field(
        "BACKUP_RETENTION_DAYS",
        "",
        "Overrides, e.g. 'postgres_daily=14,redis_hourly=3'; classes not named keep their defaults",
    )
    min_keep: int = env_field("RETENTION_MIN_KEEP", 3, "Newest valid artifacts always kept per class")

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
        return Policy(
            keep_days=overrides.get(artifact_class.name, artifact_class.keep_days),
            min_keep=artifact_class.min_keep or self.min_keep,
        )


class RetentionConfig(DryRunConfig):
    """`apply_retention_op`'s run config: only `dry_run`."""


def _apply_class(
    context: dg.OpExecutionContext, artifact_class: ArtifactClass, now: datetime, dry_run: bool
) -> tuple[str, Plan | None, str | None]:
    """(the class's row of the plan table, its plan when one was made, why nothing was deleted when its storage
    could not be read for sure)."""
    resources, name = context.resources, artifact_class.name
    try:
        storage = getattr(resources, artifact_class.storage_key).open()
        series = artifact_class.series(resources)
        policy = resources.retention.policy(artifact_class)
    except (ConfigurationError, BackupError) as exc:
        context.log.warning(f"{name}: skipped ({exc})")
        return f"| {name} | skipped | | {exc} |", None, None
    try:
        if artifact_class.planner is not None:
            plan = artifact_class.planner(storage, series, policy, now)
        else:
            protected = artifact_class.protected(resources, context.log.warning)
            plan = plan_retention(inventory(storage, series), policy, now, protected)
    except Exception as exc:  # noqa: BLE001 - unsure means stop: any read error spares the whole class
        cause = f"{type(exc).__name__}: {exc}"
        context.log.error(f"{name}: nothing deleted, storage could not be read ({cause})")
        return f"| {name} | stopped | | could not read: {cause} |", None, f"{name} ({cause})"
    context.log.info(
        f"{name} ({storage.uri(series)}), keep {policy.keep_days:g} days, floor "
        f"{policy.min_keep}:\n" + "\n".join(plan.describe() or ["(nothing stored)"])
    )
    if not dry_run:
        for target, batch in _batches(storage, series, plan.delete):
            with audited(context, storage, "delete", target) as audit:
                deleted = [key for artifact in batch for key in delete_artifact(storage, series, artifact)]
                audit["objects"] = deleted if len(batch) == 1 else _summary(deleted)
    labels = [a.label for a in plan.delete]
    gone = ", ".join(labels if len(labels) <= 12 else [*labels[:5], f"… {len(labels) - 10} more …", *labels[-5:]])
    gone = gone or "—"
    return f"| {name} | {len(plan.delete)} | {len(plan.keep)} | {gone} |", plan, None


def _batches(storage, series: str, artifacts: list[Artifact]):
    """(audit target, artifacts) in plan order: one per artifact, one per run of a group (a timeline's old WAL:
    a record per segment would bury the trail)."""
    for group, run in groupby(artifacts, key=lambda a: a.group):
        run = list(run)
        if group:
            yield storage.uri(f"{group}/") + f" ({len(run)} artifacts: {run[0].partition} .. {run[-1].partition})", run
        else:
            for a in run:
                yield storage.uri(a.manifest_key or f"{a.series or series}/{a.partition}/"), [a]


def _summary(keys: list[str]) -> dict:
    return {"count": len(keys), "first": keys[0] if keys else None, "last": keys[-1] if keys else None}


def build_retention_job(classes: list[ArtifactClass]) -> dg.JobDefinition:
    needed = {key for c in classes for key in (c.storage_key, *c.resource_keys)}

    @dg.op(
        required_resource_keys={"retention", *needed},
        description="Plan and apply retention for every artifact class; dry run shows the plan.",
        tags={"cidadao/domain": "protection"},
    )
    def apply_retention_op(context: dg.OpExecutionContext, config: RetentionConfig) -> dg.Output:
        now, rows, deleted, kept = datetime.now(UTC), [], 0, 0
        unsafe: list[str] = []  # classes whose storage could not be read for sure: nothing of theirs deleted
        for artifact_class in classes:
            row, plan, stopped = _apply_class(context, artifact_class, now, config.dry_run)
            rows.append(row)
            if plan is not None:
                deleted, kept = deleted + len(plan.delete), kept + len(plan.keep)
            if stopped:
                unsafe.append(stopped)
        verb = "would delete" if config.dry_run else "deleted"
        table = f"| class | {verb} | kept | partitions {verb} |\n|---|---|---|---|\n" + "\n".join(rows)
        metadata = {
            "dry_run": dg.MetadataValue.bool(config.dry_run),
            "plan": dg.MetadataValue.md(table),
            "deleted": dg.MetadataValue.int(0 if config.dry_run else deleted),
            "planned_deletions": dg.MetadataValue.int(deleted),
            "kept": dg.MetadataValue.int(kept),
        }
        problem = (
            "Retention deleted nothing of these classes because their storage could not be read for sure: "
            + "; ".join(unsafe)
            + ". Fix the storage access (credentials, permissions, endpoint, identity) and run again; the "
            "other classes were handled."
        )
        return finish(metadata, problem if unsafe else "")

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
    return daily_for_real(job, "30 4 * * *")  # 04:30 UTC: after the 03:00 daily backup and its checks


# ------------------------------------------------------------------------------------------ PITR

BASE_RETENTION_VARIABLE = "POSTGRES_BASE_RETENTION_DAYS"  # base backups (and the WAL they need): default 35 days
MIN_CHAINS_VARIABLE = "POSTGRES_BASE_MIN_CHAINS"  # the newest full chains always kept: default 2


def pitr_retention_classes(settings) -> list[ArtifactClass]:
    """`postgres_pitr` per PostgreSQL source with PITR on: its base backups and WAL under one plan
    (core/postgres/pitr/retention.py). Also a row of the health report (its recoverable window)."""
    from ..postgres.pitr import BASE_ASSET, pitr_for  # at call time: defs.postgres imports this package
    from ..postgres.pitr_checks import MAX_AGE_VARIABLE, number_setting
    from ..sources import PgBinding

    out = []
    for binding in (PgBinding.of(spec, settings) for spec in settings.sources.postgres):
        if not pitr_for(binding):
            continue
        days = number_setting(binding.settings, BASE_RETENTION_VARIABLE, 35)
        chains = int(number_setting(binding.settings, MIN_CHAINS_VARIABLE, 2))
        if days <= 0 or chains < 1:
            raise ConfigurationError(
                f"{BASE_RETENTION_VARIABLE}/{MIN_CHAINS_VARIABLE}",
                f"{days:g} days, {chains} chains",
                "days > 0, chains >= 1",
            )
        wal_minutes = number_setting(binding.settings, MAX_AGE_VARIABLE, 10)
        out.append(
            ArtifactClass(
                binding.class_name("postgres_pitr"),
                binding.storage_key,
                lambda r, b=binding: base_series(b.source(r).series_name()),
                days,
                resource_keys=(binding.source_key,),
                asset=binding.key(BASE_ASSET).to_user_string(),
                alert_limit=lambda r, m=wal_minutes: m / 60,  # the report: the newest recoverable instant's age
                planner=lambda storage, series, policy, now: plan_pitr_retention(
                    storage, source_of(series), policy, now
                ),
                min_keep=chains,
            )
        )
    return out
