"""The streaming pipeline: producer -> SHA-256 (raw) -> zstd | gzip -> [encryption] -> SHA-256 (stored) -> storage.

Bytes flow through in 1 MiB chunks; nothing holds a whole dump in memory or on local disk.
The caller decides whether the upload is committed (only after the producer exited cleanly).
zstd (multi-threaded, checksummed) is for backups; gzip is for the human-facing exports that pandas,
`zcat`, `jq` and spreadsheets open directly.
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol

import zstandard

from .storage import MiB, ObjectWriter

CHUNK = MiB
# zstd's own job size at level 3 is 8 MiB and two workers then hold ~90 MB of buffers; 2 MiB jobs hold ~15 MB
# for ~5 % more CPU (bench/profile_backup_memory.py); the frame and its checksum are the same. Only up to
# level 7, where jobs overlap by 1/8 of a window of at most 2 MiB; higher levels keep zstd's job sizes.
ZSTD_JOB_SIZE = 2 * MiB
ZSTD_SMALL_JOB_MAX_LEVEL = 7
# threads=-1 starts at most this many workers up to that level: pg_dump and a Redis SYNC are one stream each
# (a few hundred MB/s at most), which two level-3 workers keep up with; every further worker only adds buffers.
# A higher level is slow enough per core to use them all.
ZSTD_MAX_WORKERS = 2
Codec = Literal["zstd", "gzip"]
DEFAULT_LEVELS: dict[str, int] = {"zstd": 3, "gzip": 6}


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


# An encryption stage (age, see crypto.py) wraps the downstream sink and returns a writable whose close()
# flushes its final block; it slots in between compression and the stored-bytes hash.
EncryptionStage = Callable[[Writable], Writable]


@dataclass(frozen=True)
class StreamStats:
    raw_bytes: int
    raw_sha256: str
    stored_bytes: int
    stored_sha256: str
    seconds: float
    raw_lines: int | None = None  # newlines in the raw stream, when asked for (count_lines=True)


@dataclass(frozen=True)
class Progress:
    raw_bytes: int
    stored_bytes: int
    elapsed: float

    @property
    def mb_per_s(self) -> float:
        return self.raw_bytes / MiB / self.elapsed if self.elapsed else 0.0


class _HashingSink:
    """Hashes and counts exactly the bytes handed to storage."""

    def __init__(self, writer: ObjectWriter):
        self.writer = writer
        self.sha = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.count += len(data)
        self.writer.write(data)
        return len(data)

    def flush(self) -> None:  # zstandard's stream_writer calls flush() on its target
        pass


class _Reporter:
    """Calls `on_progress` at least every `every` seconds: from the copy loop while bytes flow, and from a
    watchdog thread while they do not (a dump stuck behind a lock must still show up in the run log)."""

    def __init__(self, on_progress, every: float, started: float, counters: Callable[[], tuple[int, int]]):
        self._on_progress, self._every, self._started, self._counters = on_progress, every, started, counters
        self._last = started
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = None
        if on_progress and every >= 1:
            self._thread = threading.Thread(target=self._watch, name="progress-watchdog", daemon=True)
            self._thread.start()

    def maybe(self) -> None:
        if self._on_progress and time.monotonic() - self._last >= self._every:
            self._emit()

    def _emit(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._every:
                return
            self._last = now
            raw, stored = self._counters()
            self._on_progress(Progress(raw, stored, now - self._started))

    def _watch(self) -> None:
        while not self._stopped.wait(self._every / 4):
            self._emit()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()


def compressor(level: int = 3, threads: int = -1, job_size: int = ZSTD_JOB_SIZE) -> zstandard.ZstdCompressor:
    """threads=-1: one zstd worker per core (at most ZSTD_MAX_WORKERS up to level 7); 0: compress in the calling
    thread. write_checksum so `zstd -t` and readers catch corruption. `job_size` (bytes; 0 = zstd's default)
    bounds the workers' buffers (see ZSTD_JOB_SIZE)."""
    if level > ZSTD_SMALL_JOB_MAX_LEVEL:
        return zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    if threads < 0:
        threads = min(os.cpu_count() or 1, ZSTD_MAX_WORKERS)
    if threads == 0 or not job_size:
        return zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    params = zstandard.ZstdCompressionParameters.from_level(level, threads=threads, job_size=job_size, write_checksum=1)
    return zstandard.ZstdCompressor(compression_params=params)


class GzipStreamWriter:
    """A streaming gzip member (RFC 1952) over `downstream`: deflate with a gzip header and the CRC-32 +
    size trailer, so `gzip -t`, `zcat` and pandas read it. The header carries no name and a zero mtime.

    `threads=1`: one zlib stream, as `gzip` writes it.
    `threads>1`: pigz's scheme, still ONE gzip member: blocks of about 1 MiB are deflated on a thread pool (zlib
    releases the GIL), each primed with the previous block's last 32 KiB as dictionary so the ratio stays
    that of a single stream, ended with a sync flush (the last one with finish), and concatenated in order;
    the CRC-32 is computed here over the input. At most `2 * threads` blocks are in flight.
    """

    BLOCK = MiB
    WINDOW = 32 * 1024

    def __init__(self, downstream: Writable, level: int = 6, threads: int = 1):
        if not 0 <= level <= 9:
            raise ValueError(f"gzip level must be 0..9, got {level}")
        self._downstream = downstream
        self._level = level
        self._threads = max(1, threads)
        if self._threads == 1:
            self._deflate = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9)
            return
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="gzip-block")
        self._pending: deque[Future] = deque()
        self._buf = bytearray()
        self._window = b""
        self._crc = 0
        self._size = 0
        # What zlib itself writes for wbits=31: no flags, mtime 0, XFL from the level, OS 3 (Unix).
        xfl = 2 if level == 9 else 4 if level == 1 else 0
        downstream.write(struct.pack("<BBBBIBB", 0x1F, 0x8B, 8, 0, 0, xfl, 3))

    def write(self, data: bytes) -> int:
        if self._threads == 1:
            out = self._deflate.compress(data)
            if out:
                self._downstream.write(out)
            return len(data)
        if not self._buf and len(data) >= self.BLOCK // 2:  # a chunk from the pipeline: a block as it is
            self._submit(bytes(data), final=False)
            return len(data)
        self._buf += data
        if len(self._buf) >= self.BLOCK:
            block = bytes(self._buf)
            self._buf.clear()
            self._submit(block, final=False)
        return len(data)

    def _submit(self, block: bytes, *, final: bool) -> None:
        self._crc = zlib.crc32(block, self._crc)
        self._size += len(block)
        self._pending.append(self._pool.submit(_deflate_block, block, self._window, self._level, final))
        self._window = block[-self.WINDOW :] if len(block) >= self.WINDOW else (self._window + block)[-self.WINDOW :]
        while len(self._pending) > 2 * self._threads:
            self._downstream.write(self._pending.popleft().result())

    def close(self) -> None:
        if self._threads == 1:
            self._downstream.write(self._deflate.flush(zlib.Z_FINISH))
            return
        try:
            self._submit(bytes(self._buf), final=True)
            self._buf.clear()
            while self._pending:
                self._downstream.write(self._pending.popleft().result())
            self._downstream.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Stop the workers without writing anything more (after a failure upstream or downstream)."""
        if self._threads > 1:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _deflate_block(block: bytes, window: bytes, level: int, final: bool) -> bytes:
    """Raw deflate of one block that may refer back into `window` (the input just before it); ends
    byte-aligned without the final bit (sync flush), or with it for the last block."""
    if window:
        deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY, window)
    else:
        deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
    return deflate.compress(block) + deflate.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


def _chunks(read: Callable[[int], bytes]) -> Iterator[bytes]:
    while chunk := read(CHUNK):
        yield chunk


def read_ahead_chunks(
    read: Callable[[int], bytes], depth: int, size: int = CHUNK, name: str = "pipeline-read-ahead"
) -> Iterator[bytes]:
    """Chunks of `read(size)`, fetched by a helper thread up to `depth` chunks ahead: while this thread hashes
    and compresses one chunk (zlib, zstd and hashlib release the GIL), the next one is already being received.
    Memory stays bounded at `depth + 2` chunks. A read error is raised here, in the consuming thread, as it
    was raised. Close the iterator when stopping early (`finally: chunks.close()`): that stops the helper
    after its current read and waits for it, so nothing reads the source once the caller moves on."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def pump() -> None:
        try:
            while not stop.is_set():
                chunk = read(size)
                items.put(chunk)
                if not chunk:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            items.put(exc)

    thread = threading.Thread(target=pump, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                return
            yield item
    finally:
        # On an early exit (a failed write), let the pump finish its current read and stop; it may be
        # blocked on a full queue, so keep draining until it is gone.
        stop.set()
        while thread.is_alive():
            try:
                items.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


def stream_to_writer(
    source: BinaryIO,
    writer: ObjectWriter,
    *,
    level: int | None = None,
    threads: int = -1,
    encryption: EncryptionStage | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every: float = 10.0,
    codec: Codec = "zstd",
    count_lines: bool = False,
    read_ahead: int = 0,
    job_size: int = ZSTD_JOB_SIZE,
) -> StreamStats:
    """Compress `source` into `writer` (not committed). Raises whatever the source or writer raise.

    `codec="zstd"` (default): one checksummed zstd frame, `threads` workers, `level` default 3, `job_size`
    bytes per zstd job (see ZSTD_JOB_SIZE).
    `codec="gzip"`: one gzip member, `level` default 6, `threads` deflate workers (-1: one per core).
    `count_lines=True` also counts newline bytes of the raw stream (`StreamStats.raw_lines`).
    `read_ahead=N` reads the source on a helper thread, up to N chunks ahead of compression (for sources
    that cost CPU in this process, like a psycopg COPY); 0 reads inline, as before.
    """
    if codec not in DEFAULT_LEVELS:
        raise ValueError(f"unknown codec {codec!r}; use one of {sorted(DEFAULT_LEVELS)}")
    level = DEFAULT_LEVELS[codec] if level is None else level
    started = time.monotonic()
    sink = _HashingSink(writer)
    downstream: Writable = encryption(sink) if encryption else sink
    if codec == "zstd":
        cwriter = compressor(level, threads, job_size).stream_writer(downstream, closefd=False, write_return_read=True)
    else:
        cwriter = GzipStreamWriter(downstream, level, threads=(os.cpu_count() or 1) if threads < 0 else threads)
    raw_sha = hashlib.sha256()
    raw_bytes = 0
    lines = 0
    chunks = read_ahead_chunks(source.read, read_ahead) if read_ahead > 0 else _chunks(source.read)
    report = _Reporter(on_progress, progress_every, started, lambda: (raw_bytes, sink.count))
    try:
        for chunk in chunks:
            raw_sha.update(chunk)
            raw_bytes += len(chunk)
            if count_lines:
                lines += chunk.count(b"\n")
            cwriter.write(chunk)
            report.maybe()
    except BaseException:
        if isinstance(cwriter, GzipStreamWriter):
            cwriter.abort()  # its worker threads; the caller aborts the upload
        raise
    finally:
        report.stop()
        chunks.close()
    # close() ends the frame; an explicit flush(FLUSH_FRAME) before it made close() append a second,
    # empty frame, which verify's single-frame decompressobj rejects when it lands in a later read chunk.
    cwriter.close()
    if encryption:
        downstream.close()  # type: ignore[attr-defined]
    return StreamStats(
        raw_bytes,
        raw_sha.hexdigest(),
        sink.count,
        sink.sha.hexdigest(),
        time.monotonic() - started,
        lines if count_lines else None,
    )


@dataclass(frozen=True)
class ZstdSettings:
    """How a backup (PostgreSQL dump, Redis snapshot) is compressed and how often it reports progress: the
    settings every zstd backup shares, and the one way it streams with them."""

    zstd_level: int = 3
    zstd_threads: int = -1
    progress_every: float = 10.0
    zstd_job_mb: int = ZSTD_JOB_SIZE // MiB  # see ZSTD_JOB_SIZE; 0: zstd's default

    @property
    def compression(self) -> dict:
        """The manifest's `artifact.compression`."""
        return {"codec": "zstd", "level": self.zstd_level, "checksum": True}

    def stream(
        self,
        source: BinaryIO,
        writer: ObjectWriter,
        encryption: EncryptionStage | None,
        on_progress: Callable[[Progress], None] | None,
    ) -> StreamStats:
        return stream_to_writer(
            source,
            writer,
            level=self.zstd_level,
            threads=self.zstd_threads,
            encryption=encryption,
            on_progress=on_progress,
            progress_every=self.progress_every,
            job_size=self.zstd_job_mb * MiB,
        )
