"""Restore-drill reports as storage holds them: `drills/<kind>/<source>/<month>/report-<UTC time>-<id>.json`,
one per drill run (a re-run of a month adds a report, never overwrites one); `report.json` from before is read.

Shared by the PostgreSQL and Redis drills, retention (the drill-proven artifact is never deleted) and the
health report. A report that does not parse is reported and skipped; a storage read error propagates, since
"could not read the reports" must never become "no artifact is drill-proven".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .layout import run_token
from .sections import read_fields
from .storage import Storage

REPORT_NAME = "report.json"  # the one report per month of the layout before per-run reports


@dataclass(frozen=True, kw_only=True)
class DrillReport:
    """One drill report as code reads it. Writers store a plain dict (its keys are the storage layout);
    `raw` is that dict. Fields a drill that failed early never reached default."""

    raw: dict[str, Any]
    kind: str = ""  # postgres-restore-drill, redis-restore-drill
    partition: str = ""  # the drill's month
    finished_at: str
    passed: bool = False
    problems: tuple[str, ...] = ()
    duration_seconds: float = 0.0
    backup_partition: str = ""  # the artifact proved (redis: the Dagster hour key)
    backup_uri: str = ""
    backup_sha256: str = ""
    backup_snapshot_at: str | None = None
    started_at: str | None = None
    rto_seconds: float | None = None
    fetch_seconds: float | None = None
    # postgres: tables restored and their rows
    tables: int | None = None
    rows: int | None = None
    scratch_database: str | None = None
    # redis: the snapshot's format and its keys per database, expected (manifest) and restored
    format: str | None = None
    keys: int | None = None
    keys_expected: dict[str, int] = field(default_factory=dict)
    keys_restored: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> DrillReport:
        """KeyError/TypeError/ValueError when a field every report has is missing or malformed."""
        return read_fields(cls, data, raw=data, problems=tuple(str(p) for p in data.get("problems", ())))

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> DrillReport | None:
        return None if data is None else cls.parse(data)

    def to_dict(self) -> dict[str, Any]:
        return self.raw


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
