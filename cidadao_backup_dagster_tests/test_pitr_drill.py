"""Point-in-time recovery as an operator and the monitoring see it, on the private PostgreSQL 15 cluster of
test_pitr.py (its fixtures): restore_postgres with target_time through the real CLI, the base backup's checks
(integrity against its backup_manifest, freshness) and the monthly PITR drill."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.postgres.pitr import archive_wal, base_backup

from .test_pitr import (  # noqa: F401 - fixtures
    PG15,
    SETTINGS,
    cluster,
    ids,
    insert,
    pitr_env,
    restore_tmp,
    server_now,
    source,
)

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not (PG15 / "initdb").exists(), reason="needs the PostgreSQL 15 server binaries")


def dg_launch(job: str, config: Path, home: Path) -> subprocess.CompletedProcess:
    """`dg launch --job <job> -c <config>` in a subprocess, with a Dagster instance of its own (the environment
    is the test's: POSTGRES_PITR, DATABASE_URL, BACKUP_STORAGE_URL, ...)."""
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    cmd = [str(Path(sys.executable).with_name("dg")), "launch", "-m", "cidadao_backup_dagster.definitions"]
    cmd += ["--job", job, "-c", str(config)]
    return subprocess.run(cmd, env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True, text=True)


def test_restore_to_an_instant_from_the_cli(cluster, source, restore_tmp, pitr_env):  # noqa: F811
    """The operator's path: rows, base, more rows, T, DELETE, one WAL run, then `dg launch --job restore_postgres
    -c restore.yaml` with target_time T -> exactly T's rows in target_database; the source untouched."""
    storage = LocalStorage(restore_tmp / "backups")  # BACKUP_STORAGE_URL of pitr_env
    conn = cluster.conn(source)
    insert(cluster, source, 1, 70)
    base_backup(conn, storage, source=source, partition="2026-11-30", settings=SETTINGS)
    insert(cluster, source, 71, 90)
    instant = server_now(cluster)
    cluster.sql("DELETE FROM items", source)
    archive_wal(conn, storage, source=source, settings=SETTINGS)

    target = f"{source}_cli"
    config = restore_tmp / "restore.yaml"
    config.write_text(
        "ops:\n  restore_postgres_op:\n    config:\n"
        f"      target_time: '{instant.isoformat()}'\n      target_database: {target}\n"
    )
    try:
        out = dg_launch("restore_postgres", config, restore_tmp / "home")
        assert out.returncode == 0, out.stderr[-3000:]
        assert ids(cluster.conn(target)) == list(range(1, 91))
        assert ids(conn) == []  # the source is untouched
        assert list(pitr_env.iterdir()) == []  # the throwaway server and its files are gone
    finally:
        cluster.sql(f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")
