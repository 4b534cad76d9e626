"""What the PITR checks judge: the archive's continuity from the oldest base backup on, the newest recoverable
instant (RPO), and the WAL the slot holds back on the server. From one listing and a couple of manifest reads;
deep verification of each object is the restore's job (it re-reads and hashes everything it uses)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ...artifacts.manifest import _newest_valid_of, all_valid_manifests, index_series, parse_manifest, utc_now
from ...artifacts.storage import Storage
from .layout import Gap, WalFile, base_series, find_gaps, list_archive, parse_lsn, segment_name, segno_of
from .server import SlotState
from .wal import newest_partial


@dataclass(frozen=True)
class ArchiveStatus:
    source: str
    bases: int
    oldest_base: str | None  # its partition
    recoverable_from: datetime | None  # the oldest base's consistency instant
    first_segment: str | None
    newest_file: str | None
    gaps: list[Gap]
    recoverable_until: datetime | None

    def lag(self, now: datetime | None = None) -> timedelta | None:
        return (now or utc_now()) - self.recoverable_until if self.recoverable_until else None


def archive_status(storage: Storage, source: str) -> ArchiveStatus:
    """Continuity per the oldest valid base's timeline (as `wal-g wal-verify` does), and the newest instant."""
    bases = [m for m in all_valid_manifests(storage, base_series(source)) if m.kind == "postgres-base-backup"]
    if not bases:
        return ArchiveStatus(source, 0, None, None, None, None, [], None)
    oldest = bases[0]
    b = oldest.data["base"]
    timeline, size = int(b["timeline"]), int(b["segment_size"])
    start = segno_of(parse_lsn(b["start_lsn"]), size)
    listing = list_archive(storage, source, timeline, size)
    complete = {s for s in listing.complete if s >= start and s in listing.stored}
    partial_segno = listing.newest_partial
    newest = max([*complete, *([partial_segno] if partial_segno is not None else [])], default=None)
    gaps = find_gaps(complete, partial_segno, timeline, size, start, newest) if newest is not None else []
    until = None
    candidates = []
    if partial_segno is not None and (p := newest_partial(storage, listing.partials[partial_segno])) is not None:
        candidates.append(p)
    if complete and (m := _newest_valid_of(storage, listing.complete[max(complete)])) is not None:
        candidates.append(WalFile(m))
    if candidates:
        until = max(w.recoverable_until for w in candidates)
    return ArchiveStatus(
        source,
        len(bases),
        oldest.partition,
        oldest.taken_at,
        segment_name(timeline, start, size),
        segment_name(timeline, newest, size) + (".partial" if newest == partial_segno else "")
        if newest is not None
        else None,
        gaps,
        until,
    )


@dataclass(frozen=True)
class SlotVerdict:
    passed: bool
    severity: str  # "WARN" | "ERROR"
    description: str


def slot_verdict(slot: SlotState | None, name: str, warn_bytes: int, error_bytes: int) -> SlotVerdict:
    """A slot holds WAL on the server until the archive consumes it: an abandoned one fills the server's disk."""
    if slot is None:
        return SlotVerdict(
            False,
            "WARN",
            f"Replication slot {name} does not exist: the next WAL run creates it, but the WAL written meanwhile was "
            "not kept for the archive (take a new base backup after it)",
        )
    if slot.wal_status == "lost":
        return SlotVerdict(
            False,
            "ERROR",
            f"Replication slot {name} is lost: the archive has a gap; drop it, let the next run recreate it and take "
            "a new base backup",
        )
    retained = slot.retained_bytes or 0
    mib = f"{retained / 2**20:,.0f} MiB"
    if retained > error_bytes:
        return SlotVerdict(
            False,
            "ERROR",
            f"Slot {name} holds {mib} of WAL on the server: WAL runs are not keeping up or stopped. Run "
            "postgres_wal_archive; set max_slot_wal_keep_size as a guard",
        )
    if retained > warn_bytes:
        return SlotVerdict(False, "WARN", f"Slot {name} holds {mib} of WAL on the server")
    return SlotVerdict(True, "WARN", f"Slot {name} holds {mib} of WAL ({slot.wal_status})")


# ------------------------------------------------------------------------------------------ retention (planning)


def superseded_partials(storage: Storage, source: str, timeline: int, segment_size: int) -> list[str]:
    """Keys of partial WAL objects and their manifests that hold nothing the archive lacks, manifests first (a
    reader never meets a manifest whose object is gone): every partial of a segment archived complete, and of
    the newest partial segment every copy but the one reaching furthest. A partial of a segment that is not
    complete is never listed, even behind a newer one: it may be the only copy of that WAL.

    Read-only: for retention, which runs under an identity allowed to delete (the backup worker is not)."""
    listing = list_archive(storage, source, timeline, segment_size)
    index = index_series(storage, listing.series)
    manifests: list[str] = []
    objects: list[str] = []
    for segno, keys in listing.partials.items():
        partition = segment_name(timeline, segno, segment_size) + ".partial"
        if segno in listing.complete and segno in listing.stored:
            manifests.extend(keys)
            objects.extend(index.objects.get(partition, []))
        elif segno == listing.newest_partial:
            best = newest_partial(storage, keys)
            if best is None:
                continue  # none readable: keep them all, someone must look
            for key in keys:
                if key == best.manifest.key:
                    continue
                manifest = parse_manifest(storage, key)  # an unreadable one stops the plan (StorageReadError)
                manifests.append(key)
                if manifest.artifact_key != best.manifest.artifact_key:
                    objects.append(manifest.artifact_key)
    return [*manifests, *objects]
