"""Retention: which artifacts of a series expire, as a pure function, and applying that plan safely.

Floors, after pgBackRest and Barman: the newest `min_keep` valid artifacts are never deleted whatever their
age (the strategy's "keep only last 3"), nor any artifact a passing restore drill proved. Deletion removes
the manifest first, so a half-deleted artifact is never seen as valid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ..artifacts.layout import index_series
from ..artifacts.manifest import parse_manifest
from ..artifacts.storage import Storage
from ..errors import DamagedArtifact


@dataclass(frozen=True)
class Artifact:
    """One run's artifact (a manifest and the object it names), or the unfinished objects of a partition that no
    manifest names (`manifest_key` None)."""

    partition: str
    taken_at: datetime | None  # None: no readable manifest (an unfinished or damaged artifact)
    valid: bool
    manifest_key: str | None = None
    object_keys: tuple[str, ...] = ()
    problem: str = ""  # why it is not valid
    series: str | None = None  # where it lives, when not under its class's series (PITR: the WAL of a timeline)
    group: str = ""  # artifacts of one group are deleted under one audit record (PITR: a timeline's old WAL)
    what: str = ""  # its label, when it is a summary (PITR: the WAL kept) rather than one run's artifact

    @property
    def label(self) -> str:
        if self.what:
            return self.what
        name = (self.manifest_key or "").rsplit("/", 1)[-1]
        return f"{self.partition} ({name})" if name else f"{self.partition} (objects without a manifest)"


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
        lines = [f"delete {a.label}, taken {a.taken_at:%Y-%m-%d %H:%M} UTC" if a.taken_at else
                 f"delete {a.label}: {a.problem or 'no valid manifest'}" for a in self.delete]  # fmt: skip
        lines += [f"keep   {a.label}: {why}" for a, why in self.keep]
        return lines


def plan_retention(
    artifacts: Iterable[Artifact], policy: Policy, now: datetime, protected: set[str] = frozenset()
) -> Plan:
    """Decide per artifact. Never crosses a floor: the current artifact of each of the newest `min_keep`
    partitions with a valid one, and `protected` (partitions or object keys a drill proved) stay."""
    items = sorted(artifacts, key=_newest_first, reverse=True)
    floor: list[Artifact] = []
    for a in items:
        if a.valid and len(floor) < policy.min_keep and all(f.partition != a.partition for f in floor):
            floor.append(a)
    cutoff = now - timedelta(days=policy.keep_days)
    plan = Plan()
    for a in items:
        if any(a is f for f in floor):
            plan.keep.append((a, f"one of the newest {policy.min_keep} valid artifacts"))
        elif a.partition in protected or any(k in protected for k in a.object_keys):
            plan.keep.append((a, "proven by the latest passing restore drill"))
        elif a.taken_at is not None and a.taken_at >= cutoff:
            plan.keep.append((a, f"younger than {policy.keep_days:g} days"))
        elif a.taken_at is None and not _older_partition_than(a, cutoff):
            plan.keep.append((a, "unreadable or unfinished but recent: left for inspection"))
        else:
            plan.delete.append(a)
    return plan


def _newest_first(a: Artifact) -> tuple:
    return (a.partition, a.taken_at is not None, a.taken_at or datetime.min.replace(tzinfo=UTC), a.manifest_key or "")


def _older_partition_than(a: Artifact, cutoff: datetime) -> bool:
    """Partition keys start with a date; an artifact without a manifest is judged by its key."""
    try:
        return datetime.fromisoformat(a.partition[:10]).replace(tzinfo=cutoff.tzinfo) < cutoff
    except ValueError:
        return False


def inventory(storage: Storage, series: str) -> list[Artifact]:
    """Every artifact of a series: one per manifest, plus each partition's objects no manifest names.

    Only proven damage makes an artifact invalid: a manifest that does not parse, or an object missing or
    resized while the listing works. Any read or permission error raises StorageReadError: the caller must
    delete nothing of this series, because "could not read" is not "not there"."""
    index = index_series(storage, series)
    out: list[Artifact] = []
    for partition in sorted(set(index.manifests) | set(index.objects)):
        named: set[str] = set()
        for key in index.manifests.get(partition, []):
            try:
                manifest = parse_manifest(storage, key)
            except DamagedArtifact as exc:
                out.append(Artifact(partition, None, False, key, (), str(exc)))
                continue
            named.add(manifest.artifact_key)
            size = storage.size(manifest.artifact_key)
            problem = ""
            if size != manifest.stored_bytes:
                problem = "object missing" if size is None else f"object is {size} bytes, not {manifest.stored_bytes}"
            keys = (manifest.artifact_key,) if size is not None else ()
            out.append(Artifact(partition, manifest.taken_at, not problem, key, keys, problem))
        # An object another manifest of the partition names belongs to that artifact, never to the leftovers.
        leftovers = tuple(k for k in index.objects.get(partition, []) if k not in named)
        if leftovers:
            out.append(Artifact(partition, None, False, None, leftovers, "no manifest names these objects"))
    return out


def delete_artifact(storage: Storage, series: str, artifact: Artifact) -> list[str]:
    """Manifest first (from then on the artifact is invisible to readers), then its objects. Objects another
    manifest still names are never deleted (a legacy partition could share them)."""
    still_named: set[str] = set()
    series = artifact.series or series
    index = index_series(storage, series, artifact.partition)
    for key in index.manifests.get(artifact.partition, []):
        if key == artifact.manifest_key:
            continue
        try:
            still_named.add(parse_manifest(storage, key).artifact_key)
        except DamagedArtifact:
            pass
    deleted = []
    if artifact.manifest_key is not None:
        storage.delete(artifact.manifest_key)
        deleted.append(artifact.manifest_key)
    for key in artifact.object_keys:
        if key not in still_named:
            storage.delete(key)
            deleted.append(key)
    return deleted
