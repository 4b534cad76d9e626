"""One kind of restore drill: what it proves and against which RTO, and its reports (`drills/<kind>/<source>/...`,
over drill_reports' layout). The PostgreSQL, PITR and Redis drills are each described by one of these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import drill_reports
from .storage import Storage


@dataclass(frozen=True)
class DrillReports:
    kind: str  # the reports' folder: postgres | postgres-pitr | redis
    title: str = "drill"  # in messages: "No <title> report for 2026-11"
    noun: str = "backup"  # what a drill restores
    rto_s: float = 0  # the strategy's RTO the drill is timed against
    rto_name: str = ""  # which RTO: "database corruption"
    passes_when: str = ""  # "every table's row count matched its manifest"

    def prefix(self, source: str) -> str:
        return f"drills/{self.kind}/{source}"

    def write_report(self, storage: Storage, source: str, partition: str, report: dict) -> str:
        return drill_reports.write_report(storage, self.prefix(source), partition, report)  # one per drill run

    def read_report(self, storage: Storage, source: str, partition: str) -> dict | None:
        return drill_reports.read_partition_report(storage, self.prefix(source), partition)

    def newest_passing_report(
        self, storage: Storage, source: str | tuple[str, ...], warn: Callable[[str], None] = lambda _m: None
    ) -> dict | None:
        """The newest passing drill of `source`, or of any of several names the source's series had."""
        names = (source,) if isinstance(source, str) else tuple(dict.fromkeys(source))
        reports = [drill_reports.newest_passing_report(storage, self.prefix(name), warn) for name in names]
        return max((r for r in reports if r), key=lambda r: r["finished_at"], default=None)
