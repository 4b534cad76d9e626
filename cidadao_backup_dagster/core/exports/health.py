"""Export health: the stored records against the source's count, schema drift between partitions, and
freshness with a WARN and an ERROR threshold."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from ..artifacts.manifest import Manifest
from ..monitoring.health import Verdict, freshness_verdict
from .inspect import ExportInspection


def row_count_verdict(manifest: Manifest, inspection: ExportInspection) -> Verdict:
    """The records in the stored export against the source's exact count for the partition, taken in the
    export's own snapshot."""
    source_rows = manifest.export.source_rows
    meta: dict[str, Any] = {"source_rows": source_rows, "records_in_file": inspection.records}
    if source_rows is None:
        return Verdict(False, "The manifest records no source row count", meta)
    note = ""
    if inspection.shallow and inspection.ok:  # encrypted, no identity here: the count the export made
        inspection = ExportInspection(records=manifest.data.get("contents", {}).get("records"))
        meta["records_in_file"] = inspection.records
        note = " (counted while exporting; set BACKUP_AGE_IDENTITY_FILE to recount from the encrypted file)"
    if inspection.records is None:
        problems = "; ".join(inspection.problems) or "unreadable"
        return Verdict(False, f"Records in the export cannot be counted: {problems}", meta)
    diff = inspection.records - source_rows
    meta["difference"] = diff
    table = manifest.export.table or "the table"
    if diff < 0:
        return Verdict(
            False,
            f"{-diff:,} row{'s' if diff != -1 else ''} missing: the export holds {inspection.records:,} records, "
            f"{table} had {source_rows:,} for {manifest.partition} at export time{note}",
            meta,
        )
    if diff > 0:
        return Verdict(
            False,
            f"{diff:,} extra record{'s' if diff != 1 else ''}: the export holds {inspection.records:,}, "
            f"{table} had {source_rows:,} for {manifest.partition} at export time{note}",
            meta,
        )
    return Verdict(True, f"{inspection.records:,} records = the source's {source_rows:,} at export time{note}", meta)


def schema_drift(previous: list[dict[str, str]], current: list[dict[str, str]]) -> list[str]:
    """Human-readable changes from `previous` columns to `current` ones: added, dropped, retyped."""
    before = {c["name"]: c["type"] for c in previous}
    after = {c["name"]: c["type"] for c in current}
    changes = [f"column {n!r} added ({t})" for n, t in after.items() if n not in before]
    changes += [f"column {n!r} dropped (was {t})" for n, t in before.items() if n not in after]
    changes += [f"column {n!r} retyped {before[n]} -> {t}" for n, t in after.items() if n in before and before[n] != t]
    return changes


def drift_verdict(current: Manifest, previous: Manifest | None) -> Verdict:
    columns = current.data.get("contents", {}).get("columns", [])
    meta: dict[str, Any] = {"columns": len(columns)}
    if previous is None:
        return Verdict(True, "No earlier export to compare the columns with yet", meta)
    meta["compared_with"] = previous.partition
    changes = schema_drift(previous.data.get("contents", {}).get("columns", []), columns)
    meta["changes"] = changes
    if changes:
        return Verdict(False, f"Schema changed since {previous.partition}: {'; '.join(changes)}", meta)
    return Verdict(True, f"Same {len(columns)} columns and types as {previous.partition}", meta)


def export_freshness(
    valid: list[Manifest], now: datetime, warn_after: timedelta, error_after: timedelta
) -> tuple[Verdict, Literal["WARN", "ERROR"]]:
    """Two thresholds over the newest partition's snapshot time (backfilling an old day does not count):
    past `warn_after` a WARN, past `error_after` an ERROR (no exports at all is an ERROR)."""
    verdict = freshness_verdict(valid, now, warn_after)
    text = verdict.description.replace("backup", "export")
    meta = {**verdict.metadata, "warn_after_hours": warn_after.total_seconds() / 3600}
    meta["error_after_hours"] = error_after.total_seconds() / 3600
    meta.pop("max_age_hours", None)
    if verdict.passed:
        return Verdict(True, text, meta), "WARN"
    if not valid or not freshness_verdict(valid, now, error_after).passed:
        limit = f" ({error_after.total_seconds() / 3600:g} h)" if valid else ""
        return Verdict(False, text + limit, meta), "ERROR"
    return Verdict(False, f"{text} ({warn_after.total_seconds() / 3600:g} h)", meta), "WARN"
