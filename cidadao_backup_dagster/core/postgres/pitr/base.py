"""A base backup: `pg_basebackup -D - -Ft -X none` streamed as one tar through the pipeline.

With `-X none` the tar holds no WAL: the base is restorable only with the archived WAL from its start LSN to its
end LSN (and on to the target instant). Its slot is ensured first, so the server keeps that WAL until the
archive has it. pg_basebackup writing to stdout appends its `backup_manifest` (SHA-256 of every file) to the
tar; the start and end LSN and the timeline are read from the tar's `backup_label` and `backup_manifest` as the
bytes pass, and recorded in this project's manifest (written last).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import IO

import zstandard

from ...artifacts.manifest import Manifest, iso, utc_now
from ...artifacts.pipeline import EncryptionStage, stream_to_writer
from ...artifacts.publish import NewObject, artifact_entry, data_key, manifest_data, tool_versions
from ...artifacts.storage import MiB, Storage
from ...errors import BackupError, pg_error_type
from ..backup import BackupSettings
from ..client import PgConnection, binary_version
from .layout import base_series, format_lsn, iso_us, parse_lsn, segment_name, segno_of
from .server import check_client, current_position, ensure_slot, replication_preflight, slot_name_for

BLOCK = 512
CAPTURE_LIMIT = 64 * MiB  # backup_manifest grows with the file count; far below this for any real cluster


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


def base_backup(
    conn: PgConnection,
    storage: Storage,
    *,
    source: str,
    partition: str,
    slot: str | None = None,
    settings: BackupSettings | None = None,
    encryption: EncryptionStage | None = None,
    encryption_info: dict | None = None,
    variable: str = "DATABASE_URL",
    extra: dict | None = None,
) -> Manifest:
    """Take a base backup of the whole cluster into `postgres/<source>/base/<partition>/`. Returns its manifest,
    written last. On any failure the upload is aborted and nothing is published."""
    started_at = utc_now()
    t0 = time.monotonic()
    settings = settings or BackupSettings()
    storage.check_writable()
    info = replication_preflight(conn, bin_dir=settings.pg_bin_dir, variable=variable)
    basebackup = check_client("pg_basebackup", info.major, settings.pg_bin_dir)
    slot = slot or slot_name_for(source)
    ensure_slot(conn, slot)  # from here the server keeps the WAL this base will need, until the archive has it
    series = base_series(source)
    suffix = ".tar.zst.age" if encryption else ".tar.zst"
    key = data_key(series, partition, source, suffix)
    label = f"cbd {source} {partition}"
    args = [
        basebackup,
        "--no-password",
        "-d",
        conn.conninfo(),
        "-D",
        "-",
        "-Ft",
        "-X",
        "none",
        "--manifest-checksums=SHA256",
        "--checkpoint=fast",
        f"--label={label[:60]}",
    ]
    obj = NewObject(storage, key, redact=conn.redact, untouched="earlier backups are untouched")

    def produce(writer):
        stderr = tempfile.TemporaryFile()
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, env=conn.env())
        try:
            tap = TarTap(proc.stdout, {"backup_label", "backup_manifest"})  # type: ignore[arg-type]
            stats = stream_to_writer(
                tap,  # type: ignore[arg-type]
                writer,
                level=settings.zstd_level,
                threads=settings.zstd_threads,
                encryption=encryption,
            )
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
            return stats, label, (timeline, start_lsn, end_lsn), finished
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            stderr.close()

    stats, backup_label, (timeline, start_lsn, end_lsn), finished_server_time = obj.write(produce)
    size = info.segment_size
    decrypt = "age -d -i key.txt <file> | zstd -d" if encryption else "zstd -dc <file>"
    return obj.publish(
        series,
        manifest_data(
            kind="postgres-base-backup",
            partition=partition,
            series=series,
            extra=extra,
            artifact=artifact_entry(
                obj,
                stats,
                describe={
                    "format": "pg_basebackup tar of the main tablespace (-X none, backup_manifest inside), "
                    "zstd-compressed",
                    "restore_hint": f"{decrypt} | tar -x -C <new data dir>; pg_verifybackup -n <new data dir>; then "
                    "restore_command + recovery_target_time + recovery.signal (docs/pitr.md)",
                },
                compression={"codec": "zstd", "level": settings.zstd_level, "checksum": True},
                encryption=encryption_info if encryption else None,
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
                "timeline": timeline,
                "start_lsn": format_lsn(start_lsn),
                "end_lsn": format_lsn(end_lsn),
                "start_segment": segment_name(timeline, segno_of(start_lsn, size), size),
                "end_segment": segment_name(timeline, segno_of(end_lsn, size), size),
                "segment_size": size,
                "slot": slot,
                "label": backup_label.label,
                "backup_start_time": backup_label.start_time,
            },
            tools=tool_versions({"pg_basebackup": binary_version(basebackup)}, zstandard=zstandard.__version__),
            timings={
                "started_at": iso(started_at),
                # Consistent from its end LSN on: the earliest instant this base can recover to (server clock).
                "snapshot_at": iso_us(finished_server_time),
                "finished_at": iso(utc_now()),
                "total_seconds": round(time.monotonic() - t0, 3),
            },
        ),
    )
