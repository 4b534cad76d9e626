"""`sweep_scratch`: remove scratch databases, throwaway redis-servers and temp dirs left by runs that died.

The plan comes from core.sweeper.plan_sweep (a pure function); this op only gathers the servers and temp dir,
shows the plan, and (unless dry_run) removes, one audit record per removal. Servers: each PostgreSQL source's
own server and the drill server (DRILL_DATABASE_URL). A restore onto another server (a run's
target_server_url) is not known here: only that run's config names it.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import Field

from ...core.errors import BackupError, ConfigurationError
from ...core.postgres.client import PgConnection
from ...core.protection.sweeper import DEFAULT_GRACE_HOURS, plan_sweep, remove, survey, temp_roots
from ..audit import audit_storage, audited
from ..sources import PgBinding
from .dry_run import DryRunConfig, daily_for_real, finish


class SweepConfig(DryRunConfig):
    grace_hours: float = Field(
        default=DEFAULT_GRACE_HOURS,
        description="Leave anything younger than this (hours). Keep it above the longest run (run monitoring "
        "fails runs after 6 h): a scratch database whose maker runs on another machine is judged by age alone.",
    )


def _servers(context, bindings: list[PgBinding]) -> tuple[list[PgConnection], list[str]]:
    """Each source's server and its drill server, once per host:port; sources not configured are skipped."""
    recovery, found, skipped = context.resources.recovery, {}, []
    for binding in bindings:
        try:
            source = binding.source(context.resources).connection()
            drill = recovery.server(recovery.drill_server_url, source, "DRILL_DATABASE_URL")
        except (ConfigurationError, BackupError) as exc:
            skipped.append(f"{binding.name or 'default'} source: {exc}")
            continue
        for server in (source, drill):
            found.setdefault((server.host, server.port), server)
    return list(found.values()), skipped


def build_sweeper(bindings: list[PgBinding]) -> dg.Definitions:
    """The `sweep_scratch` job over `bindings`' servers, and its daily schedule."""

    @dg.op(
        required_resource_keys={"recovery", "backup_storage", *(b.source_key for b in bindings)},
        description="Find scratch databases, throwaway redis-servers and cbd- temp files left by dead runs and "
        "remove those past the grace period; dry run shows the plan.",
        tags={"cidadao/domain": "protection"},
    )
    def sweep_scratch_op(context: dg.OpExecutionContext, config: SweepConfig) -> dg.Output:
        if config.grace_hours < 0:
            raise dg.Failure("grace_hours is negative: give 0 or more hours", allow_retries=False)
        servers, skipped = _servers(context, bindings)
        found = survey(servers, temp_roots(context.resources.recovery.scratch_dir()))
        found.skipped = skipped + found.skipped
        plan = plan_sweep(found, datetime.now(UTC), timedelta(hours=config.grace_hours))
        context.log.info(f"Sweep, grace {config.grace_hours:g} h:\n" + "\n".join(plan.describe() or ["(nothing)"]))
        for line in plan.skipped:
            context.log.warning(f"Not swept: {line}")
        storage, failed, rows = audit_storage(context.resources.backup_storage), [], []
        for item in plan.remove:
            outcome = "would remove"
            if not config.dry_run:
                try:
                    with audited(context, storage, "sweep", item.target) as audit:
                        audit.update(kind=item.kind, reason=item.reason, age_hours=item.age_hours)
                        outcome = audit["done"] = remove(item)
                except BackupError as exc:
                    context.log.error(str(exc))
                    failed.append(str(exc))
                    outcome = "failed"
            rows.append(f"| {item.kind} | {item.target} | {outcome} | {item.reason} |")
        rows += [f"| {i.kind} | {i.target} | kept | {i.reason} |" for i in plan.keep]
        rows += [f"| — | {s} | skipped | could not be read |" for s in plan.skipped]
        table = "| kind | what | outcome | why |\n|---|---|---|---|\n" + "\n".join(rows)
        metadata = {
            "dry_run": dg.MetadataValue.bool(config.dry_run),
            "plan": dg.MetadataValue.md(table),
            "removed": dg.MetadataValue.int(0 if config.dry_run else len(plan.remove) - len(failed)),
            "planned_removals": dg.MetadataValue.int(len(plan.remove)),
            "kept": dg.MetadataValue.int(len(plan.keep)),
            "skipped": dg.MetadataValue.int(len(plan.skipped)),
        }
        # the others were removed; what failed is left for the next sweep
        problem = f"{len(failed)} of {len(plan.remove)} removals failed: {'; '.join(failed)}" if failed else ""
        return finish(metadata, problem)

    @dg.job(
        name="sweep_scratch",
        description="Removes scratch databases (cbd_drill_, cbd_recover_, cbd_restore_), throwaway redis-servers "
        "and cbd- temp files that runs killed mid-way left behind, after a grace period; never a `_replaced_` "
        "database nor one this tool did not label. Dry run by default when launched by hand.",
        tags={"cidadao/domain": "protection"},
    )
    def sweep_scratch():
        sweep_scratch_op()

    # 05:45 UTC: after the 05:00/05:30 monthly drills have started; the grace period spares any still running.
    schedule = daily_for_real(sweep_scratch, "45 5 * * *")
    return dg.Definitions(jobs=[sweep_scratch], schedules=[schedule])
