"""Reading a stored artifact back: the one loop that verification, restores and drills share.

stored bytes -> SHA-256 (stored) -> [age decryption] -> zstd -> SHA-256 (raw) -> sink

Content problems (truncation, tampering, a wrong key) never raise here: they come back in the outcome, so
each caller decides how to word its refusal, and the stored SHA-256 is always computed to the end.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import zstandard

from ..errors import BackupError
from .crypto import DecryptingReader
from .manifest import Manifest
from .storage import MiB, Storage


class HashingReader:
    def __init__(self, source):
        self.source, self.sha, self.count = source, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.sha.update(data)
        self.count += len(data)
        return data


@dataclass
class ReadOutcome:
    stored_sha256: str
    stored_bytes: int
    raw_sha256: str | None  # None when the content could not be (or was not) decoded
    raw_bytes: int
    complete: bool  # the zstd frame ended properly
    error: str | None = None
    shallow: bool = False  # encrypted and no identity: only the stored bytes were checked

    def problems(self, manifest: Manifest) -> list[str]:
        out = []
        if self.stored_sha256 != manifest.stored_sha256:
            out.append("SHA-256 of the stored object does not match the manifest")
        if self.error:
            out.append(self.error)
        elif not self.shallow:
            if not self.complete:
                out.append("zstd stream ends before its frame is complete (truncated object)")
            elif self.raw_sha256 != manifest.raw_sha256 or self.raw_bytes != manifest.raw_bytes:
                out.append("decoded content does not match the manifest's raw size/SHA-256")
        return out


def is_encrypted(manifest: Manifest) -> bool:
    return manifest.encrypted


def drain(reader) -> None:
    while reader.read(MiB):
        pass


def read_stored_only(storage: Storage, manifest: Manifest) -> ReadOutcome:
    """Only the stored bytes' size and SHA-256 (`shallow`): what can be checked of an encrypted artifact
    without an identity to decrypt it with."""
    with storage.open_read(manifest.artifact_key) as src:
        hashing = HashingReader(src)
        drain(hashing)
    return ReadOutcome(hashing.sha.hexdigest(), hashing.count, None, 0, False, shallow=True)


def read_artifact(
    storage: Storage,
    manifest: Manifest,
    sink: Callable[[bytes], None] | None = None,
    *,
    identities: list | None = None,
) -> ReadOutcome:
    """Stream the artifact once; `sink` receives the plaintext (decompressed) bytes."""
    encrypted = manifest.encrypted
    dobj = zstandard.ZstdDecompressor().decompressobj()
    raw_sha, raw_bytes, error = hashlib.sha256(), 0, None
    if encrypted and not identities:
        return read_stored_only(storage, manifest)
    with storage.open_read(manifest.artifact_key) as src:
        hashing = HashingReader(src)
        compressed = DecryptingReader(hashing, identities) if encrypted else hashing
        try:
            while chunk := compressed.read(MiB):
                if error:
                    continue
                try:
                    raw = dobj.decompress(chunk)
                except zstandard.ZstdError as exc:
                    error = f"zstd stream does not decode: {exc}"
                    continue
                raw_sha.update(raw)
                raw_bytes += len(raw)
                if sink is not None and raw:
                    sink(raw)
        except BackupError as exc:  # decryption: wrong key, truncated or altered
            error = str(exc)
        finally:
            if encrypted:
                compressed.close()
        drain(hashing)  # finish the stored SHA-256 whatever happened above
    return ReadOutcome(hashing.sha.hexdigest(), hashing.count, raw_sha.hexdigest(), raw_bytes, dobj.eof, error)
