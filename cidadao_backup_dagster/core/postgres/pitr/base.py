"""A base backup: `pg_basebackup -D - -Ft -X none` streamed as one tar through the pipeline; on PostgreSQL >= 17
with `summarize_wal = on`, an incremental one (`--incremental=<previous backup_manifest>`) chained to the
newest base of the same cluster and timeline, until the chain holds `incrementals` of them and a full starts
the next chain.

With `-X none` the tar holds no WAL: the base is restorable only with the archived WAL from its start LSN to its
end LSN (and on to the target instant). Its slot is ensured first, so the server keeps that WAL until the
archive has it. pg_basebackup writing to stdout appends its `backup_manifest` (SHA-256 of every file) to the
tar; the start and end LSN and the timeline are read from the tar's `backup_label` and `backup_manifest` as the
bytes pass, and recorded in this project's manifest (written last). A copy of that `backup_manifest` is stored
beside the tar (zstd, never encrypted: a worker holding only age public keys must read it to chain the next
incremental; it names files, sizes and checksums, no row data), recorded with its SHA-256 in `base.backup_manifest`.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

import zstandard

from ...artifacts.manifest import Manifest, all_valid_manifests, iso, utc_now
from ...artifacts.pipeline import StreamStats, stream_to_writer
from ...artifacts.publish import NewObject, data_key, manifest_data, tool_versions
from ...artifacts.reader import read_artifact
from ...artifacts.storage import MiB, Storage
from ...errors import BackupError, RefusedError, pg_error_type
from ..backup import BackupSettings
from ..client import PgConnection, binary_version
from .layout import base_chain, base_series, format_lsn, iso_us, parse_lsn, segment_name, segno_of, zstd_entry
from .server import (
    Logger,
    RunOptions,
    ServerInfo,
    check_client,
    current_position,
    ensure_slot,
    replication_preflight,
    slot_name_for,
)

BLOCK = 512
CAPTURE_LIMIT = 64 * MiB  # backup_manifest grows with the file count; far below this for any real cluster
SIDECAR_SUFFIX = ".backup_manifest.zst"


class TarTap:
    """Passes a tar stream through unchanged, keeping the bytes of the members named in `wanted`."""

    def __init__(self, source: IO[bytes], wanted: set[str]):
        self.source, self.wanted = source, wanted
        self.found: dict[str, bytes] = {}
        self._header = bytearray()
        self._skip = 0  # bytes of the current member (with padding) still to pass
        self._size = 0
        self._name = ""
        self._data: bytearray | None = None

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        if data:
            self._feed(memoryview(data))
        return data

    def _feed(self, view: memoryview) -> None:
        i = 0
        while i < len(view):
            if self._skip:
                take = min(self._skip, len(view) - i)
                if self._data is not None:
                    self._data += view[i : i + max(0, min(take, self._size - len(self._data)))]
                self._skip -= take
                i += take
                if not self._skip:
                    self._finish()
                continue
            take = min(BLOCK - len(self._header), len(view) - i)
            self._header += view[i : i + take]
            i += take
            if len(self._header) == BLOCK:
                self._start(bytes(self._header))
                self._header.clear()

    def _start(self, h: bytes) -> None:
        if not h.strip(b"\0"):
            return  # the end-of-archive blocks
        name = h[0:100].split(b"\0", 1)[0].decode(errors="replace")
        prefix = h[345:500].split(b"\0", 1)[0].decode(errors="replace") if h[257:262] == b"ustar" else ""
        name = f"{prefix}/{name}" if prefix else name
        if h[124] & 0x80:  # GNU base-256 for sizes beyond 8 GiB
            size = int.from_bytes(h[125:136], "big")
        else:
            size = int(h[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        self._name = name.removeprefix("./")
        self._size = size
        self._skip = -(-size // BLOCK) * BLOCK
        self._data = bytearray() if self._name in self.wanted and size <= CAPTURE_LIMIT else None
        if not self._skip:
            self._finish()

    def _finish(self) -> None:
        if self._data is not None:
            self.found[self._name] = bytes(self._data)
        self._data = None


@dataclass(frozen=True)
class BackupLabel:
    start_lsn: int
    timeline: int
    start_time: str
    label: str


def parse_backup_label(text: str) -> BackupLabel:
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    start = re.match(r"([0-9A-F]+/[0-9A-F]+)", fields["START WAL LOCATION"])
    return BackupLabel(
        parse_lsn(start.group(1)),  # type: ignore[union-attr]
        int(fields.get("START TIMELINE", "1")),
        fields.get("START TIME", ""),
        fields.get("LABEL", ""),
    )


def wal_range(manifest_text: bytes) -> tuple[int, int, int]:
    """(timeline, start LSN, end LSN) from backup_manifest's WAL-Ranges (one range: no timeline switch)."""
    ranges = json.loads(manifest_text)["WAL-Ranges"]
    if len(ranges) != 1:
        raise BackupError(f"base backup spans {len(ranges)} timelines (a failover during the backup): take it again")
    r = ranges[0]
    return int(r["Timeline"]), parse_lsn(r["Start-LSN"]), parse_lsn(r["End-LSN"])


# ------------------------------------------------------------------------------------------ the chain


@dataclass(frozen=True)
class Parent:
    """The base an incremental is taken against, and its backup_manifest (where the file was put)."""

    manifest: Manifest
    chain_length: int  # members up to and including it
    backup_manifest: Path


def choose_parent(
    conn: PgConnection, storage: Storage, source: str, info: ServerInfo, incrementals: int, work: Path, say: Logger
) -> Parent | None:
    """The newest base when an incremental may follow it, else None (a full base), saying why."""
    if info.major < 17 or incrementals <= 0:
        return None
    with conn.connect(autocommit=True) as c:
        (summarize,) = c.execute("SELECT current_setting('summarize_wal')").fetchone()
    if summarize != "on":
        say("A full base backup: summarize_wal is off (turn it on for incremental base backups)")
        return None
    bases = [m for m in all_valid_manifests(storage, base_series(source)) if m.kind == "postgres-base-backup"]
    if not bases:
        return None
    newest = bases[-1]
    b = newest.data["base"]
    length = int(b.get("chain_length") or 1)
    why = None
    if newest.data["source"].get("system_identifier") != info.system_identifier:
        why = f"the newest base {newest.partition} is of another cluster"
    elif int(b["timeline"]) != info.timeline:
        why = f"the newest base {newest.partition} is of timeline {b['timeline']}, the server is on {info.timeline}"
    elif not b.get("backup_manifest"):
        why = f"the newest base {newest.partition} has no stored backup_manifest"
    elif length - 1 >= incrementals:
        why = f"the chain of {newest.partition} holds {length - 1} incremental(s), the most allowed"
    if why is None:
        try:
            base_chain(storage, newest)
            path = _fetch_backup_manifest(storage, newest, work)
        except (BackupError, RefusedError) as exc:
            why = f"the chain of {newest.partition} cannot be used ({exc})"
    if why is not None:
        say(f"A full base backup: {why}")
        return None
    say(f"An incremental base backup on {newest.artifact_key} (chain member {length + 1})")
    return Parent(newest, length, path)


def _fetch_backup_manifest(storage: Storage, base: Manifest, work: Path) -> Path:
    entry = base.data["base"]["backup_manifest"]
    sidecar = Manifest({"artifact": entry})
    path = work / "parent_backup_manifest"
    with open(path, "wb") as out:
        problems = read_artifact(storage, sidecar, out.write).problems(sidecar)
    if problems:
        raise BackupError(f"{storage.uri(entry['key'])}: {'; '.join(problems)}")
    return path


# ------------------------------------------------------------------------------------------ the backup


@dataclass
class _Taken:
    stats: StreamStats
    label: BackupLabel
    timeline: int
    start_lsn: int
    end_lsn: int
    finished: datetime  # the server's clock after the backup
    sidecar: dict


def base_backup(conn: PgConnection, storage: Storage, *, source: str, partition: str, **options) -> Manifest:
    """Take a base backup of the whole cluster into `postgres/<source>/base/<partition>/` (incremental when it
    may be, see the module; `options`: RunOptions). Returns its manifest, written last. On any failure nothing
    is published."""
    started_at, t0 = utc_now(), time.monotonic()
    opts = RunOptions.of(options)
    storage.check_writable()
    info = replication_preflight(conn, bin_dir=opts.settings.pg_bin_dir, variable=opts.variable)
    basebackup = check_client("pg_basebackup", info.major, opts.settings.pg_bin_dir)
    slot = opts.slot or slot_name_for(source)
    ensure_slot(conn, slot)  # from here the server keeps the WAL this base will need, until the archive has it
    series = base_series(source)
    args = [
        basebackup, "--no-password", "-d", conn.conninfo(), "-D", "-", "-Ft", "-X", "none",
        "--manifest-checksums=SHA256", "--checkpoint=fast", f"--label={f'cbd {source} {partition}'[:60]}",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cbd-pitr-base-", dir=opts.tmp_dir) as tmp:
        parent = choose_parent(conn, storage, source, info, opts.incrementals, Path(tmp), opts.say)
        try:
            obj, taken = _take(conn, storage, series, partition, source, args, parent, opts)
        except BackupError as exc:
            # The server lacks the WAL summaries since the parent (summarize_wal turned on after it, or they
            # expired: wal_summary_keep_time): a full base is always possible.
            if parent is None or "WAL summaries are required" not in str(exc):
                raise
            opts.say(f"The incremental base backup is impossible ({exc}); taking a full one instead")
            parent = None
            obj, taken = _take(conn, storage, series, partition, source, args, parent, opts)
    chain = (
        {"kind": "incremental", "parent": parent.manifest.artifact_key, "parent_manifest": parent.manifest.key,
         "chain_length": parent.chain_length + 1}
        if parent
        else {"kind": "full", "parent": None, "parent_manifest": None, "chain_length": 1}
    )  # fmt: skip
    data = _manifest(obj, taken, info, conn, opts, partition, series, slot, chain)
    data["tools"] = tool_versions({"pg_basebackup": binary_version(basebackup)}, zstandard=zstandard.__version__)
    data["timings"] = {
        "started_at": iso(started_at),
        # Consistent from its end LSN on: the earliest instant this base can recover to (server clock).
        "snapshot_at": iso_us(taken.finished),
        "finished_at": iso(utc_now()),
        "total_seconds": round(time.monotonic() - t0, 3),
    }
    if opts.extra:
        data["run"] = opts.extra
    return obj.publish(series, data)


def _take(conn, storage: Storage, series, partition, source, args, parent: Parent | None, opts) -> tuple:
    """Stream one base backup into a new object (committed, not yet published): (object, what was taken)."""
    key = data_key(series, partition, source, ".tar.zst.age" if opts.encryption else ".tar.zst")
    args = [*args, *([f"--incremental={parent.backup_manifest}"] if parent else [])]
    obj = NewObject(storage, key, redact=conn.redact, untouched="earlier backups are untouched")
    return obj, obj.write(lambda writer: _stream(conn, args, writer, storage, key, opts))


def _stream(conn, args, writer, storage: Storage, key: str, opts: RunOptions) -> _Taken:
    """pg_basebackup's tar through the pipeline into `writer`; its backup_manifest stored beside it."""
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, env=conn.env())
    try:
        tap = TarTap(proc.stdout, {"backup_label", "backup_manifest"})  # type: ignore[arg-type]
        level, threads = opts.settings.zstd_level, opts.settings.zstd_threads
        stats = stream_to_writer(tap, writer, level=level, threads=threads, encryption=opts.encryption)  # type: ignore[arg-type]
        rc = proc.wait()
        stderr.seek(0)
        err = conn.redact(stderr.read().decode(errors="replace")).strip()
        if rc != 0:
            raise pg_error_type(err)(f"pg_basebackup failed (exit code {rc}): {err[-1500:] or 'no error text'}")
        missing = {"backup_label", "backup_manifest"} - set(tap.found)
        if missing:
            raise BackupError(f"pg_basebackup's tar lacks {', '.join(sorted(missing))}; nothing was published")
        label = parse_backup_label(tap.found["backup_label"].decode())
        timeline, start_lsn, end_lsn = wal_range(tap.found["backup_manifest"])
        if start_lsn != label.start_lsn or timeline != label.timeline:
            raise BackupError("backup_label and backup_manifest disagree on the start of the base backup")
        _now_lsn, finished = current_position(conn)  # before the commit: a failure leaves no object
        sidecar = _store_backup_manifest(storage, key, tap.found["backup_manifest"], conn, opts.settings)
        return _Taken(stats, label, timeline, start_lsn, end_lsn, finished, sidecar)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()


def _store_backup_manifest(storage: Storage, key: str, text: bytes, conn, settings: BackupSettings) -> dict:
    """The backup_manifest beside the tar (committed before the tar: a failure here publishes nothing)."""
    sidecar_key = key.split(".tar.zst")[0] + SIDECAR_SUFFIX
    side = NewObject(storage, sidecar_key, redact=conn.redact, untouched="earlier backups are untouched")
    level = settings.zstd_level
    stats = side.write(lambda w: stream_to_writer(io.BytesIO(text), w, level=level, threads=settings.zstd_threads))
    return zstd_entry(side, stats, level, None, format="pg_basebackup backup_manifest (JSON), zstd-compressed")


def _manifest(obj, taken: _Taken, info: ServerInfo, conn, opts: RunOptions, partition, series, slot, chain):
    size = info.segment_size
    encryption_info = opts.encryption_info if opts.encryption else None
    decrypt = "age -d -i key.txt <file> | zstd -d" if encryption_info else "zstd -dc <file>"
    combine = (
        "; an incremental: extract each member of its chain (base.parent) the same way, then "
        "pg_combinebackup -o <new data dir> <full> ... <this one>"
        if chain["kind"] == "incremental"
        else ""
    )
    return manifest_data(
        kind="postgres-base-backup",
        partition=partition,
        series=series,
        extra=None,
        artifact=zstd_entry(
            obj,
            taken.stats,
            opts.settings.zstd_level,
            encryption_info,
            format=f"pg_basebackup tar of the main tablespace ({chain['kind']}, -X none, backup_manifest inside), "
            "zstd-compressed",
            restore_hint=f"{decrypt} | tar -x -C <new data dir>; pg_verifybackup -n <new data dir>{combine}; then "
            "restore_command + recovery_target_time + recovery.signal (docs/pitr.md)",
        ),
        source={
            "url": conn.display(),
            "host": conn.host,
            "port": conn.port,
            "user": conn.user,
            "system_identifier": info.system_identifier,
            "server_version": info.server_version,
            "server_version_num": info.server_version_num,
            "server_major": info.major,
            "superuser": info.superuser,
        },
        base={
            "timeline": taken.timeline,
            "start_lsn": format_lsn(taken.start_lsn),
            "end_lsn": format_lsn(taken.end_lsn),
            "start_segment": segment_name(taken.timeline, segno_of(taken.start_lsn, size), size),
            "end_segment": segment_name(taken.timeline, segno_of(taken.end_lsn, size), size),
            "segment_size": size,
            "slot": slot,
            "label": taken.label.label,
            "backup_start_time": taken.label.start_time,
            **chain,
            "backup_manifest": taken.sidecar,
        },
    )
