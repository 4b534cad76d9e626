"""Restore-drill reports as storage holds them: `drills/<kind>/<source>/<month>/report.json`.

Shared by the PostgreSQL and Redis drills, retention (the drill-proven artifact is never deleted) and the
health report. A report that does not parse is reported and skipped; a storage read error propagates, since
"could not read the reports" must never become "no artifact is drill-proven".
"""

from __future__ import annotations

import json
from collections.abc import Callable

from .storage import Storage

REPORT_NAME = "report.json"


def read_reports(storage: Storage, prefix: str, warn: Callable[[str], None] = lambda _m: None) -> list[dict]:
    """Every readable report under `prefix`; each damaged one is passed to `warn` and skipped."""
    reports = []
    for key in storage.list_keys(f"{prefix}/"):
        if not key.endswith(f"/{REPORT_NAME}"):
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
