"""Deep verification of a stored artifact against its manifest: re-read every byte (pgBackRest's `verify`)."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field

import zstandard

from .manifest import Manifest
from .postgres import count_table_data_entries, restore_list
from .storage import MiB, Storage

CHUNK_SIZE = MiB


@dataclass
class VerifyResult:
    problems: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_pg_artifact(storage: Storage, manifest: Manifest, *, pg_bin_dir: str | None = None) -> VerifyResult:
    """Object exists; size and SHA-256 match; the zstd frame decodes to its end with a valid checksum;
    the decoded bytes match the raw SHA-256; `pg_restore --list` reads the archive's table of contents."""
    result = VerifyResult()
    key = manifest.artifact_key
    size = storage.size(key)
    if size is None:
        result.problems.append(f"object {storage.uri(key)} is missing")
        return result
    if size != manifest.stored_bytes:
        result.problems.append(f"object holds {size} bytes, the manifest says {manifest.stored_bytes}")

    stored_sha, raw_sha, raw_bytes = hashlib.sha256(), hashlib.sha256(), 0
    dobj = zstandard.ZstdDecompressor().decompressobj()
    toc_out, toc_err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    lister = restore_list(None, stdout=toc_out, stderr=toc_err, bin_dir=pg_bin_dir)
    feeding = True
    decode_error = None
    with storage.open_read(key) as f:
        while chunk := f.read(CHUNK_SIZE):
            stored_sha.update(chunk)
            if decode_error:
                continue
            try:
                raw = dobj.decompress(chunk)
            except zstandard.ZstdError as exc:
                decode_error = f"zstd stream does not decode: {exc}"
                continue
            raw_sha.update(raw)
            raw_bytes += len(raw)
            if feeding and raw:
                try:
                    lister.stdin.write(raw)  # type: ignore[union-attr]
                except BrokenPipeError:  # pg_restore --list stops reading once it has the TOC
                    feeding = False
    try:
        lister.stdin.close()  # type: ignore[union-attr]
    except BrokenPipeError:
        pass
    rc = lister.wait()
    toc_out.seek(0)
    toc = toc_out.read().decode(errors="replace")
    toc_out.close()
    toc_err.seek(0)
    err = toc_err.read().decode(errors="replace").strip()
    toc_err.close()

    if stored_sha.hexdigest() != manifest.stored_sha256:
        result.problems.append("SHA-256 of the stored object does not match the manifest")
    if decode_error:
        result.problems.append(decode_error)
    elif not dobj.eof:
        result.problems.append("zstd stream ends before its frame is complete (truncated object)")
    elif raw_sha.hexdigest() != manifest.raw_sha256 or raw_bytes != manifest.raw_bytes:
        result.problems.append("decoded archive does not match the manifest's raw size/SHA-256")
    table_data = count_table_data_entries(toc)
    if rc != 0:
        result.problems.append(f"pg_restore --list cannot read the archive: {err or f'exit code {rc}'}")
    elif table_data < len(manifest.tables):
        result.problems.append(
            f"archive lists {table_data} TABLE DATA entries, the manifest counted {len(manifest.tables)} tables"
        )
    result.details = {"stored_bytes_read": size, "raw_bytes_decoded": raw_bytes, "toc_table_data_entries": table_data}
    return result
