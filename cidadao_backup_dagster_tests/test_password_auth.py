"""Real password authentication. The machine's server trusts every local connection, so these tests start
a throwaway PostgreSQL cluster of their own with scram-sha-256 auth: the right password must reach
pg_dump (through PGPASSWORD, never argv), and a wrong one must fail clearly without being echoed."""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

import psycopg
import pytest

from cidadao_backup_dagster.core.artifacts.manifest import list_partitions
from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
from cidadao_backup_dagster.core.errors import BackupError
from cidadao_backup_dagster.core.postgres.backup import backup_postgres
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.core.postgres.verify import verify_pg_artifact

from .conftest import free_port

PASSWORD = "correct-horse-battery-staple"
WRONG = "Tr0ub4dor&3-wrong"


def _bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        pytest.fail("initdb not found under /usr/lib/postgresql/*/bin: install the postgresql server package")
    return os.path.dirname(found[-1])


@pytest.fixture(scope="module")
def scram_server():
    """A private cluster on a free port, owned by the `postgres` OS user (initdb refuses to run as root)."""
    bindir = _bindir()
    pg_user = pwd.getpwnam("postgres")
    root = tempfile.mkdtemp(prefix="cbd-scram-")
    os.chown(root, pg_user.pw_uid, pg_user.pw_gid)
    pwfile = os.path.join(root, "pw")
    with open(pwfile, "w") as f:
        f.write(PASSWORD)
    os.chown(pwfile, pg_user.pw_uid, pg_user.pw_gid)
    data, port = os.path.join(root, "data"), free_port()

    def as_postgres(*cmd):
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True, check=True)

    as_postgres(f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={pwfile}")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    as_postgres(f"{bindir}/pg_ctl", "-D", data, "-o", opts, "-l", os.path.join(root, "log"), "-w", "start")
    try:
        yield f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        as_postgres(f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_right_password_reaches_pg_dump(scram_server, tmp_path):
    with psycopg.connect(scram_server, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS secrets_kept (id int)")
        conn.execute("INSERT INTO secrets_kept SELECT generate_series(1, 10)")
    storage = LocalStorage(tmp_path)
    manifest = backup_postgres(
        PgConnection.from_url(scram_server), storage, series="postgres/postgres/daily", partition="2026-11-24"
    )
    assert manifest.tables["public.secrets_kept"] >= 10
    assert verify_pg_artifact(storage, manifest).ok
    assert PASSWORD not in manifest.to_json().decode()


def test_wrong_password_fails_clearly_and_leaves_nothing(scram_server, tmp_path):
    storage = LocalStorage(tmp_path)
    bad = PgConnection.from_url(scram_server.replace(PASSWORD, WRONG))
    with pytest.raises(BackupError) as err:
        backup_postgres(bad, storage, series="postgres/postgres/daily", partition="2026-11-24")
    message = str(err.value)
    assert "password authentication failed" in message and "DATABASE_URL" in message
    assert WRONG not in message and PASSWORD not in message
    assert list_partitions(storage, "postgres/postgres/daily") == []
    assert not list(tmp_path.rglob("*.zst"))
