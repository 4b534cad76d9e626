"""Redis RDB files and the logical snapshot format, without a server: a streaming RDB verifier (magic, version,
AUX header, final EOF opcode, trailing CRC64 from crc64.py), and the logical RESP format.

Logical format (`.resp.zst`): a zstd-compressed stream of Redis protocol (RESP) commands, restorable with
stock tools: `zstd -dc snapshot.resp.zst | redis-cli -u "$REDIS_URL" --pipe`. It is

    ECHO "cidadao-redis-logical/1 {header JSON}"
    SELECT <db>                                                  (once per database that has keys)
    RESTORE <key> <absolute expiry, unix ms, or 0> <DUMP payload> REPLACE ABSTTL    (once per key)
    ...
    ECHO "cidadao-redis-logical/1 end {"keys": {"<db>": n, ...}}"

Every DUMP payload ends with its RDB version (2 bytes) and its own CRC64, which the verifier checks; the
closing ECHO's counts prove the file is complete. RESTORE ... ABSTTL needs Redis >= 5 on the target, and
the target must be at least as new as the source (DUMP payload version).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from .crc64 import Crc64, crc64

# ------------------------------------------------------------------------------------- RDB parsing

OP_FUNCTION2, OP_MODULE_AUX, OP_IDLE, OP_FREQ = 0xF5, 0xF7, 0xF8, 0xF9
OP_AUX, OP_RESIZEDB, OP_EXPIRETIME_MS, OP_EXPIRETIME, OP_SELECTDB, OP_EOF = 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF
RDB_MAGIC = b"REDIS"
MIN_CHECKSUM_VERSION = 5  # RDB 5 (Redis 2.6) added the trailing CRC64


class _Incomplete(Exception):
    pass


class _Cursor:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise _Incomplete
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def length(self) -> tuple[int, bool]:
        """(value, is_encoded) of an RDB length."""
        first = self.byte()
        kind = first >> 6
        if kind == 0:
            return first & 0x3F, False
        if kind == 1:
            return ((first & 0x3F) << 8) | self.byte(), False
        if kind == 3:
            return first & 0x3F, True
        if first == 0x80:
            return struct.unpack(">I", self.take(4))[0], False
        if first == 0x81:
            return struct.unpack(">Q", self.take(8))[0], False
        raise ValueError(f"unknown RDB length encoding 0x{first:02x}")

    def string(self) -> bytes:
        value, encoded = self.length()
        if not encoded:
            return self.take(value)
        if value in (0, 1, 2):
            size = (1, 2, 4)[value]
            return str(int.from_bytes(self.take(size), "little", signed=True)).encode()
        if value == 3:  # LZF: compressed length, plain length, data (AUX values are never big)
            clen, _ = self.length()
            plen, _ = self.length()
            return _lzf_decompress(self.take(clen), plen)
        raise ValueError(f"unknown RDB string encoding {value}")


def _lzf_decompress(data: bytes, size: int) -> bytes:
    out = bytearray()
    i = 0
    while i < len(data):
        ctrl = data[i]
        i += 1
        if ctrl < 32:
            out += data[i : i + ctrl + 1]
            i += ctrl + 1
        else:
            length = ctrl >> 5
            if length == 7:
                length += data[i]
                i += 1
            ref = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
            i += 1
            for _ in range(length + 2):
                out.append(out[ref])
                ref += 1
    return bytes(out[:size])


def parse_rdb_header(head: bytes) -> dict:
    """Magic, version and the AUX fields at the start of an RDB (raises _Incomplete when `head` is short)."""
    cur = _Cursor(head)
    magic = cur.take(9)
    if magic[:5] != RDB_MAGIC or not magic[5:].isdigit():
        raise ValueError(f"does not start with the RDB magic 'REDISnnnn' (starts with {magic[:9]!r})")
    info: dict = {"rdb_version": int(magic[5:]), "aux": {}}
    while True:
        opcode = cur.byte()
        if opcode != OP_AUX:
            info["first_opcode_after_aux"] = opcode
            if opcode == OP_SELECTDB:
                info["first_db"] = cur.length()[0]
            return info
        key = cur.string().decode(errors="replace")
        value = cur.string()
        info["aux"][key] = value.decode(errors="replace") if len(value) < 256 else f"<{len(value)} bytes>"


@dataclass
class RdbCheck:
    """Outcome of checking one RDB byte stream."""

    problems: list[str] = field(default_factory=list)
    rdb_version: int | None = None
    aux: dict = field(default_factory=dict)
    size: int = 0
    crc64_expected: str | None = None
    crc64_computed: str | None = None
    checksum_disabled: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict:
        return {
            "rdb_version": self.rdb_version,
            "rdb_bytes": self.size,
            "crc64": self.crc64_expected,
            "crc64_verified": self.ok and not self.checksum_disabled,
            "redis_version_in_rdb": self.aux.get("redis-ver"),
        }


class RdbVerifier:
    """Feed an RDB's bytes in order (any chunk sizes), then `finish()`: magic and version, the AUX header,
    the final EOF opcode (0xFF) and the trailing little-endian CRC64 over everything before it."""

    HEAD_LIMIT = 1 << 20

    def __init__(self) -> None:
        self._crc = Crc64()
        self._head = bytearray()
        self._header: dict | None = None
        self._header_error: str | None = None
        self._tail = b""  # the last 9 bytes seen: EOF opcode + CRC64, kept out of the CRC until the end
        self.size = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self.size += len(data)
        if self._header is None and self._header_error is None:
            self._head += data[: self.HEAD_LIMIT - len(self._head)]
            self._try_header(final=False)
        if len(data) >= 9:
            self._crc.update(self._tail)
            self._crc.update(memoryview(data)[:-9])
            self._tail = bytes(data[-9:])
        else:
            joined = self._tail + bytes(data)
            self._crc.update(joined[:-9])
            self._tail = joined[-9:]

    def _try_header(self, *, final: bool) -> None:
        try:
            self._header = parse_rdb_header(bytes(self._head))
        except _Incomplete:
            if final or len(self._head) >= self.HEAD_LIMIT:
                self._header_error = "the RDB ends inside its header (truncated)"
        except (ValueError, IndexError) as exc:
            self._header_error = f"RDB header is malformed: {exc}"

    def finish(self) -> RdbCheck:
        check = RdbCheck(size=self.size)
        if self._header is None and self._header_error is None:
            self._try_header(final=True)
        if self._header_error:
            check.problems.append(self._header_error)
        if self._header:
            check.rdb_version = self._header["rdb_version"]
            check.aux = self._header["aux"]
        if check.rdb_version is not None and check.rdb_version < MIN_CHECKSUM_VERSION:
            check.problems.append(f"RDB version {check.rdb_version} predates checksums (needs >= 5)")
            return check
        if len(self._tail) < 9 or self.size < 18:
            check.problems.append(f"the RDB is only {self.size} bytes: truncated")
            return check
        if self._tail[0] != OP_EOF:
            check.problems.append(
                f"the RDB does not end with the EOF opcode 0xFF followed by its CRC64 (found 0x{self._tail[0]:02x}): "
                "truncated or corrupt"
            )
        expected = int.from_bytes(self._tail[1:], "little")
        self._crc.update(self._tail[:1])
        computed = self._crc.value
        check.crc64_expected = f"{expected:016x}"
        check.crc64_computed = f"{computed:016x}"
        if expected == 0:
            check.checksum_disabled = True  # the source runs with `rdbchecksum no`: Redis writes zeros
        elif expected != computed:
            check.problems.append(
                f"CRC64 mismatch: the RDB says {expected:016x}, its bytes give {computed:016x} (corrupt)"
            )
        return check


# --------------------------------------------------------------------------------- logical format

LOGICAL_MAGIC = b"cidadao-redis-logical/1"


def resp_command(*args: bytes | str | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, int):
            arg = str(arg).encode()
        elif isinstance(arg, str):
            arg = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def logical_header(meta: dict) -> bytes:
    return resp_command(b"ECHO", LOGICAL_MAGIC + b" " + json.dumps(meta, sort_keys=True).encode())


def logical_trailer(keys: dict[int, int]) -> bytes:
    body = json.dumps({"keys": {str(db): n for db, n in sorted(keys.items())}}).encode()
    return resp_command(b"ECHO", LOGICAL_MAGIC + b" end " + body)


def restore_command(key: bytes, expire_at_ms: int, payload: bytes) -> bytes:
    return resp_command(b"RESTORE", key, expire_at_ms, payload, b"REPLACE", b"ABSTTL")


def dump_payload_ok(payload: bytes) -> bool:
    """A DUMP payload ends with 2 bytes of RDB version and the CRC64 of everything before the CRC."""
    if len(payload) < 10:
        return False
    expected = int.from_bytes(payload[-8:], "little")
    return expected == 0 or crc64(memoryview(payload)[:-8]) == expected


def iter_resp_commands(f: BinaryIO) -> Iterator[list[bytes]]:
    """Commands of a RESP stream (arrays of bulk strings). Raises ValueError on malformed or cut input."""
    reader = f if isinstance(f, io.BufferedReader) else io.BufferedReader(_RawAdapter(f), 1 << 20)
    while True:
        line = reader.readline()
        if not line:
            return
        if not line.startswith(b"*") or not line.endswith(b"\r\n"):
            raise ValueError(f"expected a RESP array, found {line[:40]!r}")
        count = int(line[1:-2])
        args = []
        for _ in range(count):
            head = reader.readline()
            if not head.startswith(b"$") or not head.endswith(b"\r\n"):
                raise ValueError("stream ends inside a command (truncated)" if not head else "malformed bulk header")
            size = int(head[1:-2])
            body = reader.read(size + 2)
            if len(body) != size + 2 or not body.endswith(b"\r\n"):
                raise ValueError("stream ends inside a command (truncated)")
            args.append(body[:-2])
        yield args


class _RawAdapter(io.RawIOBase):
    def __init__(self, f: BinaryIO):
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self._f.read(len(b))
        n = len(data)
        b[:n] = data
        return n


@dataclass
class LogicalCheck:
    problems: list[str] = field(default_factory=list)
    header: dict = field(default_factory=dict)
    keys: dict[str, int] = field(default_factory=dict)
    declared: dict[str, int] | None = None
    bad_payloads: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_logical_stream(f: BinaryIO, *, verify_payloads: bool = True) -> LogicalCheck:
    """Header first, trailer last with counts equal to the RESTOREs seen per database, every payload's CRC64."""
    check = LogicalCheck()
    db = 0
    first = True
    try:
        for args in iter_resp_commands(f):
            if check.declared is not None:
                check.problems.append("commands follow the end marker")
                break
            name = args[0].upper()
            if first:
                first = False
                if name != b"ECHO" or len(args) != 2 or not args[1].startswith(LOGICAL_MAGIC + b" {"):
                    check.problems.append("does not start with the cidadao-redis-logical/1 header")
                    break
                check.header = json.loads(args[1][len(LOGICAL_MAGIC) + 1 :])
                continue
            if name == b"SELECT":
                db = int(args[1])
            elif name == b"RESTORE":
                check.keys[str(db)] = check.keys.get(str(db), 0) + 1
                if verify_payloads and not dump_payload_ok(args[3]):
                    check.bad_payloads += 1
            elif name == b"ECHO" and args[1].startswith(LOGICAL_MAGIC + b" end "):
                check.declared = json.loads(args[1][len(LOGICAL_MAGIC) + 5 :])["keys"]
            else:
                check.problems.append(f"unexpected command {name[:20]!r}")
                break
    except (ValueError, json.JSONDecodeError) as exc:
        check.problems.append(f"not a valid logical snapshot: {exc}")
    if first and not check.problems:
        check.problems.append("the logical snapshot is empty")
    elif check.declared is None and not check.problems:
        check.problems.append("the end marker is missing (truncated)")
    elif check.declared is not None and check.declared != check.keys:
        check.problems.append(f"key counts {check.keys} differ from the end marker's {check.declared}")
    if check.bad_payloads:
        check.problems.append(f"{check.bad_payloads} DUMP payloads fail their CRC64 (corrupt)")
    return check
