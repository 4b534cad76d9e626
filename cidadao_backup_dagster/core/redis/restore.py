"""Redis recovery: verify a stored snapshot, restore it into a target Redis, flush a cache, run restore drills.

An RDB is restored by starting a throwaway `redis-server` on the file (a private unix socket, no TCP port,
no persistence) and copying every key to the target with pipelined DUMP/PTTL -> RESTORE ... REPLACE. That
works for any target the backup worker can reach, including TLS and managed services, where `MIGRATE`
cannot (it has no TLS and needs the throwaway server to reach the target itself). A logical snapshot is
already a stream of RESTORE commands and goes straight to the target.

Values never reach a message: a refused RESTORE is reported by its key (escaped, cut when long) and the
server's reason, never by the command (redis-py's pipeline errors quote it, payload included, and a server
without RESTORE echoes its first arguments); a malformed logical snapshot is reported without its bytes.

Safety order: every refusal (unknown partition, SHA-256 mismatch, missing binary, a snapshot the local
redis-server cannot load, a non-empty target without confirmation) happens before the target is touched, and a
confirmed flush first snapshots the target into a series of its own (`redis/<host_port>/pre-flush`): no
snapshot that storage holds, no flush.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import redis

from ..artifacts import drill_reports
from ..artifacts.manifest import (
    Manifest,
    is_present,
    iso,
    list_partitions,
    parse_iso,
    read_manifest,
    series_prefix,
    utc_now,
    valid_manifests,
)
from ..artifacts.pipeline import EncryptionStage
from ..artifacts.reader import read_artifact
from ..artifacts.storage import MiB, Storage
from ..errors import BackupError, PermanentError, RefusedError
from ..postgres.verify import VerifyResult
from .backup import (
    RedisAccessError,
    RedisEndpoint,
    backup_redis,
    explain,
    keyspace,
    partition_segment,
    safe_name,
)
from .rdb import RdbVerifier, check_logical_stream, iter_resp_commands

log = logging.getLogger(__name__)
Logger = Callable[[str], None]
IfNotEmpty = Literal["refuse", "merge", "flush"]

RTO_REDIS_S = 5 * 60  # strategy RTO table: "Cache failure < 5 minutes" (see drill docs for the choice)
SHORT_TTL_MS = 5 * 60 * 1000  # keys this close to expiring may legitimately vanish between copy and count
_PARTITION = re.compile(r"^\d{4}-\d{2}-\d{2}-\d{2}:?\d{2}$")

# Newest RDB version each redis-server release line can load (for a clear error before starting one).
_RDB_FOR_SERVER = [((7, 4), 12), ((7, 2), 11), ((7, 0), 10), ((5, 0), 9), ((4, 0), 8), ((3, 2), 7)]


# ---------------------------------------------------------------------------------------- binaries


def redis_binary(name: str, server_bin: str | None = None) -> str:
    """`redis-server` or `redis-check-rdb`: beside REDIS_SERVER_BIN when set, else on PATH."""
    if server_bin:
        candidate = Path(server_bin) if name == "redis-server" else Path(server_bin).with_name(name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        if name == "redis-server":
            raise BackupError(f"REDIS_SERVER_BIN={server_bin} is not an executable redis-server. Fix: correct the path")
    found = shutil.which(name)
    if not found:
        raise BackupError(
            f"{name} is needed to restore or check an RDB snapshot and was not found on PATH. Fix: install it "
            "(Debian/Ubuntu: apt-get install redis-server; it brings redis-check-rdb too) or set "
            "REDIS_SERVER_BIN to the redis-server binary"
        )
    return found


def server_version(binary: str) -> tuple[int, int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"(?:v=|\s)(\d+)\.(\d+)\.(\d+)", out)
    return (int(m[1]), int(m[2]), int(m[3])) if m else (0, 0, 0)


def max_rdb_version(version: tuple[int, int, int]) -> int:
    for (major, minor), rdb in _RDB_FOR_SERVER:
        if version[:2] >= (major, minor):
            return rdb
    return 6


# ------------------------------------------------------------------------------------- pick & verify


def select_snapshot(storage: Storage, series: str, which: str = "latest") -> Manifest:
    """`latest` = the newest valid partition; else an hourly partition key (2026-11-24-13:00 or 2026-11-24-1300)."""
    which = (which or "latest").strip()
    if which == "latest":
        valid = valid_manifests(storage, series, limit=1)
        if not valid:
            raise BackupError(f"No valid Redis snapshot under {storage.uri(series)}: nothing to restore")
        return valid[-1]
    if not _PARTITION.match(which):
        raise BackupError(f"Snapshot {which!r} is not an hourly partition key: use e.g. 2026-11-24-13:00 (or 'latest')")
    segment = partition_segment(which)
    manifest = read_manifest(storage, series, segment)
    if manifest is None:
        known = list_partitions(storage, series)
        hint = f"; the newest are {', '.join(known[-5:])}" if known else "; there are none"
        raise BackupError(f"No snapshot for partition {which} under {storage.uri(series)}{hint}")
    if storage.size(manifest.artifact_key) != manifest.stored_bytes:
        raise BackupError(f"Snapshot {which} is not valid: {storage.uri(manifest.artifact_key)} is missing or resized")
    return manifest


def snapshot_format(manifest: Manifest) -> str:
    return manifest.data.get("contents", {}).get("format", "rdb")


class _PipeConsumer:
    """Run `consume(file)` on a thread reading what `write()` pushes (so a pull parser can sit on a push sink)."""

    def __init__(self, consume: Callable[[io.BufferedReader], object]):
        r, w = os.pipe()
        self._w = os.fdopen(w, "wb", buffering=MiB)
        self._r = os.fdopen(r, "rb", buffering=MiB)
        self.result: object = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(consume,), daemon=True)
        self._thread.start()

    def _run(self, consume) -> None:
        try:
            self.result = consume(self._r)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            self.error = exc
        finally:
            while self._r.read(MiB):  # drain, so the writer never blocks on a consumer that stopped early
                pass
            self._r.close()

    def write(self, data: bytes) -> None:
        self._w.write(data)

    def close(self):
        self._w.close()
        self._thread.join()
        if self.error:
            raise self.error
        return self.result


def verify_redis_artifact(
    storage: Storage, manifest: Manifest, *, server_bin: str | None = None, identities: list | None = None
) -> VerifyResult:
    """Object exists; size and SHA-256 match the manifest; the zstd frame decodes; then for an RDB: magic,
    version, EOF opcode and CRC64, and `redis-check-rdb` when installed; for a logical snapshot: header, end
    marker with matching counts, and every DUMP payload's CRC64."""
    result = VerifyResult()
    key = manifest.artifact_key
    size = storage.size(key)
    if size is None:
        result.problems.append(f"object {storage.uri(key)} is missing")
        return result
    if size != manifest.stored_bytes:
        result.problems.append(f"object holds {size} bytes, the manifest says {manifest.stored_bytes}")
    fmt = snapshot_format(manifest)
    checker = None
    sinks: list[Callable[[bytes], None]] = []
    if fmt == "rdb":
        rdb = RdbVerifier()
        sinks.append(rdb.feed)
        try:
            checker = _RedisCheckRdb(redis_binary("redis-check-rdb", server_bin), manifest)
            sinks.append(checker.write)
        except BackupError as exc:
            result.details["redis_check_rdb"] = f"skipped: {exc}"
    else:
        logical = _PipeConsumer(check_logical_stream)
        sinks.append(logical.write)

    def sink(data: bytes) -> None:
        for s in sinks:
            s(data)

    outcome = read_artifact(storage, manifest, sink, identities=identities)
    result.problems += outcome.problems(manifest)
    result.details.update(stored_bytes_read=outcome.stored_bytes, raw_bytes_decoded=outcome.raw_bytes)
    if outcome.shallow:
        result.details["content_checked"] = "no (encrypted; set BACKUP_AGE_IDENTITY_FILE for deep checks)"
    if fmt == "rdb":
        if not outcome.shallow:
            check = rdb.finish()
            result.problems += [f"RDB: {p}" for p in check.problems]
            result.details.update(check.summary())
        if checker is not None:
            problem, details = checker.finish(skip=outcome.shallow)
            if problem:
                result.problems.append(problem)
            result.details.update(details)
    else:
        lcheck = logical.close()
        if not outcome.shallow:
            result.problems += [f"logical snapshot: {without_bytes(p)}" for p in lcheck.problems]  # type: ignore[union-attr]
            result.details["keys_per_db"] = lcheck.keys  # type: ignore[union-attr]
    return result


class _RedisCheckRdb:
    """`redis-check-rdb /dev/stdin`, fed while the artifact is read (no temporary file)."""

    def __init__(self, binary: str, manifest: Manifest):
        self.skip_reason = None
        rdb_version = manifest.data.get("contents", {}).get("rdb_version") or 0
        supported = max_rdb_version(server_version(binary))
        if rdb_version > supported:
            self.skip_reason = f"skipped: RDB version {rdb_version} is newer than this redis-check-rdb reads"
            self.proc = None
            return
        self._out = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [binary, "/dev/stdin"], stdin=subprocess.PIPE, stdout=self._out, stderr=subprocess.STDOUT
        )
        self._broken = False

    def write(self, data: bytes) -> None:
        if self.proc is None or self._broken:
            return
        try:
            self.proc.stdin.write(data)  # type: ignore[union-attr]
        except BrokenPipeError:  # it stopped reading: it found a problem; finish() reports it
            self._broken = True

    def finish(self, *, skip: bool = False) -> tuple[str | None, dict]:
        if self.proc is None:
            return None, {"redis_check_rdb": self.skip_reason}
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        rc = self.proc.wait()
        self._out.seek(0)
        text = self._out.read().decode(errors="replace")
        self._out.close()
        if skip:
            return None, {"redis_check_rdb": "skipped (content not decrypted)"}
        keys = re.search(r"\[info\] (\d+) keys read", text)
        details = {"redis_check_rdb": "ok" if rc == 0 else f"failed (exit code {rc})"}
        if keys:
            details["redis_check_rdb_keys"] = int(keys[1])
        if rc != 0:
            lines = [ln for ln in text.splitlines() if "---" not in ln and ln.strip()]
            why = next((ln for ln in lines if "Error" in ln or "error" in ln), lines[-1] if lines else "")
            return f"redis-check-rdb rejects the RDB: {why.strip()[:300]}", details
        return None, details


# ------------------------------------------------------------------------------------------- fetch


def fetch_snapshot(storage: Storage, manifest: Manifest, workdir: Path, identities: list | None = None) -> Path:
    """Download and decompress into `workdir`, checking both SHA-256s; nothing is used from bytes that differ."""
    free = shutil.disk_usage(workdir).free
    if free < manifest.raw_bytes * 1.05:
        raise BackupError(
            f"Not enough space in {workdir} for the {manifest.raw_bytes / MiB:,.0f} MiB snapshot "
            f"({free / MiB:,.0f} MiB free). Fix: point RESTORE_TMPDIR at a bigger volume"
        )
    path = workdir / ("dump.rdb" if snapshot_format(manifest) == "rdb" else "snapshot.resp")
    with open(path, "wb") as out:
        outcome = read_artifact(storage, manifest, out.write, identities=identities)
    problems = outcome.problems(manifest)
    if outcome.shallow:
        problems.append("the snapshot is encrypted: set BACKUP_AGE_IDENTITY_FILE to the age identity to restore it")
    if problems:
        path.unlink(missing_ok=True)
        raise BackupError(
            f"Refusing to restore {storage.uri(manifest.artifact_key)}: {'; '.join(problems)}. Pick another snapshot"
        )
    return path


# ----------------------------------------------------------------------------------- throwaway server


class ThrowawayRedis:
    """A private redis-server on a unix socket in `workdir`, loading `workdir/dump.rdb` if present.
    No TCP port, no persistence, killed on stop()."""

    def __init__(self, workdir: Path, *, server_bin: str | None = None, load_timeout: float = 3600):
        binary = redis_binary("redis-server", server_bin)
        self.version = server_version(binary)
        self.workdir = workdir
        self.socket = str(workdir / "redis.sock")
        self.log = workdir / "redis.log"
        rdb = workdir / "dump.rdb"
        if rdb.exists():
            with open(rdb, "rb") as f:
                head = f.read(9)
            if head[:5] == b"REDIS" and head[5:].isdigit() and int(head[5:]) > max_rdb_version(self.version):
                raise BackupError(
                    f"The snapshot is RDB version {int(head[5:])}, newer than the local redis-server "
                    f"{'.'.join(map(str, self.version))} can load. Fix: install a newer redis-server (the source's "
                    "version or later) and set REDIS_SERVER_BIN to it"
                )
        args = [binary, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700"]
        args += ["--dir", str(workdir), "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"]
        args += ["--logfile", str(self.log), "--daemonize", "no", "--databases", "256"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._clients: list[redis.Redis] = []
        deadline = time.monotonic() + load_timeout
        probe = redis.Redis(unix_socket_path=self.socket, socket_timeout=30)
        try:
            while True:
                if self.proc.poll() is not None:
                    tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
                    raise BackupError(
                        f"redis-server could not load the snapshot (exit code {self.proc.returncode}): {tail.strip()}"
                    )
                try:
                    probe.ping()
                    break
                except (redis.BusyLoadingError, redis.ConnectionError):
                    if time.monotonic() > deadline:
                        raise BackupError(f"redis-server is still loading after {load_timeout:.0f} s") from None
                    time.sleep(0.05)
        except BaseException:
            probe.close()
            self.stop()
            raise
        probe.close()

    def client(self, db: int = 0) -> redis.Redis:
        c = redis.Redis(unix_socket_path=self.socket, db=db, socket_timeout=300)
        self._clients.append(c)
        return c

    def keyspace(self) -> dict[int, int]:
        return {db: v["keys"] for db, v in keyspace(self.client()).items()}

    def stop(self) -> None:
        for c in self._clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------------------- copy keys


@dataclass
class CopyStats:
    restored: dict[int, int] = field(default_factory=dict)
    short_ttl: dict[int, int] = field(default_factory=dict)  # keys restored with < 5 min left
    expired: int = 0  # already expired when copied: not restored


def _records_from_server(server: ThrowawayRedis, dbs: list[int], batch: int) -> Iterator[tuple[int, list]]:
    """(db, [(key, ttl_ms or 0, payload)]) batches read with pipelined DUMP + PTTL (relative TTLs)."""
    for db in dbs:
        client = server.client(db)
        cursor = 0
        while True:
            cursor, names = client.scan(cursor=cursor, count=batch)
            if names:
                pipe = client.pipeline(transaction=False)
                for name in names:
                    pipe.dump(name)
                    pipe.pttl(name)
                replies = pipe.execute()
                yield db, [(n, replies[2 * i + 1], replies[2 * i]) for i, n in enumerate(names)]
            if cursor == 0:
                break


def _records_from_logical(path: Path, batch: int) -> Iterator[tuple[int, list]]:
    """(db, [(key, absolute expiry ms or 0, payload)]) batches from a logical snapshot file. A malformed
    stream is reported by position and the last good key, never by its bytes (they may be values)."""
    db, records, done, last = 0, [], 0, None
    with open(path, "rb", buffering=MiB) as f:
        try:
            for args in iter_resp_commands(f):
                name = args[0].upper()
                if name == b"SELECT":
                    if records:
                        yield db, records
                        records = []
                    db = int(args[1])
                elif name == b"RESTORE":
                    records.append((args[1], int(args[2]), args[3]))
                    last = args[1]
                    if len(records) >= batch:
                        yield db, records
                        records = []
                done += 1
        except (ValueError, IndexError) as exc:
            after = f" (after key {show_key(last)})" if last is not None else ""
            raise PermanentError(
                f"The logical snapshot is malformed at command {done + 1:,}{after}: "
                f"{without_bytes(str(exc)) or type(exc).__name__}. The restore stopped there. Fix: pick "
                "another snapshot"
            ) from None
    if records:
        yield db, records


def copy_records(
    batches: Iterator[tuple[int, list]], target: RedisEndpoint, *, absolute: bool, say: Logger
) -> CopyStats:
    """RESTORE ... REPLACE every record into the target, pipelined per batch."""
    stats = CopyStats()
    clients: dict[int, redis.Redis] = {}
    last_report = time.monotonic()
    try:
        for db, records in batches:
            client = clients.get(db) or clients.setdefault(db, target.client(db=db))
            now_ms = int(time.time() * 1000)
            pipe = client.pipeline(transaction=False)
            sent: list[tuple[bytes, bytes]] = []
            for key, ttl, payload in records:
                if payload is None:
                    continue
                left = (ttl - now_ms if ttl > 0 else -1) if absolute else ttl
                if left == -2 or (ttl > 0 and left <= 0):
                    stats.expired += 1
                    continue
                if absolute:
                    pipe.execute_command("RESTORE", key, ttl, payload, "REPLACE", "ABSTTL")
                else:
                    pipe.execute_command("RESTORE", key, max(left, 0), payload, "REPLACE")
                sent.append((key, payload))
                if 0 < left < SHORT_TTL_MS:
                    stats.short_ttl[db] = stats.short_ttl.get(db, 0) + 1
            execute_restores(pipe, sent, f"The target Redis at {target.display()}", db)
            stats.restored[db] = stats.restored.get(db, 0) + len(sent)
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                say(f"Restored {sum(stats.restored.values()):,} keys so far")
    except redis.RedisError as exc:
        raise explain(target, without_echo(exc), "restoring keys into") from None
    finally:
        for c in clients.values():
            c.close()
    return stats


# ---------------------------------------------------------------------------- errors without values

_ARGS_ECHO = re.compile(r",?\s*with args beginning with:.*", re.S)  # Redis's "unknown command ..." quotes its args
_PIPELINE_ECHO = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.S)  # redis-py quotes the command
_BYTES_REPR = re.compile(r"""\bb(['"])(?:\\.|(?!\1).)*\1""", re.S)
_PRINTABLE_RUN = re.compile(rb"[\x21-\x7e][\x20-\x7e]{4,}[\x21-\x7e]")


def show_key(key: bytes | str | None, limit: int = 80) -> str:
    """A key as a message may show it: quoted, non-printable characters escaped, cut after `limit` bytes."""
    raw = key if isinstance(key, bytes) else str(key).encode()
    text = raw[:limit].decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text).replace("'", "\\'")
    return f"'{text}...' ({len(raw):,} bytes)" if len(raw) > limit else f"'{text}'"


def without_bytes(text: str) -> str:
    """`text` with every Python bytes literal (b'...', how a parser quotes what it read) left out."""
    return _BYTES_REPR.sub("<bytes not shown>", text)


def redis_reason(exc: BaseException, values: Iterable[bytes] = ()) -> str:
    """What the server answered (its error code and text), without anything it or redis-py echoed of the
    command: the arguments may be a value (a session token). Any run of printable bytes from `values` that
    still shows up is cut out too."""
    text = str(exc.args[0]) if exc.args else ""
    text = _PIPELINE_ECHO.sub("", text)
    text = _ARGS_ECHO.sub(" (arguments not shown)", text)
    code = getattr(exc, "status_code", None)
    if code and not text.startswith(code):
        text = f"{code} {text}"  # redis-py strips OOM, NOPERM, ERR ... into the exception type
    text = without_bytes(text)
    for value in values:
        for run in sorted(set(_PRINTABLE_RUN.findall(value)), key=len, reverse=True):
            text = text.replace(run.decode("ascii"), "<value not shown>")
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return (text[:300] + "...") if len(text) > 300 else text or type(exc).__name__


def without_echo(exc: BaseException) -> BaseException:
    """`exc` with its message reduced to redis_reason(), of the same type (so explain() still classifies it)."""
    if not isinstance(exc, redis.RedisError):
        return exc
    try:
        return type(exc)(redis_reason(exc))
    except Exception:  # noqa: BLE001 - an exception type with another signature
        return redis.RedisError(redis_reason(exc))


def execute_restores(pipe, sent: list[tuple[bytes, bytes]], where: str, db: int) -> None:
    """Run a pipeline of RESTOREs (one per `sent` (key, payload), in order); on a refusal raise an error naming
    the first refused key and the server's reason, never the payload."""
    replies = pipe.execute(raise_on_error=False)
    failed = [(i, r) for i, r in enumerate(replies) if isinstance(r, Exception)]
    if failed:
        index, exc = failed[0]
        key, payload = sent[index]
        raise restore_error(where, db, key, payload, exc, failed=len(failed), batch=len(replies))


def restore_error(
    where: str, db: int, key: bytes, payload: bytes, exc: BaseException, *, failed: int = 1, batch: int = 1
) -> BackupError:
    """The error for a refused RESTORE: the key, the reason and the fix."""
    reason = redis_reason(exc, [payload])
    what = f"{where} refused to RESTORE key {show_key(key)} in db{db} ({reason})"
    if failed > 1:
        what += f"; {failed - 1:,} more of the {batch:,} keys in that batch were refused too"
    if "payload version" in reason or "checksum" in reason:
        return PermanentError(
            f"{what}: the target is older than the snapshot's source (or the payload is damaged). Fix: restore "
            "into a Redis at least as new as the source, or pick another snapshot"
        )
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return PermanentError(
            f"{what}: the target is out of memory. Fix: raise its maxmemory (or restore into a bigger instance); "
            "keys restored before this one stay"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError | redis.AuthenticationError):
        return RedisAccessError(f"{what}. Fix: grant the target's user +restore (and +select, +info)")
    if "unknown command" in reason:
        return PermanentError(
            f"{what}: RESTORE is disabled or renamed on the target. Fix: enable RESTORE for the restore, or "
            "restore into a Redis that allows it"
        )
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return PermanentError(f"{what}: the target is a read-only replica. Fix: restore into its primary")
    return BackupError(what)


# ----------------------------------------------------------------------------------------- restore


@dataclass
class RedisRestoreResult:
    target: str
    partition: str
    backup_uri: str
    format: str
    expected: dict[str, int]  # per db: keys in the snapshot (loaded by the throwaway server / RESTOREs in file)
    restored: dict[str, int]
    in_target: dict[str, int]
    flushed: bool
    fetch_seconds: float
    load_seconds: float
    copy_seconds: float
    verify_seconds: float
    total_seconds: float
    expired: int = 0
    mismatches: list[str] = field(default_factory=list)
    pre_flush_snapshot: str = ""  # URI of the target's snapshot taken before the flush ("" when not flushed)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def keys(self) -> int:
        return sum(self.restored.values())


def target_state(target: RedisEndpoint, if_not_empty: IfNotEmpty, confirm: str) -> tuple[dict[int, int], str]:
    """(keys per db in the target, what to do: 'empty' | 'merge' | 'flush'); refuses without confirmation."""
    client = target.client()
    try:
        counts = {db: v["keys"] for db, v in keyspace(client).items()}
    except redis.RedisError as exc:
        raise explain(target, exc, "reading INFO keyspace from") from None
    finally:
        client.close()
    total = sum(counts.values())
    if total == 0:
        return counts, "empty"
    if if_not_empty == "merge":
        return counts, "merge"
    if if_not_empty == "flush" and confirm.strip() == target.name:
        return counts, "flush"
    raise RefusedError(
        f"Refusing to restore into {target.display()}: it already holds {total:,} keys. To wipe it first set "
        f"if_target_not_empty: flush and confirm_target: {target.name!r}; to keep its keys and overwrite only "
        "same-named ones set if_target_not_empty: merge. Nothing was changed"
    )


def confirm_flush(target: RedisEndpoint, confirm: str) -> None:
    """Refuse unless `confirm` repeats the target's name (host:port): checked before anything else happens."""
    if confirm.strip() != target.name:
        raise RefusedError(
            f"Refusing to FLUSHALL {target.display()}: confirm_target must repeat the target's name exactly, "
            f"{target.name!r} (got {confirm.strip()!r}). Nothing was changed"
        )


def flush_all(target: RedisEndpoint, confirm: str) -> dict[int, int]:
    """FLUSHALL, only when `confirm` repeats the target's name (host:port). Returns what was there before."""
    confirm_flush(target, confirm)
    client = target.client()
    try:
        before = {db: v["keys"] for db, v in keyspace(client).items()}
        client.flushall()
        return before
    except redis.RedisError as exc:
        raise explain(target, exc, "flushing (FLUSHALL)") from None
    finally:
        client.close()


def pre_flush_series(target: RedisEndpoint) -> str:
    """Where the snapshots taken before flushing `target` go: a series per target, beside the hourly ones."""
    return series_prefix("redis", safe_name(target.name), "pre-flush")


def snapshot_before_flush(
    target: RedisEndpoint,
    storage: Storage,
    *,
    encryption: EncryptionStage | None = None,
    encryption_info: dict | None = None,
    say: Logger = log.info,
) -> Manifest:
    """Snapshot `target` the way the hourly backup does and check storage holds it (manifest written last,
    object at its size). Raises, touching nothing, when it cannot: then nothing may flush the target."""
    series = pre_flush_series(target)
    say(f"Snapshotting {target.display()} into {storage.uri(series)}/ before flushing it")
    try:
        manifest = backup_redis(
            target,
            storage,
            series=series,
            partition=utc_now().strftime("%Y-%m-%d-%H%M%S"),
            source_name=safe_name(target.name),
            encryption=encryption,
            encryption_info=encryption_info,
            extra={"purpose": "pre-flush snapshot of a restore_redis target"},
            warn=say,
        )
        stored = read_manifest(storage, series, manifest.partition)
        problem = "" if stored is not None and is_present(storage, stored) else "storage does not hold it whole"
    except (BackupError, OSError) as exc:
        problem = target.redact(str(exc))
    if problem:
        raise RefusedError(
            f"Refusing to flush {target.display()}: the snapshot of it that must come first failed ({problem}). "
            "Nothing was changed. Fix the cause, or restore with if_target_not_empty: merge"
        )
    return manifest


def verify_counts(
    expected: dict[int, int], in_target: dict[int, int], short_ttl: dict[int, int], *, merged: bool
) -> list[str]:
    """Per db: the target holds what was restored (fewer only by keys that were about to expire; in merge mode
    the target may hold more)."""
    problems = []
    for db in sorted(set(expected) | set(in_target)):
        want, got, slack = expected.get(db, 0), in_target.get(db, 0), short_ttl.get(db, 0)
        if got < want - slack or (not merged and got > want):
            problems.append(f"db{db}: snapshot has {want:,} keys, target holds {got:,}")
    return problems


def restore_snapshot(
    storage: Storage,
    manifest: Manifest,
    target: RedisEndpoint,
    *,
    if_not_empty: IfNotEmpty = "refuse",
    confirm: str = "",
    server_bin: str | None = None,
    tmp_dir: str | None = None,
    identities: list | None = None,
    encryption: EncryptionStage | None = None,
    encryption_info: dict | None = None,
    batch: int = 1000,
    say: Logger = log.info,
) -> RedisRestoreResult:
    t0 = time.monotonic()
    target_state(target, if_not_empty, confirm)  # refuse early, before downloading anything
    fmt = snapshot_format(manifest)
    if fmt == "rdb":
        redis_binary("redis-server", server_bin)  # a clear error now rather than after the download
    workdir = Path(tempfile.mkdtemp(prefix="cbd-redis-restore-", dir=tmp_dir))
    server: ThrowawayRedis | None = None
    try:
        say(f"Fetching {storage.uri(manifest.artifact_key)} ({manifest.stored_bytes / MiB:,.1f} MiB), checking SHA-256")
        path = fetch_snapshot(storage, manifest, workdir, identities)
        fetched = time.monotonic()
        if fmt == "rdb":
            say("Loading the RDB into a throwaway redis-server")
            server = ThrowawayRedis(workdir, server_bin=server_bin)
            expected = server.keyspace()
            batches = _records_from_server(server, sorted(expected), batch)
            absolute = False
        else:
            expected = {int(db): n for db, n in manifest.data["contents"]["keys_per_db"].items()}
            batches = _records_from_logical(path, batch)
            absolute = True
        loaded = time.monotonic()
        _, action = target_state(target, if_not_empty, confirm)  # again: it may have changed meanwhile
        pre_flush = ""
        if action == "flush":
            kept = snapshot_before_flush(
                target, storage, encryption=encryption, encryption_info=encryption_info, say=say
            )
            pre_flush = storage.uri(kept.artifact_key)
            say(f"Flushing {target.display()} first (confirmed by name; its keys are kept in {pre_flush})")
            flush_all(target, confirm)
        say(f"Copying {sum(expected.values()):,} keys into {target.display()} (DUMP/RESTORE pipelines)")
        stats = copy_records(batches, target, absolute=absolute, say=say)
        copied = time.monotonic()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    client = target.client()
    try:
        in_target = {db: v["keys"] for db, v in keyspace(client).items()}
    except redis.RedisError as exc:
        raise explain(target, exc, "counting keys in") from None
    finally:
        client.close()
    reference = stats.restored if fmt == "logical" else expected
    mismatches = verify_counts(reference, in_target, stats.short_ttl, merged=action == "merge")
    done = time.monotonic()
    return RedisRestoreResult(
        target=target.display(),
        partition=manifest.data.get("dagster_partition", manifest.partition),
        backup_uri=storage.uri(manifest.artifact_key),
        format=fmt,
        expected={str(k): v for k, v in expected.items()},
        restored={str(k): v for k, v in stats.restored.items()},
        in_target={str(k): v for k, v in in_target.items()},
        flushed=action == "flush",
        fetch_seconds=round(fetched - t0, 3),
        load_seconds=round(loaded - fetched, 3),
        copy_seconds=round(copied - loaded, 3),
        verify_seconds=round(done - copied, 3),
        total_seconds=round(done - t0, 3),
        expired=stats.expired,
        mismatches=mismatches,
        pre_flush_snapshot=pre_flush,
    )


# -------------------------------------------------------------------------------------------- drill


def drill_prefix(source: str) -> str:
    return f"drills/redis/{source}"


def count_tolerance(manifest: Manifest, db: str) -> int:
    """How far a restored database may differ from the manifest: keys with a TTL may have expired since, and
    an RDB's counts come from INFO right after the fork (writes racing it). 0.1% (at least 10) covers the race."""
    contents = manifest.data["contents"]
    expires = int(contents.get("expires_per_db", {}).get(db, 0))
    keys = int(contents.get("keys_per_db", {}).get(db, 0))
    race = max(10, keys // 1000) if contents.get("format") == "rdb" else 0
    return expires + race


def run_redis_drill(
    storage: Storage,
    series: str,
    *,
    source: str,
    partition: str,
    server_bin: str | None = None,
    tmp_dir: str | None = None,
    identities: list | None = None,
    say: Logger = print,
) -> dict:
    """Restore the newest valid snapshot into a throwaway redis-server, compare key counts per database with
    the manifest, time it against the RTO, and store a report (also when the restore fails)."""
    started = utc_now()
    t0 = time.monotonic()
    manifest = select_snapshot(storage, series, "latest")
    report: dict = {
        "kind": "redis-restore-drill",
        "partition": partition,
        "backup_partition": manifest.data.get("dagster_partition", manifest.partition),
        "backup_uri": storage.uri(manifest.artifact_key),
        "backup_sha256": manifest.stored_sha256,
        "backup_snapshot_at": manifest.data["timings"]["snapshot_at"],
        "format": snapshot_format(manifest),
        "rto_seconds": RTO_REDIS_S,
        "started_at": iso(started),
    }
    workdir = Path(tempfile.mkdtemp(prefix="cbd-redis-drill-", dir=tmp_dir))
    server: ThrowawayRedis | None = None
    try:
        say(f"Drill: fetching {report['backup_uri']}")
        path = fetch_snapshot(storage, manifest, workdir, identities)
        fetched = time.monotonic()
        server = ThrowawayRedis(workdir, server_bin=server_bin)  # an RDB loads at start; a logical one is replayed
        if report["format"] != "rdb":
            _copy_into_throwaway(path, server)
        loaded = time.monotonic()
        counts = {str(db): n for db, n in server.keyspace().items()}
        expected = {str(db): int(n) for db, n in manifest.data["contents"]["keys_per_db"].items()}
        problems = []
        for db in sorted(set(expected) | set(counts), key=int):
            want, got, tol = expected.get(db, 0), counts.get(db, 0), count_tolerance(manifest, db)
            if abs(got - want) > tol:
                problems.append(f"db{db}: manifest says {want:,} keys, the restore holds {got:,} (tolerance {tol:,})")
        report.update(
            passed=not problems,
            problems=problems,
            keys_expected=expected,
            keys_restored=counts,
            keys=sum(counts.values()),
            fetch_seconds=round(fetched - t0, 3),
            load_seconds=round(loaded - fetched, 3),
            duration_seconds=round(time.monotonic() - t0, 3),
        )
    except BackupError as exc:
        report.update(passed=False, problems=[str(exc)], duration_seconds=round(time.monotonic() - t0, 3))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report["finished_at"] = iso(utc_now())
    drill_reports.write_report(storage, drill_prefix(source), partition, report)  # one per drill run
    return report


def _copy_into_throwaway(path: Path, server: ThrowawayRedis) -> None:
    """Replay a logical snapshot into the throwaway server over its unix socket."""
    clients: dict[int, redis.Redis] = {}
    for db, records in _records_from_logical(path, 1000):
        client = clients.get(db) or clients.setdefault(db, server.client(db))
        pipe = client.pipeline(transaction=False)
        for key, ttl, payload in records:
            pipe.execute_command("RESTORE", key, ttl, payload, "REPLACE", "ABSTTL")
        execute_restores(pipe, [(key, payload) for key, _ttl, payload in records], "The throwaway redis-server", db)


def read_report(storage: Storage, source: str, partition: str) -> dict | None:
    return drill_reports.read_partition_report(storage, drill_prefix(source), partition)


def newest_passing_report(storage: Storage, source: str, warn=lambda _m: None) -> dict | None:
    return drill_reports.newest_passing_report(storage, drill_prefix(source), warn)


def report_age(report: dict, now=None):
    return (now or utc_now()) - parse_iso(report["finished_at"])
