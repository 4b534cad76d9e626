"""A throwaway redis-server: the local binaries, which RDB versions they load, and a private server on a unix
socket (no TCP port, no persistence) that restores and drills load a snapshot into."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from ..errors import BackupError
from .endpoint import key_counts

# Newest RDB version each redis-server release line can load (for a clear error before starting one).
_RDB_FOR_SERVER = [((7, 4), 12), ((7, 2), 11), ((7, 0), 10), ((5, 0), 9), ((4, 0), 8), ((3, 2), 7)]


def redis_binary(name: str, server_bin: str | None = None) -> str:
    """`redis-server` or `redis-check-rdb`: beside REDIS_SERVER_BIN when set, else on PATH."""
    if server_bin:
        candidate = Path(server_bin) if name == "redis-server" else Path(server_bin).with_name(name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        if name == "redis-server":
            raise BackupError(f"REDIS_SERVER_BIN={server_bin} is not an executable redis-server. Fix: correct the path")
    found = shutil.which(name)
    if not found:
        raise BackupError(
            f"{name} is needed to restore or check an RDB snapshot and was not found on PATH. Fix: install it "
            "(Debian/Ubuntu: apt-get install redis-server; it brings redis-check-rdb too) or set "
            "REDIS_SERVER_BIN to the redis-server binary"
        )
    return found


def server_version(binary: str) -> tuple[int, int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"(?:v=|\s)(\d+)\.(\d+)\.(\d+)", out)
    return (int(m[1]), int(m[2]), int(m[3])) if m else (0, 0, 0)


def max_rdb_version(version: tuple[int, int, int]) -> int:
    for (major, minor), rdb in _RDB_FOR_SERVER:
        if version[:2] >= (major, minor):
            return rdb
    return 6


class ThrowawayRedis:
    """A private redis-server on a unix socket in `workdir`, loading `workdir/dump.rdb` if present.
    No TCP port, no persistence, killed on stop()."""

    def __init__(self, workdir: Path, *, server_bin: str | None = None, load_timeout: float = 3600):
        binary = redis_binary("redis-server", server_bin)
        self.version = server_version(binary)
        self.workdir = workdir
        self.socket = str(workdir / "redis.sock")
        self.log = workdir / "redis.log"
        rdb = workdir / "dump.rdb"
        if rdb.exists():
            with open(rdb, "rb") as f:
                head = f.read(9)
            if head[:5] == b"REDIS" and head[5:].isdigit() and int(head[5:]) > max_rdb_version(self.version):
                raise BackupError(
                    f"The snapshot is RDB version {int(head[5:])}, newer than the local redis-server "
                    f"{'.'.join(map(str, self.version))} can load. Fix: install a newer redis-server (the source's "
                    "version or later) and set REDIS_SERVER_BIN to it"
                )
        args = [binary, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700"]
        args += ["--dir", str(workdir), "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"]
        args += ["--logfile", str(self.log), "--daemonize", "no", "--databases", "256"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._clients: list[redis.Redis] = []
        deadline = time.monotonic() + load_timeout
        probe = redis.Redis(unix_socket_path=self.socket, socket_timeout=30)
        try:
            while True:
                if self.proc.poll() is not None:
                    tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
                    raise BackupError(
                        f"redis-server could not load the snapshot (exit code {self.proc.returncode}): {tail.strip()}"
                    )
                try:
                    probe.ping()
                    break
                except (redis.BusyLoadingError, redis.ConnectionError):
                    if time.monotonic() > deadline:
                        raise BackupError(f"redis-server is still loading after {load_timeout:.0f} s") from None
                    time.sleep(0.05)
        except BaseException:
            probe.close()
            self.stop()
            raise
        probe.close()

    def client(self, db: int = 0) -> redis.Redis:
        c = redis.Redis(unix_socket_path=self.socket, db=db, socket_timeout=300)
        self._clients.append(c)
        return c

    def keyspace(self) -> dict[int, int]:
        return key_counts(self.client())

    def stop(self) -> None:
        for c in self._clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Workdir:
    """A private temporary folder for one restore or drill (its prefix is what the scratch sweeper looks for),
    removed on exit together with the throwaway server started in it."""

    def __init__(self, prefix: str, tmp_dir: str | None):
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_dir))
        self.server: ThrowawayRedis | None = None

    def start_server(self, server_bin: str | None) -> ThrowawayRedis:
        self.server = ThrowawayRedis(self.path, server_bin=server_bin)
        return self.server

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.path, ignore_errors=True)
