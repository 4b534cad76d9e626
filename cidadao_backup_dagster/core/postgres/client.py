"""PostgreSQL: connection settings without leaking passwords, exported snapshots, pg_dump and pg_restore."""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..errors import BackupError, ConfigurationError, PermanentError, pg_error_type
from ..secrets import parse_credentials, redact_text, register_secret, register_url

_EXAMPLE = "postgresql://user:password@host:5432/dbname"


@dataclass(frozen=True)
class PgConnection:
    """libpq connection parameters, with the password kept apart from everything printable."""

    params: dict[str, str]
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str, variable: str = "DATABASE_URL") -> PgConnection:
        """Parse a `postgresql://` URL (or libpq `key=value` settings). Errors name `variable` and the fix and
        never repeat the password, however the URL is mistyped; the password is registered for redaction."""
        url = (url or "").strip()
        if not url:
            raise ConfigurationError(variable, "is not set", f"set it to {_EXAMPLE}")
        register_url(url)
        # SQLAlchemy-style URLs (postgresql+asyncpg://) name a Python driver; libpq wants the plain scheme.
        url = re.sub(r"^(postgres(?:ql)?)\+[a-z0-9_]+://", r"\1://", url)
        keywords = "://" not in url and re.match(r"[A-Za-z_]+\s*=", url) is not None
        credentials = None
        if not keywords:
            credentials = parse_credentials(
                url, variable, kind="PostgreSQL", schemes=("postgresql", "postgres"), example=_EXAMPLE
            )
            register_secret(credentials.password)
            register_secret(credentials.raw_password)
        try:
            params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
        except psycopg.ProgrammingError as exc:
            # libpq quotes the whole string back; after parse_credentials a URL's password is known and masked,
            # but key=value settings may be broken anywhere, so nothing of them is repeated.
            if credentials is None:
                raise ConfigurationError(
                    variable, "cannot be parsed as key=value settings", "quote values holding spaces: password='a b'"
                ) from None
            found = redact_text(str(exc).strip(), (credentials.password, credentials.raw_password))
            raise ConfigurationError(variable, f"cannot be parsed ({found})", f"use {_EXAMPLE}") from None
        password = params.pop("password", None)
        register_secret(password)
        port = params.get("port", "5432")
        if not re.fullmatch(r"\d{1,5}", port):  # `port` below and display() need one number
            # After the user-info part the port cannot hold the password; without one it might (`user:PASSWORD`).
            shown = f"port {port!r}" if keywords or (credentials and credentials.present) else "the port"
            raise ConfigurationError(variable, f"{shown} is not a single port number", "use ...@host:5432/dbname")
        if not params.get("dbname"):
            raise ConfigurationError(variable, "names no database", "append the database name: ...:5432/dbname")
        return cls(params, password)

    @property
    def dbname(self) -> str:
        return self.params["dbname"]

    @property
    def host(self) -> str:
        return self.params.get("host", "localhost")

    @property
    def port(self) -> int:
        return int(self.params.get("port", 5432))

    @property
    def user(self) -> str | None:
        return self.params.get("user")

    def with_dbname(self, dbname: str) -> PgConnection:
        return replace(self, params={**self.params, "dbname": dbname})

    def with_tls_of(self, other: PgConnection) -> PgConnection:
        """`other`'s TLS settings (sslmode, sslrootcert, ...) when this one names none: the same server reached
        through a URL written without them must still be verified the same way."""
        if any(k.startswith("ssl") for k in self.params):
            return self
        return replace(self, params={**self.params, **{k: v for k, v in other.params.items() if k.startswith("ssl")}})

    def display(self) -> str:
        """`postgresql://user@host:port/db` from the parsed parts (never from the URL as written): safe for logs,
        metadata and manifests."""
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{user}{host}:{self.port}/{self.dbname}"

    def url_with_password(self) -> str:
        """A full URL for a child process that expects DATABASE_URL (never for logs: use display())."""
        user = quote(self.user or "", safe="")
        auth = f"{user}:{quote(self.password, safe='')}@" if self.password else (f"{user}@" if user else "")
        extra = {k: v for k, v in self.params.items() if k not in ("host", "port", "dbname", "user")}
        query = f"?{urlencode(extra)}" if extra else ""
        return f"postgresql://{auth}{quote(self.host, safe='')}:{self.port}/{quote(self.dbname, safe='')}{query}"

    def conninfo(self) -> str:
        """Without the password: it travels in PGPASSWORD so it never shows in `ps` or an error."""
        return make_conninfo(**self.params)

    def env(self) -> dict[str, str]:
        env = {**os.environ}
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def connect(self, **kwargs: Any) -> psycopg.Connection:
        try:
            return psycopg.connect(self.conninfo(), password=self.password, connect_timeout=15, **kwargs)
        except psycopg.OperationalError as exc:
            # A wrong password or a missing database is permanent; a refused or dropped connection may pass.
            fix = tls_fix(str(exc)) or (
                "check DATABASE_URL (host, port, user, password, database) and that the server accepts "
                "connections from this machine."
            )
            raise pg_error_type(str(exc))(
                f"Cannot connect to {self.display()}: {self.redact(str(exc)).strip()}. Fix: {fix}"
            ) from None

    def redact(self, text: str) -> str:
        return redact_text(text, [self.password] if self.password else [])


def tls_fix(error: str) -> str | None:
    """What to change in the URL when libpq's error is about TLS (managed servers accept only `hostssl`)."""
    text = error.lower()
    if "no pg_hba.conf entry" in text and "no encryption" in text:
        return (
            "the server accepts only TLS connections: add sslmode to the URL, e.g. "
            "?sslmode=verify-full&sslrootcert=/path/to/server-ca.pem (or at least ?sslmode=require)."
        )
    if "server does not support ssl" in text:
        return "the server does not offer TLS: check host and port, or use a weaker sslmode (prefer) in the URL."
    if "certificate" in text and any(w in text for w in ("verify failed", "does not match", "does not exist")):
        return (
            "TLS verification failed: sslrootcert must name the CA file that signed the server's certificate, "
            "and the URL's host must be a name (or IP) the certificate was issued for."
        )
    return None


# ----------------------------------------------------------------------------------------- binaries


STANDARD_BIN_DIRS = "/usr/lib/postgresql/*/bin"  # Debian/Ubuntu and PGDG packages: one folder per major


@dataclass(frozen=True)
class ClientDirs:
    """Where to look for PostgreSQL client programs: `dirs` (PG_BIN_DIRS) first, then /usr/lib/postgresql/*/bin,
    then PATH. A plain folder string (PG_BIN_DIR) instead means that folder only."""

    dirs: tuple[str, ...] = ()

    def __bool__(self) -> bool:  # `bin_dir or default` keeps meaning "a folder was configured"
        return bool(self.dirs)

    @classmethod
    def parse(cls, text: str | None) -> ClientDirs:
        """`/opt/pg17/bin:/usr/lib/postgresql/18/bin` (colon-separated, like PATH)."""
        return cls(tuple(d.strip() for d in (text or "").split(os.pathsep) if d.strip()))


# A folder (PG_BIN_DIR: only that one), a search (PG_BIN_DIRS and the standard places) or None (standard places).
BinDir = str | ClientDirs | None


@dataclass(frozen=True)
class PgClient:
    """One installed client program and the version it reports."""

    path: str
    version: str

    @property
    def major(self) -> int:
        return major(self.version)

    @property
    def bin_dir(self) -> str:
        return os.path.dirname(self.path)

    def describe(self) -> str:
        return f"{Path(self.path).name} {self.version} at {self.bin_dir}"


def pg_binary(name: str, bin_dir: BinDir = None) -> str:
    """The program `name`: in the folder `bin_dir`, else (a search) the newest one found."""
    if isinstance(bin_dir, str) and bin_dir:
        path = str(Path(bin_dir) / name)
        if not os.access(path, os.X_OK):
            raise PermanentError(
                f"{name} not found in PG_BIN_DIR={bin_dir}. Fix: install the PostgreSQL client matching the server "
                "(Debian: apt-get install postgresql-client) or set PG_BIN_DIR to its bin folder."
            )
        return path
    return max(find_clients(name, bin_dir), key=lambda c: c.major).path


def binary_version(path: str) -> str:
    """`pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)` -> `15.20`."""
    return _version(path, os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _version(path: str, _mtime: int) -> str:  # keyed by mtime: an upgraded package is asked again
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    found = re.search(r"\)\s+(\d+(?:\.\d+)*)", out)
    return found.group(1) if found else out


def major(version: str) -> int:
    return int(re.match(r"\d+", version).group())  # type: ignore[union-attr]


def _searched(bin_dir: BinDir) -> str:
    dirs = bin_dir.dirs if isinstance(bin_dir, ClientDirs) else ()
    return (f"PG_BIN_DIRS={os.pathsep.join(dirs)}, " if dirs else "") + f"{STANDARD_BIN_DIRS} and PATH"


def find_clients(name: str, bin_dir: BinDir = None) -> list[PgClient]:
    """Every installed `name` in search order (PG_BIN_DIR alone when set), each once; raises when there is none."""
    if isinstance(bin_dir, str) and bin_dir:
        path = pg_binary(name, bin_dir)
        return [PgClient(path, binary_version(path))]
    folders = [
        *(bin_dir.dirs if isinstance(bin_dir, ClientDirs) else ()),
        *sorted(glob.glob(STANDARD_BIN_DIRS), key=lambda d: [int(x) if x.isdigit() else 0 for x in d.split("/")]),
    ]
    paths = [str(Path(folder) / name) for folder in folders]
    on_path = shutil.which(name)
    # Debian's /usr/bin/pg_dump is pg_wrapper, which picks a version per call: the folders above are what it runs.
    if on_path and Path(on_path).resolve().name != "pg_wrapper":
        paths.append(on_path)
    found, seen = [], set()
    for path in paths:
        real = os.path.realpath(path)
        if real not in seen and os.path.isfile(path) and os.access(path, os.X_OK):
            seen.add(real)
            found.append(PgClient(path, binary_version(path)))
    if not found:
        raise PermanentError(
            f"{name} not found in {_searched(bin_dir)}. Fix: install the PostgreSQL client of the server's version "
            "(Debian: apt-get install postgresql-client-<major>, from the PGDG apt repository for versions the "
            "distribution lacks) or set PG_BIN_DIRS to the bin folder of one."
        )
    return found


def choose_client(found: list[PgClient], need: int, reason: str, bin_dir: BinDir = None) -> PgClient:
    """The closest client of at least major `need` (the one made for that server; on a tie the first in search
    order), or a PermanentError saying why `need` and what to install. `reason` is a sentence such as
    'The server is PostgreSQL 17.2, and pg_dump must be at least its major version'."""
    fitting = [c for c in found if c.major >= need]
    if fitting:
        return min(fitting, key=lambda c: c.major)
    newest = max(found, key=lambda c: c.major)
    name = Path(newest.path).name
    if isinstance(bin_dir, str) and bin_dir:
        raise PermanentError(
            f"{reason}; {name} in PG_BIN_DIR={bin_dir} is {newest.version}. Fix: point PG_BIN_DIR at the bin folder "
            f"of a PostgreSQL {need}+ client, or unset it so that PG_BIN_DIRS and {STANDARD_BIN_DIRS} are searched."
        )
    raise PermanentError(
        f"{reason}; the newest {name} found is {newest.version} at {newest.bin_dir} (searched {_searched(bin_dir)}). "
        f"Fix: install postgresql-client-{need} (PGDG apt repository) or set PG_BIN_DIRS to the bin folder of a "
        f"PostgreSQL {need}+ client."
    )


def client_for_archive(name: str, dump_version: str | None, bin_dir: BinDir = None) -> PgClient:
    """pg_restore (or psql) able to read an archive written by pg_dump `dump_version` (the manifest's
    tools.pg_dump): a custom archive needs a pg_restore at least that major version."""
    found = find_clients(name, bin_dir)
    if not dump_version:
        return max(found, key=lambda c: c.major)
    reason = f"The backup was written by pg_dump {dump_version}, and {name} must be at least its major version"
    return choose_client(found, major(dump_version), reason, bin_dir)


def restore_client(manifest: Any, bin_dir: BinDir = None) -> PgClient:
    """The pg_restore for a manifest's archive, chosen before anything is fetched or created."""
    return client_for_archive("pg_restore", manifest.tools.pg_dump, bin_dir)


# ----------------------------------------------------------------------------------------- snapshot


class ExportedSnapshot:
    """A REPEATABLE READ transaction whose snapshot pg_dump imports, and in which rows are counted.

    Counting runs in a thread while pg_dump streams, so the exact per-table counts cost little wall time.
    The transaction stays open until `close()`, after pg_dump has finished.
    """

    def __init__(self, conn: PgConnection):
        self._conn = conn.connect(autocommit=True)
        # Managed servers often set these per role: a long count(*) or the idle wait while pg_dump runs must
        # not get this session killed (pg_dump itself already disables statement_timeout for its session).
        self._conn.execute("SET statement_timeout = 0")
        self._conn.execute("SET idle_in_transaction_session_timeout = 0")
        self._conn.autocommit = False
        self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self._conn.read_only = True
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT pg_export_snapshot(), current_setting('server_version'), "
                "current_setting('server_version_num')::int, current_database(), now()"
            )
            self.snapshot_id, self.server_version, self.server_version_num, self.database, self.taken_at = (
                cur.fetchone()
            )
        self._counts: dict[str, int] | None = None
        self._count_error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def tables(self) -> list[tuple[str, str]]:
        # Ordinary tables hold the data pg_dump writes (partitioned parents have none of their own).
        with self._conn.cursor() as cur:
            cur.execute(
                """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                     AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'
                   ORDER BY 1, 2"""
            )
            return cur.fetchall()

    def start_counting(self) -> None:
        def run() -> None:
            try:
                counts = {}
                with self._conn.cursor() as cur:
                    for schema, table in self.tables():
                        cur.execute(
                            sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
                        )
                        counts[f"{schema}.{table}"] = cur.fetchone()[0]
                self._counts = counts
            except BaseException as exc:  # noqa: BLE001 - re-raised in counts()
                self._count_error = exc

        self._thread = threading.Thread(target=run, name="pg-row-count", daemon=True)
        self._thread.start()

    def counts(self) -> dict[str, int]:
        if self._thread is None:
            self.start_counting()
        self._thread.join()  # type: ignore[union-attr]
        if self._count_error is not None:
            raise BackupError(f"Counting rows in the snapshot failed: {self._count_error}") from None
        return self._counts  # type: ignore[return-value]

    def close(self) -> None:
        try:
            self._conn.rollback()
        finally:
            self._conn.close()


# ------------------------------------------------------------------------------------------ pg_dump


class PgDumpProcess:
    """`pg_dump --format=custom -Z0` on an exported snapshot; stdout is the stream, stderr is kept aside
    (in a small temp file, so a chatty pg_dump can never block on a full pipe)."""

    def __init__(self, conn: PgConnection, snapshot_id: str | None, *, bin_dir: BinDir = None, extra_args=()):
        self._conn = conn
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        args = [
            pg_binary("pg_dump", bin_dir),
            "--format=custom",
            "--compress=0",  # zstd outside is faster and smaller than pg_dump's built-in gzip
            "--no-password",
            *(["--snapshot", snapshot_id] if snapshot_id else []),
            *extra_args,
            "--dbname",
            conn.conninfo(),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._stderr, env=conn.env())
        self.stdout = self.proc.stdout

    def wait(self) -> None:
        """Wait for exit; raise with pg_dump's own error text (password-free) on failure."""
        rc = self.proc.wait()
        self._stderr.seek(0)
        err = self._conn.redact(self._stderr.read().decode(errors="replace")).strip()
        self._stderr.close()
        if rc != 0:
            fix = tls_fix(err)
            raise pg_error_type(err)(
                f"pg_dump failed (exit code {rc}): {err or 'no error text'}" + (f". Fix: {fix}" if fix else "")
            )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._stderr.closed:
            self._stderr.close()


def restore_list(archive: str | None, *, stdout: IO[bytes], stderr: IO[bytes], bin_dir: BinDir = None):
    """`pg_restore --list` on an archive file, or on stdin when `archive` is None. Give `stdout` a file
    when feeding stdin, so a long TOC cannot fill a pipe while we are still writing."""
    args = [pg_binary("pg_restore", bin_dir), "--list", *([archive] if archive else [])]
    stdin = subprocess.PIPE if archive is None else None
    return subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=stderr)


def count_table_data_entries(toc: str) -> int:
    """TOC lines like `3361; 0 16390 TABLE DATA public investigations postgres`."""
    return sum(1 for line in toc.splitlines() if not line.startswith(";") and " TABLE DATA " in line)
