"""Where PITR artifacts live, LSN and segment-name arithmetic, and the archive's continuity (pure where it can be).

    postgres/<source>/wal/<timeline>/<segment>/<segment>_<run token>.zst[.age]             a completed segment
    postgres/<source>/wal/<timeline>/<segment>.partial/<segment>.partial_<token>.zst[.age]  the unfinished one
    postgres/<source>/wal/<timeline>/<timeline>.history/...                               a timeline history file
    postgres/<source>/base/<partition>/<source>_<partition>_<token>.tar.zst[.age]          a base backup (tar)

Every WAL file is its own partition of the series `postgres/<source>/wal/<timeline>`, with the usual per-run
manifest written last: a listing alone tells which segments are archived (no manifest, no segment), and names
sort by WAL position (`<segment>` < `<segment>.partial` < the next segment). Nothing is overwritten: each run
writes a new partial object, and the partial with the furthest end wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from ...artifacts.layout import index_series, series_prefix
from ...artifacts.manifest import Manifest, iso, parse_iso, parse_manifest
from ...artifacts.pipeline import StreamStats
from ...artifacts.publish import NewObject, artifact_entry
from ...artifacts.storage import Storage
from ...errors import BackupError, DamagedArtifact, RefusedError

SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
PARTIAL_SUFFIX = ".partial"
HISTORY = re.compile(r"^[0-9A-F]{8}\.history$")


# ------------------------------------------------------------------------------------------ LSN / names


def parse_lsn(text: str) -> int:
    hi, lo = text.strip().split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segments_per_id(segment_size: int) -> int:
    return 0x100000000 // segment_size


def segment_name(timeline: int, segno: int, segment_size: int) -> str:
    per = segments_per_id(segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment(name: str, segment_size: int) -> tuple[int, int]:
    """`000000010000000000000003` -> (timeline 1, segment number 3)."""
    found = SEGMENT.match(name)
    if not found:
        raise ValueError(f"{name!r} is not a WAL segment name")
    tli, hi, lo = (int(g, 16) for g in found.groups())
    return tli, hi * segments_per_id(segment_size) + lo


def segno_of(lsn: int, segment_size: int) -> int:
    return lsn // segment_size


def timeline_dir(timeline: int) -> str:
    return f"{timeline:08X}"


def iso_us(ts: datetime) -> str:
    """Like manifest.iso, to the microsecond: commit times decide where a recovery stops."""
    return iso(ts).replace("Z", "") + f".{ts.microsecond:06d}Z" if ts.microsecond else iso(ts)


def zstd_entry(obj: NewObject, stats: StreamStats, level: int, encryption_info: dict | None, **describe) -> dict:
    """The manifest's `artifact` of a zstd object of PITR (`describe`: its format and restore hint)."""
    compression = {"codec": "zstd", "level": level, "checksum": True}
    return artifact_entry(obj, stats, describe=describe, compression=compression, encryption=encryption_info)


# ------------------------------------------------------------------------------------------ series


def wal_root(source: str) -> str:
    return series_prefix("postgres", source, "wal")


def wal_series(source: str, timeline: int) -> str:
    return f"{wal_root(source)}/{timeline_dir(timeline)}"


def base_series(source: str) -> str:
    return series_prefix("postgres", source, "base")


def wal_object_key(series: str, partition: str, token: str, suffix: str) -> str:
    return f"{series}/{partition}/{partition}_{token}{suffix}"


# ------------------------------------------------------------------------------------------ archive view


@dataclass(frozen=True)
class WalFile:
    """One archived WAL file as its manifest describes it."""

    manifest: Manifest

    @property
    def info(self) -> dict:
        return self.manifest.data["wal"]

    @property
    def segno(self) -> int:
        return int(self.info["segno"])

    @property
    def partial(self) -> bool:
        return bool(self.info.get("partial"))

    @property
    def end_lsn(self) -> int:
        return parse_lsn(self.info["end_lsn"])

    @property
    def last_xact_at(self) -> datetime | None:
        text = self.info.get("last_xact_at")
        return parse_iso(text) if text else None

    @property
    def recoverable_until(self) -> datetime:
        """Every transaction that committed before this instant is in the WAL up to this file's end."""
        return parse_iso(self.manifest.data["timings"]["snapshot_at"])


@dataclass(frozen=True)
class ArchiveListing:
    """One listing of a timeline's WAL: which completed segments and partials have a manifest (no reads)."""

    series: str
    segment_size: int
    complete: dict[int, list[str]]  # segno -> manifest keys, oldest written first
    partials: dict[int, list[str]]
    history: list[str]
    stored: frozenset[int] = frozenset()  # completed segments whose folder also holds a data object

    @property
    def newest_complete(self) -> int | None:
        return max(self.complete) if self.complete else None

    @property
    def newest_partial(self) -> int | None:
        """The segment of the newest partial, when it is beyond every completed segment (else it is stale)."""
        newest = self.newest_complete
        ahead = [s for s in self.partials if newest is None or s > newest]
        return max(ahead) if ahead else None


def list_archive(storage: Storage, source: str, timeline: int, segment_size: int) -> ArchiveListing:
    series = wal_series(source, timeline)
    index = index_series(storage, series)
    complete: dict[int, list[str]] = {}
    partials: dict[int, list[str]] = {}
    history: list[str] = []
    stored: set[int] = set()
    for partition, keys in index.manifests.items():
        name, partial = (
            (partition[: -len(PARTIAL_SUFFIX)], True)
            if partition.endswith(PARTIAL_SUFFIX)
            else (
                partition,
                False,
            )
        )
        if HISTORY.match(partition):
            history.extend(keys)
            continue
        try:
            tli, segno = parse_segment(name, segment_size)
        except ValueError:
            continue  # not ours: never read as a segment
        if tli != timeline:
            continue
        (partials if partial else complete)[segno] = keys
        if not partial and index.objects.get(partition):
            stored.add(segno)
    return ArchiveListing(series, segment_size, complete, partials, history, frozenset(stored))


@dataclass(frozen=True)
class Gap:
    first: str
    last: str
    count: int

    def __str__(self) -> str:
        return self.first if self.count == 1 else f"{self.first} .. {self.last} ({self.count} segments)"


def find_gaps(
    complete: set[int], partial: int | None, timeline: int, segment_size: int, from_segno: int, to_segno: int
) -> list[Gap]:
    """Segments in [from_segno, to_segno] missing from `complete`; the last one may be the partial."""
    gaps: list[Gap] = []
    run: list[int] = []
    for segno in range(from_segno, to_segno + 1):
        if segno in complete or (segno == to_segno and segno == partial):
            if run:
                gaps.append(_gap(run, timeline, segment_size))
                run = []
            continue
        run.append(segno)
    if run:
        gaps.append(_gap(run, timeline, segment_size))
    return gaps


def _gap(segnos: list[int], timeline: int, size: int) -> Gap:
    return Gap(segment_name(timeline, segnos[0], size), segment_name(timeline, segnos[-1], size), len(segnos))


class WalGap(BackupError):
    """The archive lacks WAL a recovery needs: refused before anything is touched."""

    def __init__(self, gaps: list[Gap], where: str):
        self.gaps = gaps
        super().__init__(
            f"WAL archive {where} has a gap: missing {'; '.join(str(g) for g in gaps)}. Recovery past it is "
            "impossible; take a new base backup after the gap (the WAL archive keeps running), or restore the "
            "missing objects from a bucket copy"
        )


# ------------------------------------------------------------------------------------------ base chains


def base_chain(storage: Storage, base: Manifest) -> list[Manifest]:
    """The bases a restore from `base` needs, the full one first: itself, or for an incremental its parents
    (`base.parent_manifest`) down to the full. A member missing, damaged or of another cluster is refused by
    name (nothing is fetched or written here)."""
    chain = [base]
    sysid = base.data["source"].get("system_identifier")
    while (b := chain[-1].data["base"]).get("kind") == "incremental":
        parent = _chain_member(storage, b.get("parent_manifest"), b.get("parent"))
        if parent is None or parent.key in {m.key for m in chain}:
            raise RefusedError(
                f"Base {base.partition} ({base.artifact_key}) is an incremental chain, and its member "
                f"{b.get('parent')} (parent of {chain[-1].artifact_key}) is missing or damaged in {storage.uri('')}: "
                "refusing before anything is fetched or written. Pick an instant covered by another base backup, or "
                "restore that object from a bucket copy"
            )
        if parent.data["source"].get("system_identifier") != sysid:
            raise RefusedError(f"Chain member {parent.artifact_key} of base {base.partition} is of another cluster")
        chain.append(parent)
    return chain[::-1]


def _chain_member(storage: Storage, manifest_key: str | None, artifact_key: str | None) -> Manifest | None:
    if not manifest_key or storage.size(manifest_key) is None:
        return None
    try:
        parent = parse_manifest(storage, manifest_key)
    except DamagedArtifact:
        return None
    present = parent.artifact_key == artifact_key and storage.size(parent.artifact_key) == parent.stored_bytes
    return parent if present else None
