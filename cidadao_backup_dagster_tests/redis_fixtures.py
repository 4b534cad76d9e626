"""Redis test servers and data: every test gets its own redis-server process on a free port with a temp dir
(never the machine's shared Redis on 6379), and a type-aware, key-by-key comparison of two servers."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import redis

from .conftest import free_port

PASSWORD = "r3dis-S3cret-pw"  # must never appear in events, manifests or errors


class RedisServer:
    def __init__(self, root: Path, conf: tuple[str, ...] = (), *, password: str | None = None, tls: dict | None = None):
        self.password = password
        self.tls = tls
        for _attempt in range(3):  # the free port can be taken between probing and binding
            self.port = free_port()
            self.dir = root / f"redis-{self.port}"
            self.dir.mkdir(parents=True, exist_ok=True)
            lines = [
                f"port {0 if tls else self.port}",
                "bind 127.0.0.1",
                f"dir {self.dir}",
                "dbfilename dump.rdb",
                'save ""',
                "appendonly no",
                "repl-diskless-sync-delay 0",  # design.md trap: the 5 s default delays every SYNC
                f"logfile {self.dir / 'redis.log'}",
                "daemonize no",
                "databases 16",
            ]
            if tls:
                lines += [
                    f"tls-port {self.port}",
                    f"tls-cert-file {tls['cert']}",
                    f"tls-key-file {tls['key']}",
                    f"tls-ca-cert-file {tls['cert']}",
                    "tls-auth-clients no",
                    "tls-replication yes",
                ]
            if password:
                lines.append(f"requirepass {password}")
            lines += list(conf)
            (self.dir / "redis.conf").write_text("\n".join(lines) + "\n")
            self.proc = subprocess.Popen(
                ["redis-server", str(self.dir / "redis.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + 30  # a readiness wait, not a timing assertion
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    self.client().ping()
                    return
                except redis.ConnectionError:
                    time.sleep(0.02)
            self.stop()
        log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server did not start:\n{log}")

    def url(self, *, user: str | None = None, password: str | None = None, db: int = 0, query: str = "") -> str:
        cred = ""
        if user or password:
            cred = f"{user or ''}:{password}@" if password else f"{user}@"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{cred}127.0.0.1:{self.port}/{db}{query}"

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, db: int = 0) -> redis.Redis:
        kwargs = {}
        if self.tls:
            kwargs = {"ssl": True, "ssl_ca_certs": str(self.tls["cert"])}
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password, **kwargs)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def redis_server(tmp_path):
    """Factory: `redis_server(conf=("appendonly yes",), password=...)` starts a private redis-server."""
    servers: list[RedisServer] = []

    def start(conf: tuple[str, ...] = (), **kwargs) -> RedisServer:
        server = RedisServer(tmp_path / "redis", conf, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def tls_cert(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return {"cert": cert, "key": key}


# ----------------------------------------------------------------------------------------- data


def populate_every_type(r0: redis.Redis, server: RedisServer) -> None:
    """Strings (plain, int-encoded, binary, large), hashes, lists, sets, sorted sets (small and large encodings),
    streams with a consumer group, keys with TTLs, and keys in databases 0, 1 and 5."""
    p = r0.pipeline(transaction=False)
    p.set("str:plain", "hello")
    p.set("str:int", 12345)
    p.set(b"str:bin\x00\xff", bytes(range(256)))
    p.set("str:big", "x" * 200_000)  # LZF-compressed in the RDB
    p.hset("hash:small", mapping={"a": "1", "b": "2"})
    p.hset("hash:big", mapping={f"f{i}": f"v{i}" * 10 for i in range(600)})
    p.rpush("list:small", "a", "b", "c")
    p.rpush("list:big", *[f"item{i}" for i in range(5000)])
    p.sadd("set:ints", *range(100))
    p.sadd("set:strs", "a", "b", "c")
    p.sadd("set:big", *[f"m{i}" for i in range(2000)])
    p.zadd("zset:small", {"a": 1, "b": 2.5})
    p.zadd("zset:big", {f"m{i}": i * 0.5 for i in range(1000)})
    for i in range(50):
        p.xadd("stream:s", {"n": str(i), "payload": "p" * i})
    p.set("ttl:short", "v", px=3_600_000)
    p.set("ttl:long", "v", ex=86_400 * 30)
    p.hset("ttl:hash", mapping={"x": "y"})
    p.expire("ttl:hash", 7200)
    p.execute()
    r0.xgroup_create("stream:s", "workers", id="0")
    r0.xreadgroup("workers", "alice", {"stream:s": ">"}, count=5)
    for db, count in ((1, 30), (5, 7)):
        c = server.client(db)
        c.mset({f"db{db}:k{i}": f"v{i}" for i in range(count)})
        c.zadd(f"db{db}:z", {"x": 1})
        c.expire(f"db{db}:k0", 5000)
        c.close()


def bulk_strings(client: redis.Redis, n: int, prefix: str = "bulk") -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.set(f"{prefix}:{i}", f"value-{i}-" + "z" * (i % 50))
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def _value(c: redis.Redis, key: bytes, kind: bytes):
    if kind == b"string":
        return c.get(key)
    if kind == b"hash":
        return c.hgetall(key)
    if kind == b"list":
        return c.lrange(key, 0, -1)
    if kind == b"set":
        return sorted(c.smembers(key))
    if kind == b"zset":
        return c.zrange(key, 0, -1, withscores=True)
    if kind == b"stream":
        groups = [(g["name"], g["pending"], g["last-delivered-id"]) for g in c.xinfo_groups(key)]
        return c.xrange(key), groups
    raise AssertionError(f"unexpected type {kind!r}")


def dataset(server: RedisServer, *, dbs=range(16)) -> dict:
    """{db: {key: (type, value, pttl)}} read type by type."""
    out = {}
    for db in dbs:
        c = server.client(db)
        keys = sorted(c.scan_iter(count=1000))
        if not keys:
            c.close()
            continue
        pipe = c.pipeline(transaction=False)
        for k in keys:
            pipe.type(k)
            pipe.pttl(k)
        meta = pipe.execute()
        out[db] = {k: (meta[2 * i], _value(c, k, meta[2 * i]), meta[2 * i + 1]) for i, k in enumerate(keys)}
        c.close()
    return out


def assert_same_data(source: dict, restored: dict, ttl_tolerance_ms: int = 120_000) -> None:
    """Equal key by key (type and value); TTLs present on both sides and within the tolerance."""
    assert sorted(source) == sorted(restored), f"databases differ: {sorted(source)} vs {sorted(restored)}"
    for db in source:
        assert source[db].keys() == restored[db].keys(), f"db{db}: key sets differ"
        for key, (kind, value, ttl) in source[db].items():
            rkind, rvalue, rttl = restored[db][key]
            assert (rkind, rvalue) == (kind, value), f"db{db} {key!r} differs"
            if ttl < 0:
                assert rttl == ttl, f"db{db} {key!r}: TTL {ttl} became {rttl}"
            else:
                assert 0 < rttl <= ttl + 1000 and ttl - rttl < ttl_tolerance_ms, f"db{db} {key!r}: TTL {ttl} vs {rttl}"
