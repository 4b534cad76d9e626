"""Fetch what a recovery replays, verified: the base (each member of an incremental chain checked with
`pg_verifybackup`, then combined by `pg_combinebackup`) and the WAL files, every byte against its manifest."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ...artifacts.manifest import Manifest
from ...artifacts.reader import read_artifact
from ...artifacts.storage import Storage
from ...errors import BackupError
from .server import Logger, exact_client

_C_LOCALE = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}


def extract_base(storage: Storage, plan, data: Path, identities, say: Logger) -> None:
    """The base into `data`, verified; a chain's members each extracted and verified, then combined."""
    members, verifier = plan.members, str(Path(plan.bin_dir, "pg_verifybackup"))
    if len(members) == 1:
        extract_member(storage, members[0], data, identities, verifier)
        return
    folders = []
    for i, member in enumerate(members):
        folders.append(data.parent / "chain" / f"{i:03d}")
        folders[-1].parent.mkdir(mode=0o700, exist_ok=True)
        extract_member(storage, member, folders[-1], identities, verifier)
    combine = exact_client("pg_combinebackup", plan.server_major, plan.bin_dir)
    proc = subprocess.run(
        [str(combine), "-o", str(data), *map(str, folders)], capture_output=True, text=True, env=_C_LOCALE
    )
    if proc.returncode != 0:
        raise BackupError(
            f"pg_combinebackup could not combine the chain of base {plan.base.partition}: {proc.stderr.strip()[-800:]}"
        )
    shutil.rmtree(folders[0].parent)
    data.chmod(0o700)
    say(
        f"pg_combinebackup combined {len(members)} backups: full {members[0].artifact_key} and "
        f"{len(members) - 1} incremental(s) up to {plan.base.artifact_key}"
    )


def extract_member(storage: Storage, member: Manifest, data: Path, identities, verifier: str) -> None:
    """One base backup (a chain member) streamed into the new folder `data`, every byte against its manifest's
    SHA-256s, then every file against its backup_manifest by `verifier` (pg_verifybackup): a BackupError names
    the member otherwise."""
    data.mkdir(mode=0o700)
    tar = subprocess.Popen(["tar", "-x", "-f", "-", "-C", str(data)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        outcome = read_artifact(storage, member, tar.stdin.write, identities=identities)  # type: ignore[union-attr]
    finally:
        tar.stdin.close()  # type: ignore[union-attr]
        err = tar.stderr.read().decode(errors="replace")  # type: ignore[union-attr]
        rc = tar.wait()
    problems = outcome.problems(member)
    if problems:
        raise BackupError(f"{storage.uri(member.artifact_key)}: {'; '.join(problems)}. Refusing to recover from it")
    if rc != 0:
        raise BackupError(f"tar could not extract base {member.partition}: {err.strip()[-500:]}")
    verify = subprocess.run(
        [verifier, "--no-parse-wal", "--quiet", str(data)],
        capture_output=True,
        text=True,
    )
    if verify.returncode != 0:
        raise BackupError(
            f"pg_verifybackup rejects base {member.partition} ({member.artifact_key}; checksums against its "
            f"backup_manifest): {verify.stderr.strip()[-800:]}"
        )


def fetch_wal(storage: Storage, plan, wal_dir: Path, identities) -> None:
    wal_dir.mkdir(mode=0o700)
    for wal in plan.wal:
        target = wal_dir / wal.info["file"]  # a partial under its segment's name: recovery reads up to its zeros
        with open(target, "wb") as out:
            outcome = read_artifact(storage, wal.manifest, out.write, identities=identities)
        problems = outcome.problems(wal.manifest)
        if problems:
            raise BackupError(f"{storage.uri(wal.manifest.artifact_key)}: {'; '.join(problems)}. Refusing to replay it")
