"""What the PITR checks judge: the archive's continuity from the oldest base backup on, the newest recoverable
instant (RPO), the WAL the slot holds back on the server (from one listing and a couple of manifest reads), the
newest base backup's age, and its integrity: every member of its chain re-read and checked file by file against
its backup_manifest, as a restore does."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from ...artifacts.layout import index_series
from ...artifacts.manifest import (
    Manifest,
    _newest_valid_of,
    all_valid_manifests,
    iso,
    parse_iso,
    parse_manifest,
    utc_now,
)
from ...artifacts.reader import read_stored_only
from ...artifacts.storage import MiB, Storage
from ...errors import BackupError, RefusedError, StorageReadError
from .fetch import extract_member
from .layout import Gap, WalFile, base_chain, base_series, find_gaps, list_archive, parse_lsn, segment_name, segno_of
from .recovery import RecoveryOptions
from .server import SlotState, check_client
from .wal import newest_partial

BASE_MAX_AGE = timedelta(days=8)  # weekly base backups, a day of grace


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
    until = last.recoverable_until if (last := _newest_wal(storage, listing, complete)) else None
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


def _newest_wal(storage: Storage, listing, complete: set[int]) -> WalFile | None:
    """The archived file reaching the newest recoverable instant: the newest partial or completed segment."""
    candidates = []
    partial_segno = listing.newest_partial
    if partial_segno is not None and (p := newest_partial(storage, listing.partials[partial_segno])) is not None:
        candidates.append(p)
    if complete and (m := _newest_valid_of(storage, listing.complete[max(complete)])) is not None:
        candidates.append(WalFile(m))
    return max(candidates, key=lambda w: w.recoverable_until, default=None)


# ------------------------------------------------------------------------------------------ recoverable window


@dataclass(frozen=True)
class RecoverableWindow:
    """The instants a restore can reach now, on the newest base's timeline: from `earliest` (the consistency
    instant of the oldest intact base from which the archive has no gap to its newest file) to `latest` (the newest
    recoverable instant). `achieved_rpo_seconds`: how far `latest` lagged behind the newest WAL file's publication
    (the worker's clock against the server's: the data a crash right after that run would have lost)."""

    source: str
    earliest: datetime | None
    latest: datetime | None
    achieved_rpo_seconds: float | None
    newest_base: str | None  # its partition
    newest_base_at: datetime | None  # its consistency instant
    bases: int
    problems: tuple[str, ...] = ()

    def lag(self, now: datetime | None = None) -> timedelta | None:
        return (now or utc_now()) - self.latest if self.latest else None


def recoverable_window(storage: Storage, source: str) -> RecoverableWindow:
    """One listing of the newest base's timeline and a few manifest reads; a storage read error raises."""
    bases = [m for m in all_valid_manifests(storage, base_series(source)) if m.kind == "postgres-base-backup"]
    if not bases:
        return RecoverableWindow(source, None, None, None, None, None, 0, ("no base backup yet",))
    newest = bases[-1].data["base"]
    timeline, size = int(newest["timeline"]), int(newest["segment_size"])
    listing = list_archive(storage, source, timeline, size)
    complete, partial = {s for s in listing.complete if s in listing.stored}, listing.newest_partial
    reach = max([*complete, *([partial] if partial is not None else [])], default=None)
    last = _newest_wal(storage, listing, complete)
    earliest, problems = None, []
    for base in (m for m in bases if int(m.data["base"]["timeline"]) == timeline):
        b = base.data["base"]
        start, end = (segno_of(parse_lsn(b[k]), size) for k in ("start_lsn", "end_lsn"))
        if reach is None or reach < end:
            continue  # the archive does not reach its end yet
        if gaps := find_gaps(complete, partial, timeline, size, start, reach):
            problems.append(f"base {base.partition} cannot reach the newest WAL (gap: {gaps[0]})")
            continue
        try:
            base_chain(storage, base)
        except RefusedError as exc:
            problems.append(str(exc))
            continue
        earliest = base.taken_at
        break
    if earliest is None:
        problems.append("no base backup from which the archive is continuous up to its newest WAL file")
    finished = last.manifest.data["timings"].get("finished_at") if last else None
    rpo = max(0.0, (parse_iso(finished) - last.recoverable_until).total_seconds()) if last and finished else None
    return RecoverableWindow(
        source, earliest, last.recoverable_until if last else None, None if rpo is None else round(rpo, 3),
        bases[-1].partition, bases[-1].taken_at, len(bases), tuple(problems),
    )  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    passed: bool
    severity: str  # "WARN" | "ERROR"
    description: str


SlotVerdict = Verdict


def slot_verdict(slot: SlotState | None, name: str, warn_bytes: int, error_bytes: int) -> Verdict:
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


# ------------------------------------------------------------------------------------------ base backups


def newest_base(storage: Storage, source: str) -> Manifest | None:
    bases = [m for m in all_valid_manifests(storage, base_series(source)) if m.kind == "postgres-base-backup"]
    return bases[-1] if bases else None


def base_freshness(newest: Manifest | None, max_age: timedelta = BASE_MAX_AGE, now: datetime | None = None) -> Verdict:
    """The newest base backup is at most `max_age` old (by its consistency instant): WAL replay from an old base
    takes long, and the archive must keep all of it."""
    if newest is None:
        return Verdict(False, "ERROR", "No base backup yet: nothing can be recovered to an instant")
    age = (now or utc_now()) - newest.taken_at
    days = f"{age.total_seconds() / 86400:.1f} days"
    if age > max_age:
        return Verdict(
            False,
            "ERROR",
            f"The newest base backup ({newest.partition}, consistent from {iso(newest.taken_at)}) is {days} old, "
            f"more than {max_age.days} days: run postgres_base_backup",
        )
    return Verdict(True, "ERROR", f"Newest base backup {newest.partition}: {days} old")


@dataclass
class BaseIntegrity:
    """The newest base backup re-read: each chain member's bytes against its manifest, its files against its
    backup_manifest (pg_verifybackup). `problems` name the member."""

    base: str | None  # the newest base's partition; None: there is none
    members: list[str] = field(default_factory=list)  # artifact keys, the full base first
    problems: list[str] = field(default_factory=list)
    shallow: list[str] = field(default_factory=list)  # encrypted, no identity here: only the stored bytes checked
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.base is not None and not self.problems


def verify_newest_base(storage: Storage, source: str, **options) -> BaseIntegrity:
    """Every member of the newest base's chain streamed into a scratch folder (one at a time, removed after),
    checked as a restore checks it; `options`: RecoveryOptions (identities, bin_dir: where pg_verifybackup is
    looked for, tmp_dir, say). A damaged or missing member is a problem; not being able to check at all (no
    pg_verifybackup, no room, storage unreadable) raises."""
    opts = RecoveryOptions(**options)
    t0 = time.monotonic()
    base = newest_base(storage, source)
    if base is None:
        return BaseIntegrity(None)
    result = BaseIntegrity(base.partition)
    try:
        chain = base_chain(storage, base)
    except RefusedError as exc:
        result.problems.append(str(exc))
        return result
    verifier = check_client("pg_verifybackup", int(base.data["source"]["server_major"]), opts.bin_dir)
    root = Path(opts.tmp_dir or tempfile.gettempdir())
    need, free = max(m.raw_bytes for m in chain) * 1.2, shutil.disk_usage(root).free
    if free < need:
        raise RefusedError(
            f"Not enough space in {root} to verify base {base.partition} ({need / MiB:,.0f} MiB needed, "
            f"{free / MiB:,.0f} MiB free). Fix: point RESTORE_TMPDIR at a bigger volume"
        )
    for member in chain:
        result.members.append(member.artifact_key)
        _verify_member(storage, member, root, opts.identities, verifier, result)
    result.seconds = round(time.monotonic() - t0, 3)
    opts.say(f"Base {base.partition}: {len(chain)} member(s) verified in {result.seconds:.1f} s")
    return result


def _verify_member(storage: Storage, member: Manifest, root: Path, identities, verifier: str, result) -> None:
    if member.encrypted and not identities:
        problems = read_stored_only(storage, member).problems(member)
        result.shallow.append(member.artifact_key)
        result.problems.extend(f"{storage.uri(member.artifact_key)}: {p}" for p in problems)
        return
    work = Path(tempfile.mkdtemp(prefix="cbd-pitr-verify-", dir=root))
    try:
        extract_member(storage, member, work / "data", identities, verifier)
    except StorageReadError:
        raise  # could not read: not a verdict on the base
    except BackupError as exc:
        result.problems.append(str(exc))
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
