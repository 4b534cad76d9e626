"""What the PostgreSQL and the Redis restore drills share: monthly partitions, how their checks read the drill
reports, the drill asset's result, and the checks, job and schedule around it."""

from collections.abc import Callable
from typing import Any

import dagster as dg

from ..core.artifacts.drill_reports import DrillReport
from ..core.artifacts.drills import DrillReports
from ..core.monitoring.health import drill_rule_descriptions
from .artifact_checks import DrillSeries, build_drill_checks
from .audit import audit_storage, audited
from .schedules import latest_partition_schedule, source_asset_job
from .sources import PgBinding, RedisBinding

MONTHLY = dg.MonthlyPartitionsDefinition(start_date="2025-02-01", timezone="UTC")

Binding = PgBinding | RedisBinding


def recent_drill_checks(checks: list) -> list:
    """The series-wide `recent_passing_drill` checks, which must also run hourly on their own."""
    return [c for c in checks if any(k.name == "recent_passing_drill" for k in c.check_keys)]


def drill_series(binding: Binding, reports: DrillReports, names: Callable[[Any], str | tuple[str, ...]]) -> DrillSeries:
    """How the drill checks read one source's drill `reports`, filed under `names(source resource)` (the first is
    where a month's report is read; a tuple adds names the series had before). The checks' descriptions say what
    the drill kind proves, and come from the RTO and recency rules themselves."""

    def read(resources, partition: str) -> DrillReport | None:
        storage, source = binding.storage(resources).open(), names(binding.source(resources))
        return DrillReport.of(reports.read_report(storage, source if isinstance(source, str) else source[0], partition))

    def newest(resources) -> DrillReport | None:
        storage = binding.storage(resources).open()
        return DrillReport.of(reports.newest_passing_report(storage, names(binding.source(resources))))

    return DrillSeries(
        noun=reports.noun,
        report_name=f"{reports.title} report",
        partitions_def=MONTHLY,
        needs=frozenset({binding.source_key, binding.storage_key}),
        rto_s=reports.rto_s,
        read_report=read,
        newest_passing=newest,
        descriptions={
            "drill_passed": f"ERROR unless {reports.passes_when}.",
            **drill_rule_descriptions(reports.rto_s, reports.rto_name, reports.title),
        },
    )


def audited_drill(context, binding: Binding, drill: Callable[[], DrillReport]) -> DrillReport:
    """`drill()`'s report, with one audit record: the artifact it proved, the verdict, the time, the problems."""
    with audited(context, audit_storage(binding.storage(context.resources)), "drill") as audit:
        report = drill()
        audit.update(
            artifact=report.backup_uri,
            result="ok" if report.passed else "failed",
            duration_seconds=report.duration_seconds,
            problems=list(report.problems),
        )
    return report


def drill_result(context, report: DrillReport, rto_s: int, proved: dict, restored: dict) -> dg.MaterializeResult:
    """Log the verdict; the drill asset's result: the verdict, what it `proved` (beside the backup's partition and
    URI), the time against the RTO, and what it `restored`."""
    verdict = "PASSED" if report.passed else "FAILED: " + "; ".join(report.problems)
    context.log.info(f"Drill {verdict} in {report.duration_seconds:.1f} s, proving {report.backup_uri}")
    return dg.MaterializeResult(
        metadata={
            "passed": dg.MetadataValue.bool(report.passed),
            "proved_backup": dg.MetadataValue.text(report.backup_partition),
            "backup_uri": dg.MetadataValue.text(report.backup_uri),
            **proved,
            "duration_s": dg.MetadataValue.float(report.duration_seconds),
            "rto_s": dg.MetadataValue.int(rto_s),
            **restored,
        }
    )


def build_drill(
    binding: Binding,
    name: str,
    reports: DrillReports,
    names: Callable[[Any], str | tuple[str, ...]],
    run: Callable[[dg.AssetExecutionContext, Binding], dg.MaterializeResult],
    description: str,
    *,
    cron: str,
):
    """(drill asset `name`, its checks, `<name>_job`, `<name>_schedule` on `cron`) for one source, of the drill
    kind `reports` describes, its reports filed under `names(source resource)`."""
    series = drill_series(binding, reports, names)
    kind = binding.kind.source_resource.removesuffix("_source")  # postgres | redis

    @dg.asset(
        key=binding.key(name),
        group_name=binding.group("recovery"),
        partitions_def=MONTHLY,
        kinds={kind},
        required_resource_keys={binding.source_key, binding.storage_key, "recovery", "encryption"},
        description=description,
        tags={"cidadao/domain": "recovery", **binding.tags},
    )
    def drill(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return run(context, binding)

    checks = build_drill_checks(drill, series)
    drill_job = source_asset_job(binding, f"{name}_job", drill, f"Monthly {reports.title} with its checks.")
    drill_schedule = latest_partition_schedule(
        binding.named(f"{name}_schedule"), drill_job, MONTHLY, cron, f"Monthly {reports.title}."
    )
    return drill, checks, drill_job, drill_schedule
