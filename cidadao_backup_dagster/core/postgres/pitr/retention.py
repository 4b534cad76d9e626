"""PITR retention: which base backups and WAL files of a source may go, planned from one reading of storage.

- Bases: the newest `min_keep` full chains (a full base and every incremental taken on it) stay whatever their
  age, and so does the newest base and every base younger than `keep_days`; a kept incremental keeps its whole
  chain, down to its full base. A base is intact when its tar and its backup_manifest copy are present with their
  recorded sizes and so is every member of its chain; only intact chains count toward the floor.
- WAL (completed segments, partials; every timeline) before the oldest kept base's start segment goes, and only
  while an intact base is kept: nothing from that segment on, except partial copies that a completed segment or
  a longer partial holds entirely (`superseded_partials`). Timeline history files stay.
- Unsure means nothing: a manifest that does not parse or is of another kind, an object no manifest names that
  is not an unfinished upload of ours, a folder or name that is not ours, any read error: the whole plan of the
  source stops (RetentionStopped, or the StorageReadError itself), nothing of it is deleted.

Deletions come in the order they are safe to apply: bases newest first (an incremental before its parent, so a
half-applied plan never leaves an incremental without its chain), then each timeline's old WAL oldest first, each
manifest before its object (core.protection.retention.delete_artifact).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ...artifacts.layout import is_manifest_name
from ...artifacts.manifest import Manifest, index_series, parse_manifest
from ...artifacts.storage import Storage
from ...errors import BackupError, DamagedArtifact
from ...protection.retention import Artifact, Plan, Policy
from .health import superseded_partials
from .layout import (
    HISTORY,
    PARTIAL_SUFFIX,
    base_series,
    parse_lsn,
    parse_segment,
    segment_name,
    segno_of,
    timeline_dir,
    wal_root,
    wal_series,
)

BASE_KIND, WAL_KIND = "postgres-base-backup", "postgres-wal"
TOKEN = r"\d{8}T\d{12}Z-[0-9a-f]{8}"  # layout.run_token
TIMELINE_DIR = re.compile(r"^[0-9A-F]{8}$")
SUPERSEDED = "superseded: a completed segment or a longer partial holds everything it holds"


class RetentionStopped(BackupError):
    """Something in the archive retention cannot be sure about: nothing of the source is deleted."""


def source_of(series: str) -> str:
    """`postgres/<source>/base` -> `<source>` (the PITR class's series is its base series)."""
    kind, source, cadence = series.split("/")
    if (kind, cadence) != ("postgres", "base"):
        raise ValueError(f"{series!r} is not a PITR base series")
    return source


@dataclass(frozen=True)
class StoredBase:
    """One base backup run: its manifest, the objects of it that are present, and what is wrong with them."""

    manifest: Manifest
    objects: tuple[str, ...]
    problem: str  # "" when its tar and backup_manifest copy are present with their recorded sizes

    @property
    def key(self) -> str:
        return self.manifest.key

    @property
    def taken_at(self) -> datetime:
        return self.manifest.taken_at

    @property
    def parent(self) -> str | None:
        """The manifest key of the base it is an incremental of."""
        b = self.manifest.data["base"]
        return b.get("parent_manifest") if b.get("kind") == "incremental" else None

    @property
    def start_segno(self) -> int:
        b = self.manifest.data["base"]
        return segno_of(parse_lsn(b["start_lsn"]), int(b["segment_size"]))

    def artifact(self, series: str) -> Artifact:
        partition = self.manifest.partition
        return Artifact(partition, self.taken_at, not self.problem, self.key, self.objects, self.problem, series=series)


def _expected(manifest: Manifest) -> list[tuple[str, int]]:
    """(key, stored size) of every object a base manifest names: the tar and its backup_manifest copy."""
    side = manifest.data["base"].get("backup_manifest")
    return [(manifest.artifact_key, manifest.stored_bytes), *([(side["key"], side["stored_bytes"])] if side else [])]


def _read_base(storage: Storage, key: str) -> StoredBase:
    try:
        manifest = parse_manifest(storage, key)
        expected = _expected(manifest)
        manifest.taken_at, manifest.data["base"]["segment_size"]  # noqa: B018 - what the plan reads
        parse_lsn(manifest.data["base"]["start_lsn"])
    except (DamagedArtifact, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RetentionStopped(f"{storage.uri(key)} is not a readable base backup manifest ({exc})") from None
    if manifest.kind != BASE_KIND:
        raise RetentionStopped(f"{storage.uri(key)} is a {manifest.kind!r} manifest among the base backups")
    objects, problems = [], []
    for object_key, stored_bytes in expected:
        size = storage.size(object_key)
        if size is not None:
            objects.append(object_key)
        if size != stored_bytes:
            name = object_key.rsplit("/", 1)[-1]
            problems.append(f"{name} missing" if size is None else f"{name} is {size} bytes, not {stored_bytes}")
    return StoredBase(manifest, tuple(objects), "; ".join(problems))


def _not_ours(storage: Storage, key: str, why: str) -> RetentionStopped:
    return RetentionStopped(f"{storage.uri(key)}: {why}; someone must look before anything of this source goes")


def read_bases(storage: Storage, source: str) -> tuple[list[StoredBase], list[Artifact]]:
    """Every base backup run of the source, and per partition the objects of an unfinished run (a tar or a
    backup_manifest copy no manifest names). The backup_manifest copy belongs to its base, never a leftover."""
    series = base_series(source)
    index = index_series(storage, series)
    bases: list[StoredBase] = []
    leftovers: list[Artifact] = []
    for partition in sorted(set(index.manifests) | set(index.objects)):
        named: set[str] = set()
        for key in index.manifests.get(partition, []):
            base = _read_base(storage, key)
            named.update(k for k, _ in _expected(base.manifest))
            bases.append(base)
        others = tuple(k for k in index.objects.get(partition, []) if k not in named)
        own = re.compile(
            rf"^{re.escape(source)}_{re.escape(partition)}_{TOKEN}(\.tar\.zst(\.age)?|\.backup_manifest\.zst)$"
        )
        for key in others:
            if not own.match(key.rsplit("/", 1)[-1]):
                raise _not_ours(storage, key, "no base backup manifest names it, and it is not a base backup's object")
        if others:
            leftovers.append(
                Artifact(partition, None, False, None, others, "no manifest names these objects", series=series)
            )
    return bases, leftovers


def _chains(bases: list[StoredBase]) -> dict[str, tuple[list[StoredBase], str]]:
    """Per base (manifest key): its chain, itself first and its full base last, and what breaks it ("" if intact)."""
    by_key = {b.key: b for b in bases}
    out = {}
    for base in bases:
        chain, broken = [base], ""
        while (parent := chain[-1].parent) is not None:
            member = by_key.get(parent)
            if (
                member is None
                or member in chain
                or member.manifest.artifact_key != chain[-1].manifest.data["base"].get("parent")
            ):
                broken = f"its chain member {parent} is missing"
                break
            chain.append(member)
        damaged = [f"{m.manifest.partition} ({m.problem})" for m in chain if m.problem]
        out[base.key] = (chain, broken or ("; ".join(f"damaged: {d}" for d in damaged)))
    return out


def _kept_bases(bases: list[StoredBase], chains: dict, policy: Policy, now: datetime) -> dict[str, str]:
    """Manifest key -> why it stays."""
    by_age = sorted(bases, key=lambda b: (b.taken_at, b.key), reverse=True)
    intact = [b for b in by_age if not chains[b.key][1]]
    roots: list[str] = []  # the full bases heading the intact chains, newest first
    for base in intact:
        if (root := chains[base.key][0][-1].key) not in roots:
            roots.append(root)
    floor = set(roots[: policy.min_keep])
    cutoff = now - timedelta(days=policy.keep_days)
    why: dict[str, str] = {}
    if intact:
        why[intact[0].key] = "the newest intact base backup"
    why.setdefault(by_age[0].key, "the newest base backup")
    for base in intact:
        if chains[base.key][0][-1].key in floor:
            why.setdefault(base.key, f"in one of the newest {policy.min_keep} full chains")
    for base in by_age:
        if base.taken_at >= cutoff:
            problem = chains[base.key][1]
            why.setdefault(base.key, f"younger than {policy.keep_days:g} days" + (f" ({problem})" if problem else ""))
    for key in list(why):  # a kept incremental keeps its whole chain
        for member in chains[key][0][1:]:
            why.setdefault(member.key, f"in the chain of kept base {chains[key][0][0].manifest.partition}")
    return why


def plan_pitr_retention(storage: Storage, source: str, policy: Policy, now: datetime) -> Plan:
    """The plan for one source's base backups and WAL (see the module). Raises instead of planning when unsure."""
    series = base_series(source)
    bases, leftovers = read_bases(storage, source)
    plan = Plan()
    chains = _chains(bases)
    if not any(not problem for _, problem in chains.values()):
        for base in bases:
            plan.keep.append((base.artifact(series), "no intact base backup: nothing of this source is deleted"))
        plan.keep.extend((a, "no intact base backup: nothing of this source is deleted") for a in leftovers)
        return plan
    why = _kept_bases(bases, chains, policy, now)
    for base in sorted(bases, key=lambda b: (b.taken_at, b.key), reverse=True):
        if base.key in why:
            plan.keep.append((base.artifact(series), why[base.key]))
        else:
            plan.delete.append(base.artifact(series))
    cutoff = now - timedelta(days=policy.keep_days)
    for leftover in leftovers:
        if _partition_day(leftover.partition) < cutoff:
            plan.delete.append(leftover)
        else:
            plan.keep.append((leftover, "unfinished upload but recent: left for inspection"))
    kept = [b for b in bases if b.key in why]
    sizes = {int(b.manifest.data["base"]["segment_size"]) for b in kept}
    if len(sizes) != 1:
        raise RetentionStopped(f"The kept base backups of {source} disagree on the WAL segment size ({sorted(sizes)})")
    oldest = min(kept, key=lambda b: b.start_segno)
    _plan_wal(storage, source, oldest.start_segno, sizes.pop(), plan)
    return plan


def _partition_day(partition: str) -> datetime:
    """Base partitions are weekly, keyed by their first day; anything else is never judged old."""
    try:
        return datetime.fromisoformat(partition[:10]).replace(tzinfo=UTC)
    except ValueError:
        return datetime.max.replace(tzinfo=UTC)


def _timelines(storage: Storage, source: str) -> list[int]:
    root = wal_root(source)
    names = set()
    for key in storage.list_keys(f"{root}/"):
        first = key[len(root) + 1 :].split("/", 1)[0]
        if not TIMELINE_DIR.match(first) or "/" not in key[len(root) + 1 :]:
            raise _not_ours(storage, key, "not under a timeline's folder of the WAL archive")
        names.add(first)
    return sorted(int(n, 16) for n in names)


def _plan_wal(storage: Storage, source: str, cut: int, size: int, plan: Plan) -> None:
    """Each timeline's WAL before segment number `cut` goes; from it on, only superseded partial copies."""
    for timeline in _timelines(storage, source):
        series = wal_series(source, timeline)
        index = index_series(storage, series)
        kept = 0
        for partition in sorted(set(index.manifests) | set(index.objects)):
            if HISTORY.match(partition):
                kept += 1
                continue
            try:
                tli, segno = parse_segment(partition.removesuffix(PARTIAL_SUFFIX), size)
            except ValueError:
                raise _not_ours(storage, f"{series}/{partition}/", "not a WAL segment's folder") from None
            if tli != timeline:
                raise _not_ours(storage, f"{series}/{partition}/", f"a segment of timeline {tli} in {series}")
            if segno >= cut:
                kept += 1
                continue
            plan.delete.extend(_old_wal(storage, series, partition, index))
        for key in superseded_partials(storage, source, timeline, size):
            partition = key[len(series) + 1 :].split("/", 1)[0]
            if parse_segment(partition.removesuffix(PARTIAL_SUFFIX), size)[1] < cut:
                continue  # already going with the old WAL
            manifest = key if is_manifest_name(key.rsplit("/", 1)[-1]) else None
            objects = () if manifest else (key,)
            plan.delete.append(Artifact(partition, None, True, manifest, objects, SUPERSEDED, series, series))
        first = segment_name(timeline, cut, size)
        what = f"WAL {timeline_dir(timeline)}: {kept} folders from {first} on (and history files)"
        plan.keep.append((Artifact(first, None, True, series=series, what=what), "a kept base backup needs them"))


def _old_wal(storage: Storage, series: str, partition: str, index) -> list[Artifact]:
    """One WAL folder before the oldest kept base: each manifest with its object, then unfinished uploads."""
    out, named = [], set()
    for key in index.manifests.get(partition, []):
        try:
            manifest = parse_manifest(storage, key)
        except DamagedArtifact as exc:
            raise RetentionStopped(f"{exc}: nothing of this source is deleted until someone looks") from None
        if manifest.kind != WAL_KIND:
            raise _not_ours(storage, key, f"a {manifest.kind!r} manifest among the WAL")
        named.add(manifest.artifact_key)
        out.append(Artifact(partition, manifest.taken_at, True, key, (manifest.artifact_key,), "", series, series))
    others = tuple(k for k in index.objects.get(partition, []) if k not in named)
    own = re.compile(rf"^{re.escape(partition)}_{TOKEN}\.zst(\.age)?$")
    for key in others:
        if not own.match(key.rsplit("/", 1)[-1]):
            raise _not_ours(storage, key, "no WAL manifest names it, and it is not a WAL file of ours")
    if others:
        out.append(Artifact(partition, None, False, None, others, "no manifest names these objects", series, series))
    return out
