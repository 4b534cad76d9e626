"""Health rules as pure functions: size deviation, freshness (RPO), encryption, and the restore drills'
pass/duration (RTO)/recency rules. The Dagster checks (defs/artifact_checks.py) call these."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..artifacts.drill_reports import DrillReport
from ..artifacts.manifest import Manifest, parse_iso

MAX_DRILL_AGE = timedelta(days=35)  # a drill must have passed within this (monthly drills, a few days' slack)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    description: str
    metadata: dict


def size_verdict(
    current: int,
    history: list[int],
    *,
    max_deviation: float = 0.5,
    expected_min: int | None = None,
    expected_max: int | None = None,
    noun: str = "backups",
) -> Verdict:
    """Fails when `current` is more than `max_deviation` away from the median of `history` (the
    strategy's "backup_size_deviation > 50%"), or outside the expected range when one is set."""
    problems = []
    meta: dict = {"stored_bytes": current, "history_count": len(history)}
    if history:
        median = statistics.median(history)
        deviation = (current - median) / median if median else float("inf")
        meta.update(median_bytes=int(median), deviation_pct=round(deviation * 100, 1))
        if abs(deviation) > max_deviation:
            problems.append(
                f"{current:,} bytes is {deviation:+.0%} from the median {int(median):,} of the previous "
                f"{len(history)} valid {noun} (limit ±{max_deviation:.0%})"
            )
    if expected_min is not None and current < expected_min:
        problems.append(f"{current:,} bytes is below the expected minimum {expected_min:,}")
    if expected_max is not None and current > expected_max:
        problems.append(f"{current:,} bytes is above the expected maximum {expected_max:,}")
    if problems:
        return Verdict(False, "; ".join(problems), meta)
    if not history:
        return Verdict(True, f"No earlier valid {noun} to compare with yet", meta)
    return Verdict(True, f"Within ±{max_deviation:.0%} of the median of {len(history)} earlier {noun}", meta)


def freshness_verdict(valid: list[Manifest], now: datetime, max_age: timedelta) -> Verdict:
    """Judge the NEWEST PARTITION's manifest, not whatever ran last: backfilling an old day must
    not make a series look fresh. Age is measured from the snapshot time recorded in the manifest."""
    if not valid:
        return Verdict(False, "No valid backup exists (no manifest with its object present)", {})
    newest = max(valid, key=lambda m: m.partition)
    age = now - newest.taken_at
    hours = age.total_seconds() / 3600
    meta = {
        "newest_partition": newest.partition,
        "snapshot_at": newest.timings.snapshot_at,
        "age_hours": round(hours, 2),
        "max_age_hours": max_age.total_seconds() / 3600,
        "valid_backups": len(valid),
    }
    if age > max_age:
        return Verdict(False, f"Newest valid backup ({newest.partition}) is {hours:.1f} h old, over the limit", meta)
    return Verdict(True, f"Newest valid backup ({newest.partition}) is {hours:.1f} h old", meta)


def missing_verdict(partition: str, where: str, noun: str) -> Verdict:
    return Verdict(False, f"No manifest for {partition} under {where}: no {noun} exists", {})


def encryption_verdict(manifest: Manifest, production: bool, noun: str) -> Verdict:
    """Unencrypted is an ERROR only in production (LGPD: artifacts hold citizens' personal data)."""
    info = manifest.artifact.encryption
    if info:
        return Verdict(True, "age-encrypted", {"recipients": ", ".join(info.recipients)})
    if production:
        return Verdict(False, f"Stored UNENCRYPTED in production: set BACKUP_AGE_RECIPIENTS and re-run the {noun}", {})
    return Verdict(True, "Not encrypted (allowed outside production)", {})


def drill_passed_verdict(report: DrillReport, noun: str) -> Verdict:
    text = "Restored and verified" if report.passed else "Drill failed: " + "; ".join(report.problems)
    return Verdict(
        report.passed,
        f"{text} ({noun} {report.backup_partition})",
        {"proved_backup": report.backup_partition, "backup_uri": report.backup_uri},
    )


def drill_rule_descriptions(rto_s: float, rto_name: str, drill: str) -> dict[str, str]:
    """What `drill_duration_within_rto` and `recent_passing_drill` check, worded from the rules below."""

    def minutes(seconds: float) -> str:
        return f"{seconds / 60:g} min"

    return {
        "drill_duration_within_rto": f"Time against the RTO for {rto_name} ({minutes(rto_s)}): WARN above "
        f"{minutes(rto_s / 2)}, ERROR above {minutes(rto_s)}.",
        "recent_passing_drill": f"ERROR when no {drill} has passed in the last {MAX_DRILL_AGE.days} days: an "
        "untested backup is a hope, not a backup.",
    }


def drill_duration_verdict(seconds: float, rto_s: float) -> tuple[Verdict, str]:
    """(verdict, "WARN"|"ERROR"): pass within half the RTO; WARN above half; ERROR above the RTO."""
    meta = {"duration_s": seconds, "rto_s": rto_s, "rto_used_pct": round(100 * seconds / rto_s, 1)}
    if seconds > rto_s:
        return Verdict(False, f"{seconds:.0f} s exceeds the {rto_s:g} s RTO", meta), "ERROR"
    if seconds > rto_s / 2:
        return Verdict(False, f"{seconds:.0f} s is over half the {rto_s:g} s RTO", meta), "WARN"
    return Verdict(True, f"{seconds:.1f} s of the {rto_s:g} s RTO", meta), "WARN"


def drill_recency_verdict(
    report: DrillReport | None, now: datetime, noun: str, max_age: timedelta = MAX_DRILL_AGE
) -> Verdict:
    """Fails when the newest passing drill is older than `max_age`, or there is none."""
    if report is None:
        return Verdict(False, "No restore drill has ever passed", {})
    age = now - parse_iso(report.finished_at)
    return Verdict(
        age <= max_age,
        f"Last passing drill ({report.partition}, {noun} {report.backup_partition}) "
        f"finished {age.days} days ago (limit {max_age.days})",
        {"age_days": round(age.total_seconds() / 86400, 2), "proved_backup": report.backup_partition},
    )
