"""Restore-drill reports as storage holds them: `drills/<kind>/<source>/<month>/report-<UTC time>-<id>.json`,
one per drill run (a re-run of a month adds a report, never overwrites one); `report.json` from before is read.

Shared by the PostgreSQL and Redis drills, retention (the drill-proven artifact is never deleted) and the
health report. A report that does not parse is reported and skipped; a storage read error propagates, since
"could not read the reports" must never become "no artifact is drill-proven".
"""

from __future__ import annotations

import json
from collections.abc import Callable

from .manifest import run_token
from .storage import Storage

REPORT_NAME = "report.json"  # the one report per month of the layout before per-run reports


def is_report_name(name: str) -> bool:
    return name == REPORT_NAME or (name.startswith("report-") and name.endswith(".json"))


def write_report(storage: Storage, prefix: str, partition: str, report: dict) -> str:
    key = f"{prefix}/{partition}/report-{run_token()}.json"
    storage.put_bytes(key, json.dumps(report, indent=2).encode())
    return key


def read_partition_report(storage: Storage, prefix: str, partition: str) -> dict | None:
    """The newest report of one drill partition (the last drill run of that month), or None."""
    keys = [k for k in storage.list_keys(f"{prefix}/{partition}/") if is_report_name(k.rsplit("/", 1)[-1])]
    keys.sort(key=lambda k: (not k.endswith(f"/{REPORT_NAME}"), k))  # the old report.json is the oldest
    return json.loads(storage.read_bytes(keys[-1])) if keys else None


def read_reports(storage: Storage, prefix: str, warn: Callable[[str], None] = lambda _m: None) -> list[dict]:
    """Every readable report under `prefix`; each damaged one is passed to `warn` and skipped."""
    reports = []
    for key in storage.list_keys(f"{prefix}/"):
        if not is_report_name(key.rsplit("/", 1)[-1]):
            continue
        raw = storage.read_bytes(key)
        try:
            report = json.loads(raw)
            report["finished_at"]  # noqa: B018 - every report has it
        except (ValueError, KeyError, TypeError) as exc:
            warn(f"Drill report {storage.uri(key)} is damaged and was skipped ({type(exc).__name__}: {exc})")
            continue
        reports.append(report)
    return reports


def newest_passing_report(storage: Storage, prefix: str, warn: Callable[[str], None] = lambda _m: None) -> dict | None:
    passing = [r for r in read_reports(storage, prefix, warn) if r.get("passed")]
    return max(passing, key=lambda r: r["finished_at"], default=None)
