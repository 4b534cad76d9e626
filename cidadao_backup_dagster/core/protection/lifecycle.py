"""S3 lifecycle tiers and immutability, from the strategy's cost section:
Standard 30 days, then Glacier 90 days, then Deep Archive for a year, then expiry.

Manifests and drill reports are small and must stay readable (listing backups reads them), so the
transitions only apply to objects larger than 128 KiB, as S3 itself defaults to since 2024.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from ..artifacts.storage import S3Storage

HOT_DAYS, WARM_DAYS, COLD_DAYS = 30, 90, 365
MIN_TRANSITION_BYTES = 128 * 1024
RULE_ID = "cidadao-backup-tiers"


def desired_rules(prefix: str) -> list[dict]:
    key_prefix = f"{prefix}/" if prefix else ""
    return [
        {
            "ID": f"{RULE_ID}:{key_prefix or '*'}",
            "Status": "Enabled",
            "Filter": {"And": {"Prefix": key_prefix, "ObjectSizeGreaterThan": MIN_TRANSITION_BYTES}},
            "Transitions": [
                {"Days": HOT_DAYS, "StorageClass": "GLACIER"},
                {"Days": HOT_DAYS + WARM_DAYS, "StorageClass": "DEEP_ARCHIVE"},
            ],
            "Expiration": {"Days": HOT_DAYS + WARM_DAYS + COLD_DAYS},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2},
        }
    ]


def _current(storage: S3Storage) -> list[dict]:
    try:
        return storage.client.get_bucket_lifecycle_configuration(Bucket=storage.bucket).get("Rules", [])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
            return []
        raise


def _ours(rules: list[dict], prefix: str) -> list[dict]:
    wanted = desired_rules(prefix)[0]["ID"]
    return [r for r in rules if r.get("ID") == wanted]


def apply_lifecycle(storage: S3Storage) -> dict:
    """Install our rule for this storage's prefix, keeping rules others put on the bucket."""
    others = [r for r in _current(storage) if not _ours([r], storage.prefix)]
    rules = others + desired_rules(storage.prefix)
    storage.client.put_bucket_lifecycle_configuration(Bucket=storage.bucket, LifecycleConfiguration={"Rules": rules})
    return rules[-1]


def lifecycle_drift(storage: S3Storage) -> list[str]:
    """Differences between the bucket's rule for our prefix and the desired one (empty = in place)."""
    ours = _ours(_current(storage), storage.prefix)
    if not ours:
        return [f"no lifecycle rule {desired_rules(storage.prefix)[0]['ID']!r} on bucket {storage.bucket}"]
    want, have = desired_rules(storage.prefix)[0], ours[0]
    drift = []
    for field in ("Status", "Transitions", "Expiration"):
        if _normal(have.get(field)) != _normal(want.get(field)):
            drift.append(f"{field} is {have.get(field)!r}, expected {want.get(field)!r}")
    # Some services drop the size condition when echoing the filter: compare the prefix it scopes.
    if _prefix(have.get("Filter", {})) != _prefix(want["Filter"]):
        drift.append(f"Filter is {have.get('Filter')!r}, expected prefix {_prefix(want['Filter'])!r}")
    return drift


def _prefix(rule_filter: dict) -> str | None:
    return rule_filter.get("Prefix", rule_filter.get("And", {}).get("Prefix"))


def _normal(value):
    if isinstance(value, list):
        return sorted((_normal(v) for v in value), key=repr)
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if k != "Date"}
    return value


def immutability(storage: S3Storage) -> dict:
    """Bucket versioning status and Object Lock (None when the service does not support it)."""
    versioning = storage.client.get_bucket_versioning(Bucket=storage.bucket).get("Status", "Disabled")
    try:
        lock = storage.client.get_object_lock_configuration(Bucket=storage.bucket)
        object_lock = lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        object_lock = False if "ObjectLockConfigurationNotFound" in code else None
    return {"versioning": versioning, "object_lock": object_lock}
