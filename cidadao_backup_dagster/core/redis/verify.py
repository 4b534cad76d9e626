"""Deep verification of a stored Redis snapshot against its manifest: re-read every byte, then check the RDB
(magic, version, EOF, CRC64, `redis-check-rdb`) or the logical stream (header, counts, every payload's CRC64)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable

from ..artifacts.manifest import Manifest
from ..artifacts.reader import read_artifact
from ..artifacts.storage import MiB, Storage
from ..artifacts.verify_result import VerifyResult, check_stored_size
from ..errors import BackupError
from .messages import without_bytes
from .rdb import RdbVerifier, check_logical_stream
from .server import max_rdb_version, redis_binary, server_version
from .snapshots import snapshot_format


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
    if not check_stored_size(storage, manifest, result.problems):
        return result
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
        rdb_version = manifest.redis.rdb_version or 0
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
