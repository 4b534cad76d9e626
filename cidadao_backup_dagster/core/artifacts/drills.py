"""One kind of restore drill's reports (`drills/<kind>/<source>/...`), over drill_reports' layout: the
PostgreSQL and Redis drills write and read theirs through one of these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import drill_reports
from .storage import Storage


@dataclass(frozen=True)
class DrillReports:
    kind: str  # postgres | redis

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
