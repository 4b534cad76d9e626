"""What a deep verification of a stored artifact found (PostgreSQL and Redis alike)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .manifest import Manifest
from .storage import Storage


@dataclass
class VerifyResult:
    problems: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_stored_size(storage: Storage, manifest: Manifest, problems: list[str], *, grouped: bool = False) -> bool:
    """Compare the stored object's size with the manifest's, adding any problem to `problems`. False when the
    object is missing (there is nothing more to read). `grouped` writes sizes with thousands separators."""
    key = manifest.artifact_key
    size = storage.size(key)
    if size is None:
        problems.append(f"object {storage.uri(key)} is missing")
        return False
    if size != manifest.stored_bytes:
        spec = "," if grouped else ""
        problems.append(f"object holds {size:{spec}} bytes, the manifest says {manifest.stored_bytes:{spec}}")
    return True
