"""Check results shared by every restore drill (PostgreSQL, Redis): duration against the RTO, and how long
ago a drill last passed."""

from datetime import timedelta

import dagster as dg

from ..core.artifacts.manifest import parse_iso, utc_now

MAX_DRILL_AGE = timedelta(days=35)


def duration_result(report: dict, rto_s: float) -> dg.AssetCheckResult:
    """Pass within half the RTO; WARN above half; ERROR above the RTO."""
    seconds = float(report["duration_seconds"])
    meta = {"duration_s": seconds, "rto_s": rto_s, "rto_used_pct": round(100 * seconds / rto_s, 1)}
    if seconds > rto_s:
        severity, passed, text = dg.AssetCheckSeverity.ERROR, False, f"{seconds:.0f} s exceeds the {rto_s:g} s RTO"
    elif seconds > rto_s / 2:
        severity, passed, text = dg.AssetCheckSeverity.WARN, False, f"{seconds:.0f} s is over half the {rto_s:g} s RTO"
    else:
        severity, passed, text = dg.AssetCheckSeverity.WARN, True, f"{seconds:.1f} s of the {rto_s:g} s RTO"
    return dg.AssetCheckResult(passed=passed, severity=severity, description=text, metadata=meta)


def recency_result(report: dict | None, artifact: str) -> dg.AssetCheckResult:
    """ERROR when the newest passing drill is older than 35 days (or there is none)."""
    if report is None:
        return dg.AssetCheckResult(passed=False, description="No restore drill has ever passed")
    age = utc_now() - parse_iso(report["finished_at"])
    return dg.AssetCheckResult(
        passed=age <= MAX_DRILL_AGE,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"Last passing drill ({report['partition']}, {artifact} {report['backup_partition']}) "
        f"finished {age.days} days ago (limit {MAX_DRILL_AGE.days})",
        metadata={"age_days": round(age.total_seconds() / 86400, 2), "proved_backup": report["backup_partition"]},
    )
