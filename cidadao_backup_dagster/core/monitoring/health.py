"""Health rules as pure functions: size deviation and freshness (RPO). The Dagster checks call these."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..artifacts.manifest import Manifest


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
                f"{len(history)} valid backups (limit ±{max_deviation:.0%})"
            )
    if expected_min is not None and current < expected_min:
        problems.append(f"{current:,} bytes is below the expected minimum {expected_min:,}")
    if expected_max is not None and current > expected_max:
        problems.append(f"{current:,} bytes is above the expected maximum {expected_max:,}")
    if problems:
        return Verdict(False, "; ".join(problems), meta)
    if not history:
        return Verdict(True, "No earlier valid backups to compare with yet", meta)
    return Verdict(True, f"Within ±{max_deviation:.0%} of the median of {len(history)} earlier backups", meta)


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
        "snapshot_at": newest.data["timings"]["snapshot_at"],
        "age_hours": round(hours, 2),
        "max_age_hours": max_age.total_seconds() / 3600,
        "valid_backups": len(valid),
    }
    if age > max_age:
        return Verdict(False, f"Newest valid backup ({newest.partition}) is {hours:.1f} h old, over the limit", meta)
    return Verdict(True, f"Newest valid backup ({newest.partition}) is {hours:.1f} h old", meta)
