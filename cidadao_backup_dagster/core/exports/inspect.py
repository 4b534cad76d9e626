"""Reading a stored export back: every byte re-read, the gzip stream to its end, lines counted and records
parsed (JSON Lines line by line, CSV as CSV) against the manifest."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from ..artifacts.crypto import DecryptingReader
from ..artifacts.manifest import Manifest
from ..artifacts.reader import HashingReader, drain, read_stored_only
from ..artifacts.storage import MiB, Storage
from ..artifacts.verify_result import check_stored_size
from ..errors import BackupError


@dataclass
class ExportInspection:
    """What re-reading a stored export found. `problems` empty = it matches its manifest."""

    problems: list[str] = field(default_factory=list)
    stored_bytes: int = 0
    raw_bytes: int = 0
    lines: int = 0
    records: int | None = None  # None when the content could not be decoded to its end
    header: list[str] | None = None  # CSV only
    shallow: bool = False  # encrypted and no identity given: only the stored bytes were checked

    @property
    def ok(self) -> bool:
        return not self.problems


class _InflatingReader(io.RawIOBase):
    """Reads a stored gzip object (age-decrypting it first when given identities), hashing the stored and
    the inflated bytes on the way. zlib checks the gzip trailer (CRC-32 and length) at the member's end."""

    def __init__(self, f: Any, identities: list | None = None):
        self.stored = HashingReader(f)  # SHA-256 and size of the stored bytes
        self._decrypt = DecryptingReader(self.stored, identities) if identities else None
        self._compressed = self._decrypt or self.stored
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.raw_sha = hashlib.sha256()
        self.raw_bytes = 0
        self._pending = b""
        self.error: str | None = None
        self.trailing = False
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while not self._pending and not self._eof:
            try:
                chunk = self._compressed.read(MiB)
            except BackupError as exc:  # decryption: wrong key, truncated or altered
                self.error, self._eof = str(exc), True
                return
            if not chunk:
                self._eof = True
                if self.error is None:
                    self._take(self._inflate.flush())
                return
            if self.error is not None:
                continue
            if self._inflate.eof:
                self.trailing = True
                continue
            try:
                self._take(self._inflate.decompress(chunk))
            except zlib.error as exc:
                self.error = f"gzip stream does not decode: {exc}"
            if self._inflate.eof and self._inflate.unused_data:
                self.trailing = True

    def _take(self, data: bytes) -> None:
        if data:
            self.raw_sha.update(data)
            self.raw_bytes += len(data)
            self._pending = data

    def readinto(self, b: Any) -> int:
        self._fill()
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def drain(self) -> None:
        """Hash the rest of the stored object (after a reader stopped early, e.g. on a decode error)."""
        if self._decrypt is not None:
            self._decrypt.close()
        drain(self.stored)

    @property
    def complete(self) -> bool:
        return self.error is None and self._inflate.eof


def inspect_export(
    storage: Storage, manifest: Manifest, *, parse: bool = True, identities: list | None = None
) -> ExportInspection:
    """Re-read every byte of an export: size and SHA-256 of the object, the gzip stream to its end (CRC),
    the inflated bytes' size and SHA-256, the line count, and the records: JSON Lines parse line by line
    into objects with the manifest's columns (`parse=False` only counts lines); CSV parses as CSV with
    the manifest's header. An age-encrypted export is decrypted with `identities`; without them only its
    stored size and SHA-256 are checked (`shallow`)."""
    result = ExportInspection()
    key = manifest.artifact_key
    if not check_stored_size(storage, manifest, result.problems, grouped=True):
        return result
    art = manifest.artifact
    columns = [c.name for c in manifest.export.columns]
    is_csv = manifest.kind.endswith("csv") or ".csv.gz" in key
    encrypted = manifest.encrypted
    if encrypted and not identities:
        stored = read_stored_only(storage, manifest)
        result.stored_bytes, result.shallow = stored.stored_bytes, True
        result.problems += stored.problems(manifest)
        return result
    with storage.open_read(key) as f:
        raw = _InflatingReader(f, identities if encrypted else None)
        counter = _NewlineCounter(raw)
        try:
            if is_csv:
                records, result.header, problem = _read_csv(counter, columns)
            else:
                records, problem = _read_jsonl(counter, columns, parse)
        except UnicodeDecodeError as exc:
            records, problem = None, f"content is not UTF-8 ({exc.reason} at byte {exc.start})"
        raw.drain()
    result.stored_bytes, result.raw_bytes = raw.stored.count, raw.raw_bytes
    if raw.stored.sha.hexdigest() != manifest.stored_sha256:
        result.problems.append("SHA-256 of the stored object does not match the manifest")
    if raw.error:
        result.problems.append(raw.error)
    elif not raw.complete:
        result.problems.append("gzip stream ends before its end-of-member trailer (truncated object)")
    elif raw.trailing:
        result.problems.append("data follows the gzip member (the export is written as one member)")
    elif raw.raw_sha.hexdigest() != art.raw_sha256 or raw.raw_bytes != art.raw_bytes:
        result.problems.append("inflated content does not match the manifest's raw size/SHA-256")
    if raw.error or not raw.complete:
        return result
    result.lines = counter.lines
    if art.lines is not None and result.lines != art.lines:
        result.problems.append(f"{result.lines:,} lines, the manifest says {art.lines:,}")
    if problem:
        result.problems.append(problem)
        return result
    result.records = records
    stated = manifest.data.get("contents", {}).get("records")  # absent: unknown (the typed `records` reads 0)
    if stated is not None and records != stated:
        result.problems.append(f"{records:,} records, the manifest says {stated:,}")
    return result


class _NewlineCounter(io.RawIOBase):
    """Counts newline bytes of whatever passes through (JSON Lines: one per record; CSV: also those
    inside quoted fields, which is why CSV records are counted by parsing)."""

    def __init__(self, inner: io.RawIOBase):
        self._inner = inner
        self.lines = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._inner.readinto(b)
        if n:
            self.lines += memoryview(b)[:n].tobytes().count(b"\n")
        return n


def _read_jsonl(source: io.RawIOBase, columns: list[str], parse: bool) -> tuple[int | None, str | None]:
    expected = set(columns)
    records = 0
    problem = None
    carry = b""
    reader = io.BufferedReader(source, MiB)
    while chunk := reader.read(MiB):
        parts = (carry + chunk).split(b"\n")
        carry = parts.pop()
        records += len(parts)
        if parse and problem is None:
            for offset, line in enumerate(parts):
                problem = _check_json_line(line, records - len(parts) + offset + 1, expected)
                if problem:
                    break
    if carry:  # row_to_json output ends every row with a newline: a tail without one was cut off
        problem = problem or f"line {records + 1} does not end with a newline (truncated record)"
    return (None if problem else records), problem


def _check_json_line(line: bytes, number: int, expected: set[str]) -> str | None:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return f"line {number} is not JSON ({exc})"
    if not isinstance(obj, dict):
        return f"line {number} is a JSON {type(obj).__name__}, not an object"
    if expected and set(obj) != expected:
        diff = sorted(set(obj) ^ expected)
        return f"line {number} has keys that differ from the manifest's columns: {', '.join(diff)}"
    return None


def _read_csv(source: io.RawIOBase, columns: list[str]) -> tuple[int | None, list[str] | None, str | None]:
    text = io.TextIOWrapper(io.BufferedReader(source, MiB), encoding="utf-8", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader, None)
        if header is None:
            return None, None, "the CSV is empty: no header row"
        records = sum(1 for _ in reader)
    except csv.Error as exc:
        return None, None, f"not valid CSV (line {reader.line_num}): {exc}"
    if columns and header != columns:
        return None, header, f"CSV header {header} differs from the manifest's columns {columns}"
    return records, header, None
