"""Audit trail: one append-only JSON record per operation on backups (backup, verification, restore,
deletion, flush), stored beside the artifacts under `audit/`, one object per record (no read-modify-write,
so concurrent writers never lose each other's records and an object-locked bucket keeps them immutable).

    <storage root>/audit/<YYYY>/<MM>/<DD>/<YYYYmmddTHHMMSS.ffffffZ>_<action>_<id>.json
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field

from ..artifacts.manifest import utc_now
from ..artifacts.storage import Storage
from ..secrets import redact_text

AUDIT_PREFIX = "audit"


@dataclass
class AuditRecord:
    action: str  # backup | verify | restore | recover_rows | drill | delete | flush | lifecycle
    result: str  # ok | failed | refused | dry_run
    artifact: str = ""  # storage URI (or target) the operation concerned
    run_id: str = ""
    launched_by: str = ""  # schedule:<name> | sensor:<name> | backfill:<id> | user:<email> | manual
    details: dict = field(default_factory=dict)
    at: str = ""


def write_audit(storage: Storage, record: AuditRecord) -> str:
    now = utc_now()
    record.at = record.at or now.isoformat(timespec="microseconds").replace("+00:00", "Z")
    # Secrets never belong in the trail, whatever a caller passed in details.
    body = redact_text(json.dumps(asdict(record), indent=2, default=str))
    key = f"{AUDIT_PREFIX}/{now:%Y/%m/%d}/{now:%Y%m%dT%H%M%S.%f}Z_{record.action}_{uuid.uuid4().hex[:8]}.json"
    storage.put_bytes(key, body.encode() + b"\n")
    return key


def read_audit(storage: Storage, day_prefix: str = "") -> list[dict]:
    """Records, oldest first; `day_prefix` like `2026/11/25` narrows the listing."""
    prefix = f"{AUDIT_PREFIX}/{day_prefix}".rstrip("/") + "/"
    return [json.loads(storage.read_bytes(key)) for key in storage.list_keys(prefix) if key.endswith(".json")]
