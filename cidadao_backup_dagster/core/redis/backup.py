"""One Redis snapshot, end to end: connect -> point-in-time RDB over the replication protocol (or the logical
fallback) -> verify while streaming -> zstd + SHA-256 pipeline -> storage -> manifest (last).

The RDB is fetched the way `redis-cli --rdb` does: AUTH, `REPLCONF capa eof`, `REPLCONF rdb-only 1`, `SYNC`.
The server forks (a point-in-time copy) and sends either `$<length>\\r\\n<bytes>` (disk-based) or
`$EOF:<40-byte mark>\\r\\n<bytes><mark>` (diskless). Nothing touches the server's disk and no file is copied
by hand, unlike the strategy's `BGSAVE` + `LASTSAVE` loop + `scp dump.rdb`.
"""

from __future__ import annotations

import logging
import platform
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import parse_qs, urlsplit

import redis
import zstandard

from ... import __version__
from ..artifacts.manifest import Manifest, data_object_name, iso, partition_prefix, publish, utc_now
from ..artifacts.pipeline import EncryptionStage, Progress, stream_to_writer
from ..artifacts.storage import MiB, Storage, write_error_hint, write_error_type
from ..errors import BackupError, ConfigurationError, PermanentError
from ..secrets import parse_credentials, redact_text, register_secret, register_url
from .rdb import RdbVerifier, logical_header, logical_trailer, resp_command, restore_command

log = logging.getLogger(__name__)
Logger = Callable[[str], None]
Mode = Literal["auto", "rdb", "logical"]
MODES = ("auto", "rdb", "logical")

URL_HELP = "use redis://[user:password@]host:6379[/db] or rediss://... for TLS"


# ------------------------------------------------------------------------------------------ endpoint


@dataclass(frozen=True)
class RedisEndpoint:
    """Where a Redis server is, with the password kept apart from everything printable."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ssl_cert_reqs: str = "required"  # required | optional | none
    ssl_ca_certs: str | None = None
    ssl_check_hostname: bool = True
    connect_timeout: float = 10.0
    socket_timeout: float = 60.0
    variable: str = "REDIS_URL"

    @classmethod
    def from_url(
        cls, url: str, variable: str = "REDIS_URL", *, connect_timeout: float = 10.0, socket_timeout: float = 60.0
    ) -> RedisEndpoint:
        url = (url or "").strip()
        if not url:
            raise ConfigurationError(variable, "is not set", f"set it to the Redis to back up: {URL_HELP}")
        register_url(url)
        credentials = parse_credentials(
            url, variable, kind="Redis", schemes=("redis", "rediss"), example="redis://[user:password@]host:6379[/db]"
        )
        register_secret(credentials.password)
        register_secret(credentials.raw_password)
        try:
            parts = urlsplit(url)
            port = parts.port or 6379
        except ValueError:
            raise ConfigurationError(variable, "cannot be parsed: its port is not a number", URL_HELP) from None
        if not parts.hostname:
            raise ConfigurationError(variable, "names no host", URL_HELP)
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ConfigurationError(variable, "names a database that is not a number", "end the URL with /0 (or none)")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        reqs = query.get("ssl_cert_reqs", "required").lower()
        if reqs not in ("required", "optional", "none"):
            raise ConfigurationError(variable, f"ssl_cert_reqs={reqs!r}", "use required, optional or none")
        return cls(
            host=parts.hostname,
            port=port,
            db=int(path or 0),
            username=credentials.user,
            password=credentials.password,
            tls=parts.scheme.lower() == "rediss",
            ssl_cert_reqs=reqs,
            ssl_ca_certs=query.get("ssl_ca_certs"),
            ssl_check_hostname=query.get("ssl_check_hostname", "true").lower() not in ("false", "0", "no")
            and reqs != "none",
            connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            variable=variable,
        )

    @property
    def name(self) -> str:
        """What an operator types to confirm a destructive action on this server."""
        return f"{self.host}:{self.port}"

    def display(self) -> str:
        """`redis://user@host:port/db` from the parsed parts (never from the URL as written): safe to print."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{user}{host}:{self.port}/{self.db}"

    def redact(self, text: str) -> str:
        return redact_text(text, [self.password] if self.password else [])

    def with_password(self, password: str | None) -> RedisEndpoint:
        return RedisEndpoint(**{**self.__dict__, "password": password})

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ssl_ca_certs)
        ctx.check_hostname = self.ssl_check_hostname
        ctx.verify_mode = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}[
            self.ssl_cert_reqs
        ]
        return ctx

    def client(self, db: int | None = None, **extra) -> redis.Redis:
        kwargs: dict = dict(
            host=self.host,
            port=self.port,
            db=self.db if db is None else db,
            username=self.username,
            password=self.password,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=self.socket_timeout,
        )
        if self.tls:
            kwargs.update(
                ssl=True,
                ssl_cert_reqs=self.ssl_cert_reqs,
                ssl_ca_certs=self.ssl_ca_certs,
                ssl_check_hostname=self.ssl_check_hostname,
            )
        return redis.Redis(**kwargs, **extra)

    def open_socket(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
            if self.tls:
                sock = self.ssl_context().wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self.socket_timeout)
        except BaseException:
            sock.close()
            raise
        return sock


class RedisAccessError(PermanentError):
    """Credentials, permissions or a refused mode: retrying will not help until someone changes a setting."""


def explain(endpoint: RedisEndpoint, exc: BaseException, doing: str = "talking to") -> BackupError:
    """A BackupError an operator can act on, from a redis-py or socket exception; never with a password."""
    msg = endpoint.redact(str(exc)) or type(exc).__name__
    where = endpoint.display()
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in msg or "NOAUTH" in msg:
        return RedisAccessError(
            f"Redis at {where} rejected the credentials while {doing} it ({msg}). Fix: check the user and "
            f"password in {endpoint.variable} (redis://user:password@host:port; a server without ACL users takes "
            "redis://:password@host:port)"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError) or msg.startswith("NOPERM"):
        return RedisAccessError(
            f"The Redis user of {where} lacks a permission needed for {doing} it ({msg}). Fix: grant it, e.g. "
            "ACL SETUSER <user> +info +config|get +lastsave +sync +replconf +scan +dump +pttl +time +select"
        )
    if isinstance(exc, redis.TimeoutError | TimeoutError | socket.timeout):
        return BackupError(
            f"Redis at {where} did not answer in time while {doing} it ({msg}). Fix: check that the server is up "
            "and not overloaded; raise REDIS_SOCKET_TIMEOUT_S for very large snapshots"
        )
    if isinstance(exc, redis.ConnectionError | OSError | ssl.SSLError):
        tls_hint = "" if endpoint.tls else " (if the server requires TLS, use rediss://)"
        return BackupError(
            f"Cannot connect to Redis at {where} ({msg}). Fix: check host and port in {endpoint.variable}, that "
            f"the server is running and reachable from here{tls_hint}"
        )
    return BackupError(f"Redis at {where} failed while {doing} it: {type(exc).__name__}: {msg}")


def keyspace(client: redis.Redis) -> dict[int, dict[str, int]]:
    """{db: {"keys": n, "expires": m}} from INFO keyspace (databases without keys are absent)."""
    out = {}
    for name, stats in client.info("keyspace").items():
        if name.startswith("db") and isinstance(stats, dict):
            out[int(name[2:])] = {"keys": int(stats.get("keys", 0)), "expires": int(stats.get("expires", 0))}
    return dict(sorted(out.items()))


def server_facts(client: redis.Redis) -> dict:
    info = client.info("server")
    repl = client.info("replication")
    return {
        "redis_version": str(info.get("redis_version", "?")),
        "redis_mode": info.get("redis_mode"),
        "role": repl.get("role"),
        "os": info.get("os"),
    }


# ------------------------------------------------------------------------------- replication fetch


class SyncRefused(BackupError):
    """The server answered SYNC with an error (renamed command, managed service, ACL)."""


class ReplicationSync:
    """A point-in-time RDB over the replication protocol. `read(n)` returns only the RDB's bytes and feeds
    them to an RdbVerifier on the way; `finish()` tells whether the whole RDB arrived intact."""

    MARK_LEN = 40

    def __init__(self, endpoint: RedisEndpoint):
        self.endpoint = endpoint
        self.verifier = RdbVerifier()
        self.length: int | None = None
        self.mark: bytes | None = None
        self.received = 0
        self._done = False
        self._pending = bytearray()
        try:
            self._sock = endpoint.open_socket()
        except OSError as exc:
            raise explain(endpoint, exc, "connecting to") from None
        try:
            self._f = self._sock.makefile("rb", buffering=MiB)
            if endpoint.password is not None:
                auth = (
                    ("AUTH", endpoint.username, endpoint.password) if endpoint.username else ("AUTH", endpoint.password)
                )
                reply = self._command(*auth)
                if reply.startswith(b"-") and b"without any password configured" not in reply:
                    raise explain(endpoint, redis.AuthenticationError(reply[1:].decode(errors="replace")), "AUTH")
            self._command("REPLCONF", "capa", "eof")  # lets the server stream a diskless RDB ($EOF:<mark>)
            self._command("REPLCONF", "rdb-only", "1")  # Redis >= 7: just the RDB, no command stream after it
            self._sock.sendall(b"SYNC\r\n")
            line = self._read_reply_line(allow_keepalive=True)
            if line.startswith(b"-"):
                raise SyncRefused(
                    f"Redis at {endpoint.display()} refused SYNC ({endpoint.redact(line[1:].decode(errors='replace'))})"
                )
            if line.startswith(b"$EOF:"):
                self.mark = line[5:]
                if len(self.mark) != self.MARK_LEN:
                    raise BackupError(f"Malformed diskless SYNC header from {endpoint.display()}: {line[:60]!r}")
            elif line.startswith(b"$") and line[1:].isdigit():
                self.length = int(line[1:])
            else:
                raise BackupError(f"Unexpected SYNC reply from {endpoint.display()}: {line[:60]!r}")
        except BackupError:
            self.close()
            raise
        except (OSError, redis.RedisError) as exc:
            self.close()
            raise explain(endpoint, exc, "starting SYNC with") from None

    def _command(self, *args: str | None) -> bytes:
        self._sock.sendall(resp_command(*[a for a in args if a is not None]))
        return self._read_reply_line(allow_keepalive=False)

    def _read_reply_line(self, *, allow_keepalive: bool) -> bytes:
        while True:
            line = self._f.readline(64 * 1024)
            if not line:
                raise BackupError(f"Redis at {self.endpoint.display()} closed the connection during the handshake")
            line = line.rstrip(b"\r\n")
            if line or not allow_keepalive:  # the server sends bare newlines while its fork is being prepared
                return line

    @property
    def diskless(self) -> bool:
        return self.mark is not None

    def read(self, n: int = MiB) -> bytes:
        if self._done:
            return b""
        try:
            data = self._read_length(n) if self.length is not None else self._read_until_mark(n)
        except (OSError, redis.RedisError) as exc:
            raise explain(self.endpoint, exc, f"receiving the RDB ({self.received:,} bytes in) from") from None
        self.received += len(data)
        self.verifier.feed(data)
        return data

    def _read_length(self, n: int) -> bytes:
        remaining = self.length - self.received  # type: ignore[operator]
        if remaining <= 0:
            self._done = True
            return b""
        data = self._f.read(min(n, remaining))
        if not data:
            raise BackupError(
                f"Redis at {self.endpoint.display()} closed the connection after {self.received:,} of "
                f"{self.length:,} RDB bytes"
            )
        return data

    def _read_until_mark(self, n: int) -> bytes:
        buf, mark = self._pending, self.mark
        while len(buf) < n + self.MARK_LEN:
            chunk = self._f.read1(n)
            if not chunk:
                raise BackupError(
                    f"Redis at {self.endpoint.display()} closed the connection before the end of the diskless RDB "
                    f"({self.received + len(buf):,} bytes received)"
                )
            start = max(0, len(buf) - self.MARK_LEN)
            buf += chunk
            at = buf.find(mark, start)  # type: ignore[arg-type]
            if at >= 0:
                self._done = True
                data = bytes(buf[:at])
                buf.clear()
                return data
        data = bytes(buf[: -self.MARK_LEN])
        del buf[: -self.MARK_LEN]
        return data

    def close(self) -> None:
        for closer in (getattr(self, "_f", None), getattr(self, "_sock", None)):
            if closer is not None:
                try:
                    closer.close()
                except OSError:
                    pass


# ---------------------------------------------------------------------------------- logical mode


class IterReader:
    """A read()-able view of an iterator of byte blocks (the pipeline reads from it)."""

    def __init__(self, blocks: Iterator[bytes]):
        self._blocks = blocks
        self._buf = bytearray()
        self._eof = False

    def read(self, n: int = MiB) -> bytes:
        while len(self._buf) < n and not self._eof:
            try:
                self._buf += next(self._blocks)
            except StopIteration:
                self._eof = True
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


@dataclass
class LogicalDump:
    """SCAN + DUMP + PTTL, pipelined per batch, as RESP commands (see redis_rdb's logical format)."""

    endpoint: RedisEndpoint
    dbs: list[int]
    header: dict
    batch: int = 1000
    keys: dict[int, int] = field(default_factory=dict)
    vanished: int = 0

    def blocks(self) -> Iterator[bytes]:
        yield logical_header(self.header)
        for db in self.dbs:
            client = self.endpoint.client(db=db)
            try:
                yield resp_command(b"SELECT", db)
                self.keys[db] = 0
                cursor = 0
                while True:
                    cursor, names = client.scan(cursor=cursor, count=self.batch)
                    if names:
                        yield self._batch(client, db, names)
                    if cursor == 0:
                        break
            except redis.RedisError as exc:
                raise explain(self.endpoint, exc, f"dumping keys (SCAN/DUMP/PTTL) of db {db} from") from None
            finally:
                client.close()
        yield logical_trailer(self.keys)

    def _batch(self, client: redis.Redis, db: int, names: list[bytes]) -> bytes:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.dump(name)
            pipe.pttl(name)
        pipe.time()
        replies = pipe.execute()
        secs, micros = replies[-1]
        now_ms = int(secs) * 1000 + int(micros) // 1000
        out = []
        for i, name in enumerate(names):
            payload, pttl = replies[2 * i], replies[2 * i + 1]
            if payload is None or pttl == -2:  # deleted or expired since SCAN returned it
                self.vanished += 1
                continue
            out.append(restore_command(name, now_ms + pttl if pttl > 0 else 0, payload))
            self.keys[db] += 1
        return b"".join(out)


# ------------------------------------------------------------------------------------------ backup


@dataclass(frozen=True)
class RedisSnapshotSettings:
    mode: Mode = "auto"
    zstd_level: int = 3
    zstd_threads: int = -1
    progress_every: float = 10.0
    scan_batch: int = 1000


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def partition_segment(partition: str) -> str:
    """Hourly partition keys look like 2026-11-24-13:00. A colon is legal in S3 keys and Linux paths but not
    on Windows/SMB, and `scp`/`rsync`/`tar` read `a:b` as host:path; storage uses 2026-11-24-1300 instead
    (same order, so listings still sort by time)."""
    return partition.replace(":", "")


def backup_redis(
    endpoint: RedisEndpoint,
    storage: Storage,
    *,
    series: str,
    partition: str,
    source_name: str,
    settings: RedisSnapshotSettings = RedisSnapshotSettings(),
    encryption: EncryptionStage | None = None,
    encryption_info: dict | None = None,
    extra: dict | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    warn: Logger = log.warning,
) -> Manifest:
    """Snapshot `endpoint` into `storage` under `series/<partition segment>`. Returns the manifest, written last.

    On any failure the partial upload is aborted and no manifest is written; an earlier snapshot of the same
    partition stays valid until the new one is complete."""
    if settings.mode not in MODES:
        raise ConfigurationError("REDIS_SNAPSHOT_MODE", f"{settings.mode!r} is not a mode", "use auto, rdb or logical")
    started_at = utc_now()
    t0 = time.monotonic()
    storage.check_writable()
    client = endpoint.client()
    try:
        facts = server_facts(client)
        before = keyspace(client)
    except redis.RedisError as exc:
        raise explain(endpoint, exc, "reading INFO from") from None

    sync: ReplicationSync | None = None
    mode = settings.mode
    fallback_reason = None
    if mode in ("auto", "rdb"):
        try:
            sync = ReplicationSync(endpoint)
        except SyncRefused as exc:
            if mode == "rdb":
                raise RedisAccessError(
                    f"{exc}. Fix: this server does not allow replication (managed services such as ElastiCache and "
                    "Redis Cloud refuse SYNC): set REDIS_SNAPSHOT_MODE=logical (or auto)"
                ) from None
            fallback_reason = str(exc)
            warn(
                f"{exc}: falling back to a logical snapshot (SCAN + DUMP + PTTL). It is not point-in-time: each "
                "key is as it was when read. Set REDIS_SNAPSHOT_MODE=logical to skip the SYNC attempt"
            )
            mode = "logical"
        else:
            mode = "rdb"
    taken_at = utc_now()  # diskless: the fork happened just before the header; disk-based: the save just ended
    try:
        at_snapshot = keyspace(client)
    except redis.RedisError as exc:
        if sync:
            sync.close()
        raise explain(endpoint, exc, "reading INFO keyspace from") from None

    segment = partition_segment(partition)
    ext = ("rdb.zst" if mode == "rdb" else "resp.zst") + (".age" if encryption else "")
    key = f"{partition_prefix(series, segment)}/{data_object_name(safe_name(source_name), segment, '.' + ext)}"
    dump: LogicalDump | None = None
    if mode == "rdb":
        source = sync
    else:
        dbs = sorted(set(before) | set(at_snapshot))
        dump = LogicalDump(
            endpoint,
            dbs,
            {
                "source": endpoint.display(),
                "redis_version": facts["redis_version"],
                "started_at": iso(taken_at),
                "tool": f"cidadao_backup_dagster {__version__}",
            },
            batch=settings.scan_batch,
        )
        source = IterReader(dump.blocks())

    writer = storage.open_write(key)
    try:
        stats = stream_to_writer(
            source,  # type: ignore[arg-type]
            writer,
            level=settings.zstd_level,
            threads=settings.zstd_threads,
            encryption=encryption,
            on_progress=on_progress,
            progress_every=settings.progress_every,
        )
        if sync is not None:
            check = sync.verifier.finish()
            if not check.ok:
                raise BackupError(
                    f"The RDB received from {endpoint.display()} failed verification: {'; '.join(check.problems)}"
                )
        fetch_seconds = time.monotonic() - t0
        writer.commit()
    except BaseException as exc:
        writer.abort()
        if isinstance(exc, Exception) and not isinstance(exc, BackupError):
            raise write_error_type(exc)(
                f"Writing {storage.uri(key)} failed ({type(exc).__name__}: {endpoint.redact(str(exc))}); "
                "the partial upload was removed and earlier snapshots are untouched." + write_error_hint(exc)
            ) from exc
        if isinstance(exc, BackupError):
            raise type(exc)(f"{exc}. Nothing was stored; earlier snapshots are untouched") from None
        raise
    finally:
        if sync is not None:
            sync.close()
        client.close()

    if sync is not None:
        rdb = check.summary()
        keys = {str(db): v["keys"] for db, v in at_snapshot.items()}
        contents = {
            "format": "rdb",
            "keys_per_db": keys,
            "expires_per_db": {str(db): v["expires"] for db, v in at_snapshot.items()},
            "keys_total": sum(keys.values()),
            "keys_source": "INFO keyspace when the payload started (diskless: right after the fork; disk-based: "
            "when the server's save ended); the RDB itself is exact, writes in between can move these a little",
            **rdb,
            "diskless_transfer": sync.diskless,
        }
        fmt = "Redis RDB (point-in-time, from SYNC), zstd-compressed"
        hint = (
            "zstd -d <file> -o dump.rdb; redis-server --dir <folder> --dbfilename dump.rdb (age -d first if encrypted)"
        )
    else:
        keys = {str(db): n for db, n in dump.keys.items()}  # type: ignore[union-attr]
        contents = {
            "format": "logical",
            "keys_per_db": keys,
            "expires_per_db": {str(db): v["expires"] for db, v in at_snapshot.items()},
            "keys_total": sum(keys.values()),
            "keys_source": "RESTORE commands written per database (exact for this file)",
            "keys_vanished_during_scan": dump.vanished,  # type: ignore[union-attr]
            "fallback_reason": fallback_reason,
        }
        fmt = "RESP stream of RESTORE ... REPLACE ABSTTL commands (logical snapshot), zstd-compressed"
        hint = "zstd -dc <file> | redis-cli -u <target url> --pipe  (age -d first if encrypted)"

    finished_at = utc_now()
    snapshot_at = taken_at
    if sync is not None:  # the RDB's own creation time (server clock, set when the fork started) is the exact one
        ctime = str(check.aux.get("ctime", ""))
        if ctime.isdigit() and abs(int(ctime) - taken_at.timestamp()) < 86400:
            snapshot_at = datetime.fromtimestamp(int(ctime), UTC)
    manifest = Manifest(
        {
            "format_version": 1,
            "kind": f"redis-{mode}",
            "partition": segment,
            "dagster_partition": partition,
            "series": series,
            "artifact": {
                "key": key,
                "uri": storage.uri(key),
                "format": fmt,
                "restore_hint": hint,
                "compression": {"codec": "zstd", "level": settings.zstd_level, "checksum": True},
                "encryption": encryption_info if encryption else None,
                "raw_bytes": stats.raw_bytes,
                "raw_sha256": stats.raw_sha256,
                "stored_bytes": stats.stored_bytes,
                "stored_sha256": stats.stored_sha256,
            },
            "source": {
                "url": endpoint.display(),
                "name": source_name,
                "host": endpoint.host,
                "port": endpoint.port,
                "user": endpoint.username,
                "tls": endpoint.tls,
                **facts,
            },
            "contents": contents,
            "tools": {
                "cidadao_backup_dagster": __version__,
                "redis_py": redis.__version__,
                "zstandard": zstandard.__version__,
                "python": platform.python_version(),
                "host": socket.gethostname(),
            },
            "timings": {
                "started_at": iso(started_at),
                "snapshot_at": iso(snapshot_at),
                "payload_started_at": iso(taken_at),
                "finished_at": iso(finished_at),
                "fetch_seconds": round(fetch_seconds, 3),
                "total_seconds": round(time.monotonic() - t0, 3),
                "raw_mb_per_s": round(stats.raw_bytes / MiB / max(fetch_seconds, 1e-9), 2),
            },
            **({"run": extra} if extra else {}),
        }
    )
    return publish(storage, series, manifest)  # LAST: from here on the snapshot exists for readers
