"""The streaming pipeline on its own: hashes, a single checksummed zstd frame, progress during stalls."""

import hashlib
import io
import threading

import zstandard

from cidadao_backup_dagster.core.artifacts import pipeline
from cidadao_backup_dagster.core.artifacts.pipeline import stream_to_writer
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage


class StallingSource(io.RawIOBase):
    """Gives one chunk, then blocks (like pg_dump waiting on a lock) until `release` is set."""

    def __init__(self, first: bytes, release: threading.Event):
        self.first, self.release, self.served = first, release, False

    def readable(self):
        return True

    def read(self, n=-1):
        if not self.served:
            self.served = True
            return self.first
        assert self.release.wait(60), "no progress report arrived while the source was stalled"
        return b""


def test_progress_is_reported_while_the_source_is_stalled(tmp_path):
    release = threading.Event()
    reports = []

    def on_progress(p):
        reports.append(p)
        if len(reports) >= 2:
            release.set()  # the source unblocks only once the watchdog has spoken twice

    storage = LocalStorage(tmp_path)
    writer = storage.open_write("x.zst")
    stream_to_writer(StallingSource(b"a" * 1000, release), writer, on_progress=on_progress, progress_every=1)
    writer.commit()
    assert len(reports) >= 2 and reports[-1].raw_bytes == 1000


def test_hashes_and_single_checksummed_frame(tmp_path):
    payload = hashlib.sha256(b"seed").digest() * 200_000  # 6.4 MB
    storage = LocalStorage(tmp_path)
    writer = storage.open_write("y.zst")
    stats = stream_to_writer(io.BytesIO(payload), writer, level=3)
    writer.commit()
    stored = (tmp_path / "y.zst").read_bytes()
    assert stats.raw_bytes == len(payload) and stats.raw_sha256 == hashlib.sha256(payload).hexdigest()
    assert stats.stored_bytes == len(stored) and stats.stored_sha256 == hashlib.sha256(stored).hexdigest()
    params = zstandard.get_frame_parameters(stored)
    assert params.has_checksum
    dobj = zstandard.ZstdDecompressor().decompressobj()
    assert dobj.decompress(stored) == payload and dobj.eof and not dobj.unused_data


def test_bounded_zstd_jobs_and_workers_still_write_one_checksummed_frame(tmp_path):
    """2 MiB jobs (a bounded memory) over many jobs, and at most ZSTD_MAX_WORKERS workers for threads=-1: the
    stored object is still one frame that decodes to the input, whatever the level."""
    payload = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() * 4 for i in range(70_000))  # ~9 MB, 4+ jobs
    for level, threads in ((3, -1), (3, 2), (3, 0), (9, -1)):
        assert pipeline.compressor(level, threads)  # builds with a job size or zstd's own
        storage = LocalStorage(tmp_path / f"l{level}t{threads}")
        writer = storage.open_write("z.zst")
        stats = stream_to_writer(io.BytesIO(payload), writer, level=level, threads=threads)
        writer.commit()
        stored = (tmp_path / f"l{level}t{threads}" / "z.zst").read_bytes()
        assert stats.raw_sha256 == hashlib.sha256(payload).hexdigest()
        assert zstandard.get_frame_parameters(stored).has_checksum
        dobj = zstandard.ZstdDecompressor().decompressobj()
        assert dobj.decompress(stored) == payload and dobj.eof and not dobj.unused_data
