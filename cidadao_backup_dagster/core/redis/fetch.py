"""The two ways a snapshot's bytes are read from Redis.

The RDB is fetched the way `redis-cli --rdb` does: AUTH, `REPLCONF capa eof`, `REPLCONF rdb-only 1`, `SYNC`.
The server forks (a point-in-time copy) and sends either `$<length>\\r\\n<bytes>` (disk-based) or
`$EOF:<40-byte mark>\\r\\n<bytes><mark>` (diskless). Nothing touches the server's disk and no file is copied
by hand, unlike the strategy's `BGSAVE` + `LASTSAVE` loop + `scp dump.rdb`.

Where SYNC is refused (managed services), the logical mode reads every key with SCAN + DUMP + PTTL instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

from ..artifacts.storage import MiB
from ..errors import BackupError
from .endpoint import RedisEndpoint, explain
from .rdb import RdbVerifier, logical_header, logical_trailer, resp_command, restore_command


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
