"""Deep verification of a stored artifact against its manifest: re-read every byte (pgBackRest's `verify`)."""

from __future__ import annotations

import tempfile

from ..artifacts.manifest import Manifest
from ..artifacts.reader import read_artifact
from ..artifacts.storage import Storage
from ..artifacts.verify_result import VerifyResult, check_stored_size
from .client import BinDir, count_table_data_entries, restore_client, restore_list


def verify_pg_artifact(
    storage: Storage, manifest: Manifest, *, pg_bin_dir: BinDir = None, identities: list | None = None
) -> VerifyResult:
    """Object exists; size and SHA-256 match; (decrypted with `identities` when encrypted) the zstd frame
    decodes to its end with a valid checksum; the decoded bytes match the raw SHA-256; `pg_restore --list`
    reads the archive's table of contents. Encrypted without an identity: the stored bytes only."""
    result = VerifyResult()
    if not check_stored_size(storage, manifest, result.problems):
        return result

    toc_out, toc_err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pg_restore = restore_client(manifest, pg_bin_dir)  # an older one would call a sound archive unreadable
    lister = restore_list(None, stdout=toc_out, stderr=toc_err, bin_dir=pg_restore.bin_dir)
    feeding = True

    def feed(raw: bytes) -> None:
        nonlocal feeding
        if feeding:
            try:
                lister.stdin.write(raw)  # type: ignore[union-attr]
            except BrokenPipeError:  # pg_restore --list stops reading once it has the TOC
                feeding = False

    try:
        outcome = read_artifact(storage, manifest, feed, identities=identities)
    finally:
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

    result.problems.extend(outcome.problems(manifest))
    result.details = {"stored_bytes_read": outcome.stored_bytes, "raw_bytes_decoded": outcome.raw_bytes}
    if outcome.shallow:
        result.details["deep_verification"] = "skipped: encrypted, and BACKUP_AGE_IDENTITY_FILE is not set"
        return result
    table_data = count_table_data_entries(toc)
    result.details["toc_table_data_entries"] = table_data
    if rc != 0:
        result.problems.append(f"pg_restore --list cannot read the archive: {err or f'exit code {rc}'}")
    elif table_data < len(manifest.tables):
        result.problems.append(
            f"archive lists {table_data} TABLE DATA entries, the manifest counted {len(manifest.tables)} tables"
        )
    return result
