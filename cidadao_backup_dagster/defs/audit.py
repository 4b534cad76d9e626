"""Audit records from the Dagster layer: who launched what (from the run's tags), on which artifact, and
how it ended. Each record is also logged, so the trail is visible in the run's log in the UI."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from ..core.artifacts.storage import Storage
from ..core.errors import audit_outcome
from ..core.protection.audit import AuditRecord, write_audit


def launched_by(context) -> str:
    tags = context.run.tags
    for tag, kind in (
        ("dagster/schedule_name", "schedule"),
        ("dagster/sensor_name", "sensor"),
        ("dagster/backfill", "backfill"),
        ("dagster/user", "user"),
    ):
        if tags.get(tag):
            return f"{kind}:{tags[tag]}"
    return "manual"


@contextmanager
def audited(context, storage: Storage | None, action: str, artifact: str = "") -> Iterator[dict]:
    """Write one record when the block ends: ok (or details["result"]), refused, or failed with the error.
    A failure to write the record is logged, never allowed to hide the operation's own outcome."""
    details: dict = {}
    try:
        yield details
    except (Exception, dg.Failure) as exc:
        text = getattr(exc, "description", None) or str(exc)
        _write(
            context,
            storage,
            action,
            audit_outcome(exc),
            artifact,
            {**details, "error": text},
        )
        raise
    else:
        _write(context, storage, action, details.pop("result", "ok"), details.pop("artifact", artifact), details)


def _write(context, storage, action, result, artifact, details) -> None:
    if storage is None:
        return
    record = AuditRecord(action, result, artifact, context.run.run_id, launched_by(context), details)
    try:
        key = write_audit(storage, record)
        context.log.info(f"Audit: {action} {result} {artifact} -> {storage.uri(key)}")
    except Exception as exc:  # noqa: BLE001
        context.log.warning(f"Could not write the audit record for {action} ({exc})")


def audit_storage(storage_resource) -> Storage | None:
    """The storage to write audit records to, or None when it is not configured (the run then fails on
    that configuration error anyway, with its own message)."""
    try:
        return storage_resource.open()
    except Exception:  # noqa: BLE001
        return None
