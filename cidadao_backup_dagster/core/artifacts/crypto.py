"""Client-side encryption in the age format (pyrage, X25519 recipients).

The backup worker holds only public keys (BACKUP_AGE_RECIPIENTS) and can encrypt but never decrypt; the
identity file (BACKUP_AGE_IDENTITY_FILE) is needed only to restore, drill or deep-verify. Artifacts decrypt
with the stock CLI: `age -d -i key.txt file.age`.

pyrage's encrypt_io/decrypt_io pull from a reader; the pipeline pushes chunks, so each stage runs pyrage in
a thread on the far side of an OS pipe: memory stays flat and the GIL is released inside pyrage.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import BinaryIO

import pyrage
from pyrage import x25519

from ..errors import BackupError, ConfigurationError


def parse_recipients(text: str, variable: str = "BACKUP_AGE_RECIPIENTS") -> list[x25519.Recipient]:
    """Comma- or whitespace-separated `age1...` public keys."""
    keys = [k for k in text.replace(",", " ").split() if k]
    recipients = []
    for key in keys:
        try:
            recipients.append(x25519.Recipient.from_str(key))
        except Exception:  # noqa: BLE001 - pyrage raises RecipientError / ValueError
            shown = key if key.startswith("age1") else key[:12] + "..."
            raise ConfigurationError(
                variable,
                f"{shown!r} is not an age X25519 public key",
                "list public keys (age1...), never the AGE-SECRET-KEY identity, separated by commas",
            ) from None
    return recipients


def load_identities(path: str, variable: str = "BACKUP_AGE_IDENTITY_FILE") -> list[x25519.Identity]:
    """Identities from an age key file (`age-keygen -o key.txt`), one AGE-SECRET-KEY-... per line."""
    if not path:
        raise ConfigurationError(
            variable, "is not set, and this artifact is encrypted", "point it at the age identity file (key.txt)"
        )
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigurationError(
            variable, f"cannot read {path} ({exc.strerror})", "check the path and permissions"
        ) from None
    identities = []
    for line in lines:
        line = line.strip()
        if line.startswith("AGE-SECRET-KEY-"):
            try:
                identities.append(x25519.Identity.from_str(line))
            except Exception:  # noqa: BLE001
                raise ConfigurationError(variable, f"{path} holds a malformed identity", "regenerate it") from None
    if not identities:
        raise ConfigurationError(variable, f"{path} holds no AGE-SECRET-KEY line", "use the file age-keygen wrote")
    return identities


def fingerprint(recipient: x25519.Recipient | str) -> str:
    """Short, stable name for a recipient in manifests (the public key itself is not secret, but long)."""
    return "age:" + hashlib.sha256(str(recipient).encode()).hexdigest()[:16]


class _ThreadedPipe:
    """Runs `work(reader)` in a thread, where `reader` yields what is written to this object."""

    def __init__(self, work, name: str):
        r, w = os.pipe()
        self._reader = os.fdopen(r, "rb")
        self._writer = os.fdopen(w, "wb")
        self._error: BaseException | None = None

        def run():
            try:
                work(self._reader)
            except BaseException as exc:  # noqa: BLE001 - surfaced by write()/close()
                self._error = exc
                self._reader.close()  # unblocks a writer stuck on a full pipe (it gets EPIPE)

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> int:
        try:
            self._writer.write(data)
        except (BrokenPipeError, ValueError):
            self._thread.join()
            raise BackupError(f"Encryption stopped: {self._error}") from None
        return len(data)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        if not self._writer.closed:
            try:
                self._writer.close()
            except BrokenPipeError:
                pass
        self._thread.join()
        if not self._reader.closed:
            self._reader.close()
        if self._error is not None:
            raise BackupError(f"Encryption failed: {self._error}") from None


def encryption_stage(recipients: list[x25519.Recipient]):
    """An EncryptionStage for core.pipeline: wraps the downstream sink in an age encryptor."""

    def stage(downstream):
        return _ThreadedPipe(lambda reader: pyrage.encrypt_io(reader, downstream, recipients), "age-encrypt")

    return stage


class DecryptingReader:
    """A readable of the plaintext of an age stream `source`; errors (wrong key, truncated or tampered
    file) are raised from read() with a message saying which."""

    def __init__(self, source: BinaryIO, identities: list[x25519.Identity]):
        r, w = os.pipe()
        self._reader = os.fdopen(r, "rb")
        self._error: BaseException | None = None

        def run():
            with os.fdopen(w, "wb") as out:
                try:
                    pyrage.decrypt_io(source, out, identities)
                except BaseException as exc:  # noqa: BLE001
                    self._error = exc

        self._thread = threading.Thread(target=run, name="age-decrypt", daemon=True)
        self._thread.start()

    def read(self, n: int = -1) -> bytes:
        data = self._reader.read(n)
        if not data:
            self._thread.join()
            if self._error is not None:
                raise decrypt_error(self._error)
        return data

    def close(self) -> None:
        self._reader.close()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def decrypt_error(exc: BaseException) -> BackupError:
    text = str(exc)
    if "no matching keys" in text.lower() or "NoMatchingKeys" in text:
        return BackupError(
            "Decryption failed: the identity in BACKUP_AGE_IDENTITY_FILE is not one of this artifact's recipients "
            "(see the manifest's encryption.recipients)"
        )
    return BackupError(f"Decryption failed: the artifact is truncated or was altered ({text})")


def is_age(header: bytes) -> bool:
    return header.startswith(b"age-encryption.org/v1")


__all__ = [
    "DecryptingReader",
    "encryption_stage",
    "fingerprint",
    "is_age",
    "load_identities",
    "parse_recipients",
    "pyrage",
]
