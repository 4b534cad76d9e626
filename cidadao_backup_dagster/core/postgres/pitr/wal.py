"""One WAL archive run: stream from the physical slot up to the server's current position, publish each file, exit.

No daemon: `pg_receivewal --slot S --endpos <LSN> --no-loop` into a fresh temporary directory, seeded with where
the archive stands in storage (the newest partial, or the newest completed segment), so a run on any machine
resumes where the previous one stopped. Each file goes through the one publish path (zstd, age when recipients
are configured, SHA-256, manifest written last), under a name of its own: nothing is ever overwritten.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import zstandard

from ...artifacts.layout import run_token
from ...artifacts.manifest import Manifest, iso, parse_manifest, utc_now
from ...artifacts.pipeline import stream_to_writer
from ...artifacts.publish import NewObject, manifest_data, tool_versions
from ...artifacts.reader import is_encrypted, read_artifact
from ...artifacts.storage import Storage
from ...errors import BackupError, DamagedArtifact, PermanentError, pg_error_type
from ..client import PgConnection
from .layout import (
    HISTORY,
    PARTIAL_SUFFIX,
    SEGMENT,
    WalFile,
    format_lsn,
    iso_us,
    list_archive,
    parse_segment,
    segment_name,
    segno_of,
    wal_object_key,
    wal_series,
    zstd_entry,
)
from .server import (
    RunOptions,
    ServerInfo,
    SlotState,
    XactSummary,
    check_client,
    current_position,
    ensure_slot,
    exact_client,
    replication_preflight,
    slot_name_for,
    slot_state,
    xact_times,
)


@dataclass
class WalRunResult:
    source: str
    timeline: int
    start_lsn: int | None  # where streaming started (the seeded segment's start); None for a first run
    end_lsn: int  # the archive now holds every byte of WAL below this position
    recoverable_until: datetime  # every transaction committed before this instant is archived
    last_xact_at: datetime | None  # the newest commit/abort record archived by this run, if any
    slot: SlotState | None
    resumed_from: str | None
    segments: list[str] = field(default_factory=list)
    partial: str | None = None
    raw_bytes: int = 0
    stored_bytes: int = 0
    manifests: list[Manifest] = field(default_factory=list)
    seconds: float = 0.0
    finished_at: datetime | None = None  # the server's clock when the run ended

    @property
    def rpo_seconds(self) -> float:
        """The achieved RPO: how far the newest recoverable instant lags behind the run's end (one clock)."""
        return round(((self.finished_at or self.recoverable_until) - self.recoverable_until).total_seconds(), 3)

    def metadata(self) -> dict:
        return {
            "timeline": self.timeline,
            "start_lsn": format_lsn(self.start_lsn) if self.start_lsn is not None else None,
            "end_lsn": format_lsn(self.end_lsn),
            "segments": len(self.segments),
            "segment_names": self.segments,
            "partial": self.partial,
            "raw_bytes": self.raw_bytes,
            "stored_bytes": self.stored_bytes,
            "recoverable_until": iso(self.recoverable_until),
            "finished_at": iso(self.finished_at) if self.finished_at else None,
            "rpo_seconds": self.rpo_seconds,
            "last_xact_at": iso(self.last_xact_at) if self.last_xact_at else None,
            "resumed_from": self.resumed_from,
            "slot": self.slot.name if self.slot else None,
            "slot_retained_bytes": self.slot.retained_bytes if self.slot else None,
            "seconds": round(self.seconds, 3),
        }


def archive_wal(conn: PgConnection, storage: Storage, *, source: str, **options) -> WalRunResult:
    """Archive the server's WAL up to its current position into `postgres/<source>/wal/<timeline>/`
    (`options`: RunOptions)."""
    t0, started_at = time.monotonic(), utc_now()
    opts = RunOptions.of(options)
    pg_bin = opts.settings.pg_bin_dir
    storage.check_writable()
    info = replication_preflight(conn, bin_dir=pg_bin, variable=opts.variable)
    receivewal = check_client("pg_receivewal", info.major, pg_bin)
    waldump = exact_client("pg_waldump", info.major, pg_bin)  # without it no commit times are kept
    slot = opts.slot or slot_name_for(source)
    recreated = ensure_slot(conn, slot).created
    listing = list_archive(storage, source, info.timeline, info.segment_size)

    work = Path(tempfile.mkdtemp(prefix="cbd-pitr-wal-", dir=opts.tmp_dir))
    gap = needed = None
    try:
        resumed_from, start_lsn, placeholders = _seed(storage, listing, info, work, opts.identities, opts.say)
        end_lsn, recoverable_until = current_position(conn)
        opts.say(
            f"Streaming WAL from {format_lsn(start_lsn) if start_lsn is not None else 'the slot'} to "
            f"{format_lsn(end_lsn)} (slot {slot})"
        )
        try:
            _receive(conn, receivewal, slot, end_lsn, work, opts.timeout)
            if recreated and start_lsn is not None:
                opts.say(f"Slot {slot} was missing and was created again; the server still had the WAL: no gap")
        except _WalRemoved as removed:
            # Stopping here forever would hide the gap (no WAL past it, nothing for wal_continuity to see) and keep
            # new base backups useless: archive from where the server still has WAL, then fail naming the gap.
            gap, needed = removed, start_lsn
            placeholders, start_lsn = _past_the_gap(work, info, end_lsn)
            _receive(conn, receivewal, slot, end_lsn, work, opts.timeout)
        result = WalRunResult(source, info.timeline, start_lsn, end_lsn, recoverable_until, None, None, resumed_from)
        common = _Common(storage, source, info, conn, opts, started_at, recoverable_until)
        for path in sorted(work.iterdir()):
            if path.name not in placeholders and not path.is_dir():
                _archive_file(common, path, listing, waldump, work, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.slot = slot_state(conn, slot)
    _lsn, result.finished_at = current_position(conn)
    result.seconds = time.monotonic() - t0
    opts.say(
        f"Archived {len(result.segments)} segment(s) and {result.partial or 'no partial'}; recoverable until "
        f"{iso(recoverable_until)} (RPO achieved: {result.rpo_seconds:g} s behind the run's end)"
    )
    if gap is not None:
        raise _gap_error(gap, slot, recreated, needed, info, result)
    return result


class _WalRemoved(PermanentError):
    """The server no longer has the WAL the archive needs next (pg_receivewal's error text)."""


def _gap_error(removed: _WalRemoved, slot: str, recreated: bool, needed: int | None, info: ServerInfo, result):
    """The run that met a gap (WAL the archive needed from `needed` on was removed): what is missing, the fix."""
    size, tli = info.segment_size, info.timeline
    after = segno_of(result.start_lsn, size)
    missing = "the WAL before it" if needed is None else segment_name(tli, segno_of(needed, size), size)
    if needed is not None and after - 1 > segno_of(needed, size):
        missing += f" .. {segment_name(tli, after - 1, size)}"
    why = f"slot {slot} was missing and this run created it again" if recreated else f"slot {slot} did not hold it"
    return PermanentError(
        f"Replication slot {slot}: the server no longer has the WAL the archive needs next ({removed}); {why}. The "
        f"WAL archive has a gap: {missing} was never archived; this run archived from "
        f"{segment_name(tli, after, size)} on. Instants after the gap are recoverable only from a base backup taken "
        "after it. Fix: take a new base backup now (postgres_base_backup); keep the slot (a large enough "
        "max_slot_wal_keep_size, and wal_keep_size) so runs never fall this far behind"
    )


def _archive_file(c: _Common, path: Path, listing, waldump: str | None, work: Path, result: WalRunResult) -> None:
    """Publish one file pg_receivewal left (a segment, the partial, a history file), and count it."""
    name, size = path.name, c.info.segment_size
    if SEGMENT.match(name):
        tli, segno = parse_segment(name, size)
        if tli == c.info.timeline and segno in listing.complete:
            return  # a concurrent run archived it already (same bytes: WAL is immutable)
        xacts = _xacts(path, name, waldump, work)
        manifest = _publish_file(c, path, name, name, tli, segno, False, (segno + 1) * size, xacts)
        result.segments.append(name)
    elif name.endswith(PARTIAL_SUFFIX) and SEGMENT.match(name[: -len(PARTIAL_SUFFIX)]):
        seg = name[: -len(PARTIAL_SUFFIX)]
        tli, segno = parse_segment(seg, size)
        xacts = _xacts(path, seg, waldump, work)
        end = min(result.end_lsn, (segno + 1) * size)
        manifest = _publish_file(c, path, name, seg, tli, segno, True, end, xacts)
        result.partial = name
    elif HISTORY.match(name):
        manifest = _publish_file(c, path, name, name, int(name[:8], 16), None, False, None, None)
    else:
        return
    result.manifests.append(manifest)
    result.raw_bytes += manifest.raw_bytes
    result.stored_bytes += manifest.stored_bytes
    last = WalFile(manifest).last_xact_at if manifest.data["wal"].get("segno") is not None else None
    if last and (result.last_xact_at is None or last > result.last_xact_at):
        result.last_xact_at = last


def _xacts(path: Path, segment: str, waldump: str | None, work: Path) -> XactSummary | None:
    if waldump is None:
        return None
    # pg_waldump reads the WAL position from the file name: show it the partial under its segment's name.
    view = work / "waldump"
    view.mkdir(exist_ok=True)
    link = view / segment
    link.unlink(missing_ok=True)
    link.symlink_to(path)
    try:
        return xact_times(link, waldump)
    finally:
        link.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ seed + stream


def newest_partial(storage: Storage, keys: list[str]) -> WalFile | None:
    """Of a segment's partial manifests, the one that reaches furthest (a slow concurrent run may publish a
    shorter one later); damaged manifests are skipped."""
    best = None
    for key in keys:
        try:
            wal = WalFile(parse_manifest(storage, key))
        except DamagedArtifact:
            continue
        if storage.size(wal.manifest.artifact_key) != wal.manifest.stored_bytes:
            continue
        if best is None or wal.end_lsn >= best.end_lsn:
            best = wal
    return best


def _seed(storage, listing, info: ServerInfo, work: Path, identities, say) -> tuple[str | None, int | None, set[str]]:
    """Put into `work` what tells pg_receivewal where the archive stands. pg_receivewal restarts an unfinished
    segment from its first byte (and a completed one's successor), so the position is what matters; the stored
    partial is downloaded and verified when it can be read here, else a same-sized placeholder stands in (a
    worker holding only age public keys cannot decrypt it, and needs not)."""
    size = info.segment_size
    segno = listing.newest_partial
    if segno is not None:
        partial = newest_partial(storage, listing.partials[segno])
        if partial is not None:
            name = segment_name(info.timeline, segno, size) + PARTIAL_SUFFIX
            target = work / name
            if not is_encrypted(partial.manifest) or identities:
                _download(storage, partial.manifest, target, identities)
                say(f"Resuming from {name} ({storage.uri(partial.manifest.artifact_key)})")
            else:
                _placeholder(target, size)
                say(f"Resuming from {name} (encrypted in storage: streamed again from its first byte)")
            return name, segno * size, set()
    segno = listing.newest_complete
    if segno is not None:
        name = segment_name(info.timeline, segno, size)
        _placeholder(work / name, size)
        return name, (segno + 1) * size, {name}
    return None, None, set()


def _past_the_gap(work: Path, info: ServerInfo, end_lsn: int) -> tuple[set[str], int]:
    """Reseed `work` to stream from the segment of the current position: always on the server (the slot's
    restart_lsn is not: pg_receivewal's failed attempt may have reported the removed position back to it), and
    no WAL before it is of use, since only a base backup taken after the gap (later still) can replay it."""
    shutil.rmtree(work)
    work.mkdir()
    size = info.segment_size
    first = segno_of(max(end_lsn - 1, 0), size)
    name = segment_name(info.timeline, first - 1, size)
    _placeholder(work / name, size)
    return {name}, first * size


def _placeholder(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: pg_receivewal checks the size of a completed segment, never its bytes


def _download(storage: Storage, manifest: Manifest, target: Path, identities) -> None:
    with open(target, "wb") as out:
        outcome = read_artifact(storage, manifest, out.write, identities=identities)
    problems = outcome.problems(manifest)
    if problems:
        target.unlink(missing_ok=True)
        raise BackupError(f"{storage.uri(manifest.artifact_key)}: {'; '.join(problems)}")


def _receive(conn: PgConnection, receivewal: str, slot: str, end_lsn: int, work: Path, timeout: float) -> None:
    # pg_receivewal stops once it has received WAL strictly beyond --endpos: asking for end-1 makes it stop as
    # soon as it holds everything below `end_lsn`, instead of waiting for the server's next record.
    args = [
        receivewal,
        "--no-password",
        "-d",
        conn.conninfo(),
        "--slot",
        slot,
        "--endpos",
        format_lsn(max(end_lsn - 1, 0)),
        "--no-loop",
        "-D",
        str(work),
    ]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, env=conn.env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BackupError(
            f"pg_receivewal did not reach {format_lsn(end_lsn)} within {timeout:.0f} s; nothing was published"
        ) from None
    if proc.returncode != 0:
        err = conn.redact(proc.stderr).strip()[-1500:]
        if "has already been removed" in err:
            raise _WalRemoved(re.sub(r"\s+", " ", err))
        raise pg_error_type(err)(f"pg_receivewal failed (exit code {proc.returncode}): {err or 'no error text'}")


# ------------------------------------------------------------------------------------------ publish


@dataclass(frozen=True)
class _Common:
    storage: Storage
    source: str
    info: ServerInfo
    conn: PgConnection
    opts: RunOptions
    started_at: datetime
    recoverable_until: datetime


def _publish_file(
    c: _Common,
    path: Path,
    partition: str,
    file_name: str,
    timeline: int,
    segno: int | None,
    partial: bool,
    end_lsn: int | None,
    xacts: XactSummary | None,
) -> Manifest:
    series = wal_series(c.source, timeline)
    encrypt, level = c.opts.encryption, c.opts.settings.zstd_level
    suffix = ".zst.age" if encrypt else ".zst"
    obj = NewObject(
        c.storage,
        wal_object_key(series, partition, run_token(), suffix),
        redact=c.conn.redact,
        untouched="the archive is as it was",
    )

    def produce(writer):
        with open(path, "rb") as f:
            return stream_to_writer(f, writer, level=level, threads=c.opts.settings.zstd_threads, encryption=encrypt)

    stats = obj.write(produce)
    size = c.info.segment_size
    decrypt = "age -d -i key.txt <file> | zstd -d -o" if encrypt else "zstd -d <file> -o"
    return obj.publish(
        series,
        manifest_data(
            kind="postgres-wal",
            partition=partition,
            series=series,
            extra=c.opts.extra,
            artifact=zstd_entry(
                obj,
                stats,
                level,
                c.opts.encryption_info if encrypt else None,
                format="PostgreSQL WAL file, zstd-compressed",
                restore_hint=f"{decrypt} <restore dir>/{file_name}; restore_command = 'cp <restore dir>/%f %p'",
            ),
            source={
                "url": c.conn.display(),
                "system_identifier": c.info.system_identifier,
                "server_version": c.info.server_version,
                "server_version_num": c.info.server_version_num,
            },
            wal={
                "file": file_name,
                "timeline": timeline,
                "segno": segno,
                "partial": partial,
                "segment_size": size,
                "start_lsn": format_lsn(segno * size) if segno is not None else None,
                "end_lsn": format_lsn(end_lsn) if end_lsn is not None else None,
                "xact_count": xacts.count if xacts else None,
                "first_xact_at": iso_us(xacts.first_at) if xacts and xacts.first_at else None,
                "last_xact_at": iso_us(xacts.last_at) if xacts and xacts.last_at else None,
            },
            tools=tool_versions(zstandard=zstandard.__version__),
            timings={
                "started_at": iso(c.started_at),
                # What the archive holds up to this file is recoverable to this instant.
                "snapshot_at": iso_us(c.recoverable_until),
                "finished_at": iso(utc_now()),
            },
        ),
    )
