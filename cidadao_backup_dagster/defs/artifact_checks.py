"""The one factory for the checks every artifact series carries (`integrity`, `size_deviation`, `encrypted`,
`freshness`) and for the restore-drill checks (`drill_passed`, `drill_duration_within_rto`,
`recent_passing_drill`). A domain describes how to read its series and verify one artifact (an
`ArtifactSeries` or a `DrillSeries`); the pass/fail rules are in core/monitoring/health.py.

Per-partition checks judge one partition's artifact. A run may cover a range of partitions (an export
backfill): such a check then reports one evaluation per partition, each under its own partition, so the UI
shows every day's result and a failed blocking integrity check still fails the step."""

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import dagster as dg

from ..core.artifacts.drill_reports import DrillReport
from ..core.artifacts.manifest import Manifest, read_manifest, utc_now, valid_manifests
from ..core.artifacts.storage import Storage
from ..core.errors import BackupError, ConfigurationError
from ..core.monitoring.health import (
    Verdict,
    drill_duration_verdict,
    drill_passed_verdict,
    drill_recency_verdict,
    encryption_verdict,
    freshness_verdict,
    missing_verdict,
    size_verdict,
)

# Per-partition asset checks are a Dagster preview feature, used deliberately: integrity and size are
# properties of one partition's artifact, and the UI shows their results per partition. Filtered only here:
# every partitioned check is built by this module.
warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")

WARN, ERROR = dg.AssetCheckSeverity.WARN, dg.AssetCheckSeverity.ERROR
SEVERITY = {"WARN": WARN, "ERROR": ERROR}

# (context, storage, the partition's manifest, age identities or None) -> verdict
Verify = Callable[[Any, Storage, Manifest, list | None], Verdict]


@dataclass(frozen=True)
class SizeLimits:
    history: int  # how many earlier valid artifacts to compare with
    max_deviation: float  # a fraction of their median
    expected_min: int | None = None
    expected_max: int | None = None


@dataclass(frozen=True)
class ArtifactSeries:
    """How one domain's checks read its series: `open(resources)` -> (storage, series prefix)."""

    noun: str  # "backup", "snapshot", "export": what the messages call one artifact
    partitions_def: dg.PartitionsDefinition
    needs: frozenset[str]  # resources `open` reads
    open: Callable[[Any], tuple[Storage, str]]
    verify: Verify  # integrity: re-read the artifact; the verdict's metadata adds to the common keys
    size_limits: Callable[[Any], SizeLimits]
    # (resources, storage, series) -> (verdict, "WARN"|"ERROR"); by default one ERROR limit, `max_age`
    freshness: Callable[[Any, Storage, str], tuple[Verdict, str]] | None = None
    max_age: Callable[[Any], timedelta] = lambda _r: timedelta(hours=48)
    segment: Callable[[str], str] = lambda partition: partition  # Dagster partition -> storage partition
    size_metadata: Callable[[Manifest], dict] = lambda _m: {}
    size_needs: frozenset[str] = frozenset()
    freshness_needs: frozenset[str] = frozenset()
    descriptions: dict[str, str] = field(default_factory=dict)


def asset_key_of(asset: dg.AssetKey | dg.AssetsDefinition) -> dg.AssetKey:
    return asset.key if isinstance(asset, dg.AssetsDefinition) else asset


def check_result(verdict: Verdict, severity: dg.AssetCheckSeverity) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=verdict.passed, severity=severity, description=verdict.description, metadata=verdict.metadata
    )


def each_partition(
    context: dg.AssetCheckExecutionContext,
    asset_key: dg.AssetKey,
    check_name: str,
    severity: dg.AssetCheckSeverity,
    blocking: bool,
    evaluate: Callable[[str], Verdict],
) -> Iterator:
    """One result for a one-partition run; one evaluation per partition for a ranged run (an
    AssetCheckResult would be recorded without a partition there)."""
    if context.has_partition_key:
        yield check_result(evaluate(context.partition_key), severity)
        return
    for key in context.partition_keys:
        verdict = evaluate(key)
        yield dg.AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=check_name,
            passed=verdict.passed,
            severity=severity,
            description=verdict.description,
            metadata=verdict.metadata,
            partition=key,
            blocking=blocking,
        )
    yield dg.Output(None)  # the check's own output; the evaluations above carry the results


def current_manifest(
    storage: Storage, prefix: str, series: ArtifactSeries, partition: str, *, detailed: bool = True
) -> tuple[Manifest | None, Verdict | None]:
    """(the partition's newest manifest, None), or (None, a failed verdict saying why there is none)."""
    try:
        manifest = read_manifest(storage, prefix, series.segment(partition))
    except BackupError as exc:  # damaged, or storage unreadable: a failed check, never a pass
        return None, Verdict(False, str(exc), {})
    if manifest is not None:
        return manifest, None
    if detailed:
        return None, missing_verdict(partition, storage.uri(prefix), series.noun)
    return None, Verdict(False, f"No {series.noun} for {partition}", {})


def partition_check(
    asset: dg.AssetKey | dg.AssetsDefinition,
    series: ArtifactSeries,
    name: str,
    evaluate: Callable[[Any, Storage, str, Manifest], Verdict],
    *,
    severity: dg.AssetCheckSeverity,
    blocking: bool = False,
    needs: frozenset[str] | set[str] = frozenset(),
    detailed_missing: bool = True,
    description: str | None = None,
) -> dg.AssetChecksDefinition:
    """A per-partition check: `evaluate(context, storage, prefix, manifest)` judges each partition's
    current artifact; a partition without one fails."""
    key = asset_key_of(asset)

    @dg.asset_check(
        asset=key,
        name=name,
        blocking=blocking,
        partitions_def=series.partitions_def,
        description=description or series.descriptions.get(name),
        required_resource_keys={*series.needs, *needs},
    )
    def _check(context: dg.AssetCheckExecutionContext):
        storage, prefix = series.open(context.resources)

        def judge(partition: str) -> Verdict:
            manifest, missing = current_manifest(storage, prefix, series, partition, detailed=detailed_missing)
            return missing or evaluate(context, storage, prefix, manifest)

        yield from each_partition(context, key, name, severity, blocking, judge)

    return _check


def identities_or_verdict(encryption) -> tuple[list | None, Verdict | None]:
    """(age identities or None when none is configured, None), or (None, a failed verdict) when
    BACKUP_AGE_IDENTITY_FILE is set but unreadable."""
    try:
        return encryption.identities(), None
    except ConfigurationError as exc:
        return None, Verdict(False, str(exc), {})


def _integrity(series: ArtifactSeries) -> Callable[[Any, Storage, str, Manifest], Verdict]:
    def evaluate(context, storage: Storage, prefix: str, manifest: Manifest) -> Verdict:
        identities, unreadable = identities_or_verdict(context.resources.encryption)
        if unreadable and manifest.encrypted:  # say so rather than verify less than asked
            return unreadable
        verdict = series.verify(context, storage, manifest, identities)
        common = {"storage_uri": manifest.artifact.uri, "stored_bytes": manifest.stored_bytes}
        return Verdict(
            verdict.passed, verdict.description, {**common, "sha256": manifest.stored_sha256, **verdict.metadata}
        )

    return evaluate


def _size(series: ArtifactSeries) -> Callable[[Any, Storage, str, Manifest], Verdict]:
    def evaluate(context, storage: Storage, prefix: str, manifest: Manifest) -> Verdict:
        limits = series.size_limits(context.resources)
        history = valid_manifests(storage, prefix, before=manifest.partition, limit=limits.history)
        verdict = size_verdict(
            manifest.stored_bytes,
            [m.stored_bytes for m in history],
            max_deviation=limits.max_deviation,
            expected_min=limits.expected_min,
            expected_max=limits.expected_max,
            noun=f"{series.noun}s",
        )
        return Verdict(verdict.passed, verdict.description, {**verdict.metadata, **series.size_metadata(manifest)})

    return evaluate


def _encrypted(series: ArtifactSeries) -> Callable[[Any, Storage, str, Manifest], Verdict]:
    def evaluate(context, _storage: Storage, _prefix: str, manifest: Manifest) -> Verdict:
        return encryption_verdict(manifest, context.resources.encryption.production, series.noun)

    return evaluate


def _judge_freshness(series: ArtifactSeries, resources, storage: Storage, prefix: str) -> tuple[Verdict, str]:
    if series.freshness is not None:
        return series.freshness(resources, storage, prefix)
    return freshness_verdict(valid_manifests(storage, prefix), utc_now(), series.max_age(resources)), "ERROR"


def freshness_check(asset: dg.AssetKey | dg.AssetsDefinition, series: ArtifactSeries) -> dg.AssetChecksDefinition:
    """Series-wide: judged from the newest partition's manifest (backfilling an old one does not count)."""

    @dg.asset_check(
        asset=asset_key_of(asset),
        name="freshness",
        description=series.descriptions.get("freshness"),
        required_resource_keys={*series.needs, *series.freshness_needs},
    )
    def freshness(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        try:
            storage, prefix = series.open(context.resources)
        except ConfigurationError as exc:
            return dg.AssetCheckResult(passed=False, description=str(exc))
        verdict, level = _judge_freshness(series, context.resources, storage, prefix)
        return check_result(verdict, SEVERITY[level])

    return freshness


def build_artifact_checks(
    asset: dg.AssetKey | dg.AssetsDefinition, series: ArtifactSeries
) -> dict[str, dg.AssetChecksDefinition]:
    """The four checks every artifact series has, by name: `integrity` (blocking), `size_deviation`,
    `encrypted` (per partition) and `freshness` (series-wide)."""
    encryption = frozenset({"encryption"})
    return {
        "integrity": partition_check(
            asset, series, "integrity", _integrity(series), severity=ERROR, blocking=True, needs=encryption
        ),
        "size_deviation": partition_check(
            asset,
            series,
            "size_deviation",
            _size(series),
            severity=WARN,
            needs=series.size_needs,
            detailed_missing=False,
        ),
        "encrypted": partition_check(
            asset, series, "encrypted", _encrypted(series), severity=ERROR, needs=encryption, detailed_missing=False
        ),
        "freshness": freshness_check(asset, series),
    }


# ------------------------------------------------------------------------------------------ restore drills


@dataclass(frozen=True)
class DrillSeries:
    """How one domain's drill checks read its drill reports."""

    noun: str  # what a drill proves: "backup", "snapshot"
    report_name: str  # "drill report", "Redis drill report": for "No <report_name> for <month>"
    partitions_def: dg.PartitionsDefinition
    needs: frozenset[str]
    rto_s: float
    read_report: Callable[[Any, str], DrillReport | None]  # (resources, month) -> that month's newest report
    newest_passing: Callable[[Any], DrillReport | None]  # resources -> the newest passing report
    descriptions: dict[str, str] = field(default_factory=dict)


def _month_check(
    drill: DrillSeries, context, judge: Callable[[DrillReport], tuple[Verdict, dg.AssetCheckSeverity]]
) -> dg.AssetCheckResult:
    """`judge(report)` of the month's newest drill report; a month without one fails."""
    month = context.partition_key
    report = drill.read_report(context.resources, month)
    if report is None:
        return dg.AssetCheckResult(passed=False, description=f"No {drill.report_name} for {month}")
    return check_result(*judge(report))


def build_drill_checks(asset: dg.AssetKey | dg.AssetsDefinition, drill: DrillSeries) -> list[dg.AssetChecksDefinition]:
    """`drill_passed` (blocking), `drill_duration_within_rto` (per month) and `recent_passing_drill`."""
    key = asset_key_of(asset)

    @dg.asset_check(
        asset=key,
        name="drill_passed",
        blocking=True,
        partitions_def=drill.partitions_def,
        description=drill.descriptions.get("drill_passed"),
        required_resource_keys=set(drill.needs),
    )
    def drill_passed(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return _month_check(drill, context, lambda report: (drill_passed_verdict(report, drill.noun), ERROR))

    @dg.asset_check(
        asset=key,
        name="drill_duration_within_rto",
        partitions_def=drill.partitions_def,
        description=drill.descriptions.get("drill_duration_within_rto"),
        required_resource_keys=set(drill.needs),
    )
    def drill_duration_within_rto(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        def judge(report: DrillReport) -> tuple[Verdict, dg.AssetCheckSeverity]:
            verdict, level = drill_duration_verdict(report.duration_seconds, drill.rto_s)
            return verdict, SEVERITY[level]

        return _month_check(drill, context, judge)

    @dg.asset_check(
        asset=key,
        name="recent_passing_drill",
        description=drill.descriptions.get("recent_passing_drill"),
        required_resource_keys=set(drill.needs),
    )
    def recent_passing_drill(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        report = drill.newest_passing(context.resources)
        return check_result(drill_recency_verdict(report, utc_now(), drill.noun), ERROR)

    return [drill_passed, drill_duration_within_rto, recent_passing_drill]
