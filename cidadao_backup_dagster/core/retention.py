"""Retention: which artifacts of a series expire, as a pure function, and applying that plan safely.

Floors, after pgBackRest and Barman: the newest `min_keep` valid artifacts are never deleted whatever their
age (the strategy's "keep only last 3"), nor any artifact a passing restore drill proved. Deletion removes
the manifest first, so a half-deleted artifact is never seen as valid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .errors import BackupError
from .manifest import MANIFEST_NAME, list_partitions, partition_prefix, read_manifest
from .storage import Storage


@dataclass(frozen=True)
class Artifact:
    partition: str
    taken_at: datetime | None  # None: no readable manifest (an unfinished or damaged artifact)
    valid: bool


@dataclass(frozen=True)
class Policy:
    keep_days: float
    min_keep: int = 3

    def __post_init__(self):
        if self.keep_days <= 0 or self.min_keep < 1:
            raise ValueError("keep_days must be positive and min_keep at least 1")


@dataclass
class Plan:
    delete: list[Artifact] = field(default_factory=list)
    keep: list[tuple[Artifact, str]] = field(default_factory=list)  # with the reason

    def describe(self) -> list[str]:
        lines = [f"delete {a.partition} (taken {a.taken_at:%Y-%m-%d %H:%M} UTC)" if a.taken_at else
                 f"delete {a.partition} (no valid manifest)" for a in self.delete]  # fmt: skip
        lines += [f"keep   {a.partition}: {why}" for a, why in self.keep]
        return lines


def plan_retention(
    artifacts: Iterable[Artifact], policy: Policy, now: datetime, protected: set[str] = frozenset()
) -> Plan:
    """Decide per artifact. Never crosses a floor: the newest `min_keep` valid ones and `protected` stay."""
    items = sorted(artifacts, key=lambda a: a.partition, reverse=True)  # newest first
    newest_valid = [a.partition for a in items if a.valid][: policy.min_keep]
    cutoff = now - timedelta(days=policy.keep_days)
    plan = Plan()
    for a in items:
        if a.partition in newest_valid:
            plan.keep.append((a, f"one of the newest {policy.min_keep} valid artifacts"))
        elif a.partition in protected:
            plan.keep.append((a, "proven by the latest passing restore drill"))
        elif a.taken_at is not None and a.taken_at >= cutoff:
            plan.keep.append((a, f"younger than {policy.keep_days:g} days"))
        elif a.taken_at is None and a.valid is False and not _older_partition_than(a, cutoff):
            plan.keep.append((a, "unreadable but recent: left for inspection"))
        else:
            plan.delete.append(a)
    return plan


def _older_partition_than(a: Artifact, cutoff: datetime) -> bool:
    """Partition keys start with a date; an artifact without a manifest is judged by its key."""
    try:
        return datetime.fromisoformat(a.partition[:10]).replace(tzinfo=cutoff.tzinfo) < cutoff
    except ValueError:
        return False


def inventory(storage: Storage, series: str) -> list[Artifact]:
    """Every partition folder of a series, with or without a manifest."""
    partitions = set(list_partitions(storage, series))
    for key in storage.list_keys(f"{series}/"):
        rest = key[len(series) + 1 :]
        if "/" in rest:
            partitions.add(rest.split("/", 1)[0])
    out = []
    for partition in sorted(partitions):
        try:
            manifest = read_manifest(storage, series, partition)
        except BackupError:
            manifest = None
        if manifest is None:
            out.append(Artifact(partition, None, False))
        else:
            present = storage.size(manifest.artifact_key) == manifest.stored_bytes
            out.append(Artifact(partition, manifest.taken_at, present))
    return out


def delete_artifact(storage: Storage, series: str, partition: str) -> list[str]:
    """Manifest first (from then on the artifact is invisible to readers), then everything else."""
    prefix = partition_prefix(series, partition)
    deleted = []
    manifest_key = f"{prefix}/{MANIFEST_NAME}"
    if storage.size(manifest_key) is not None:
        storage.delete(manifest_key)
        deleted.append(manifest_key)
    for key in storage.list_keys(f"{prefix}/"):
        storage.delete(key)
        deleted.append(key)
    return deleted
