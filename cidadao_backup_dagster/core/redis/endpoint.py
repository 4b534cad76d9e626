"""Where a Redis server is and how to talk to it: the parsed URL (password kept apart from everything
printable), clients and sockets, and errors an operator can act on."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import redis

from ..artifacts.storage import MiB
from ..errors import BackupError, ConfigurationError, PermanentError
from ..secrets import parse_credentials, redact_text, register_secret, register_url

Logger = Callable[[str], None]

URL_HELP = "use redis://[user:password@]host:6379[/db] or rediss://... for TLS"


@dataclass(frozen=True)
class RedisEndpoint:
    """Where a Redis server is, with the password kept apart from everything printable."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ssl_cert_reqs: str = "required"  # required | optional | none
    ssl_ca_certs: str | None = None
    ssl_check_hostname: bool = True
    connect_timeout: float = 10.0
    socket_timeout: float = 60.0
    variable: str = "REDIS_URL"

    @classmethod
    def from_url(
        cls, url: str, variable: str = "REDIS_URL", *, connect_timeout: float = 10.0, socket_timeout: float = 60.0
    ) -> RedisEndpoint:
        url = (url or "").strip()
        if not url:
            raise ConfigurationError(variable, "is not set", f"set it to the Redis to back up: {URL_HELP}")
        register_url(url)
        credentials = parse_credentials(
            url, variable, kind="Redis", schemes=("redis", "rediss"), example="redis://[user:password@]host:6379[/db]"
        )
        register_secret(credentials.password)
        register_secret(credentials.raw_password)
        try:
            parts = urlsplit(url)
            port = parts.port or 6379
        except ValueError:
            raise ConfigurationError(variable, "cannot be parsed: its port is not a number", URL_HELP) from None
        if not parts.hostname:
            raise ConfigurationError(variable, "names no host", URL_HELP)
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ConfigurationError(variable, "names a database that is not a number", "end the URL with /0 (or none)")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        reqs = query.get("ssl_cert_reqs", "required").lower()
        if reqs not in ("required", "optional", "none"):
            raise ConfigurationError(variable, f"ssl_cert_reqs={reqs!r}", "use required, optional or none")
        return cls(
            host=parts.hostname,
            port=port,
            db=int(path or 0),
            username=credentials.user,
            password=credentials.password,
            tls=parts.scheme.lower() == "rediss",
            ssl_cert_reqs=reqs,
            ssl_ca_certs=query.get("ssl_ca_certs"),
            ssl_check_hostname=query.get("ssl_check_hostname", "true").lower() not in ("false", "0", "no")
            and reqs != "none",
            connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            variable=variable,
        )

    @property
    def name(self) -> str:
        """What an operator types to confirm a destructive action on this server."""
        return f"{self.host}:{self.port}"

    def display(self) -> str:
        """`redis://user@host:port/db` from the parsed parts (never from the URL as written): safe to print."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{user}{host}:{self.port}/{self.db}"

    def redact(self, text: str) -> str:
        return redact_text(text, [self.password] if self.password else [])

    def with_password(self, password: str | None) -> RedisEndpoint:
        return RedisEndpoint(**{**self.__dict__, "password": password})

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ssl_ca_certs)
        ctx.check_hostname = self.ssl_check_hostname
        ctx.verify_mode = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}[
            self.ssl_cert_reqs
        ]
        return ctx

    def client(self, db: int | None = None, **extra) -> redis.Redis:
        kwargs: dict = dict(
            host=self.host,
            port=self.port,
            db=self.db if db is None else db,
            username=self.username,
            password=self.password,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=self.socket_timeout,
        )
        if self.tls:
            kwargs.update(
                ssl=True,
                ssl_cert_reqs=self.ssl_cert_reqs,
                ssl_ca_certs=self.ssl_ca_certs,
                ssl_check_hostname=self.ssl_check_hostname,
            )
        return redis.Redis(**kwargs, **extra)

    def open_socket(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
            if self.tls:
                sock = self.ssl_context().wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self.socket_timeout)
        except BaseException:
            sock.close()
            raise
        return sock


class RedisAccessError(PermanentError):
    """Credentials, permissions or a refused mode: retrying will not help until someone changes a setting."""


def explain(endpoint: RedisEndpoint, exc: BaseException, doing: str = "talking to") -> BackupError:
    """A BackupError an operator can act on, from a redis-py or socket exception; never with a password."""
    msg = endpoint.redact(str(exc)) or type(exc).__name__
    where = endpoint.display()
    if isinstance(exc, redis.AuthenticationError):  # redis-py raises it for WRONGPASS and NOAUTH
        return RedisAccessError(
            f"Redis at {where} rejected the credentials while {doing} it ({msg}). Fix: check the user and "
            f"password in {endpoint.variable} (redis://user:password@host:port; a server without ACL users takes "
            "redis://:password@host:port)"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return RedisAccessError(
            f"The Redis user of {where} lacks a permission needed for {doing} it ({msg}). Fix: grant it, e.g. "
            "ACL SETUSER <user> +info +config|get +lastsave +sync +replconf +scan +dump +pttl +time +select"
        )
    if isinstance(exc, redis.TimeoutError | TimeoutError | socket.timeout):
        return BackupError(
            f"Redis at {where} did not answer in time while {doing} it ({msg}). Fix: check that the server is up "
            "and not overloaded; raise REDIS_SOCKET_TIMEOUT_S for very large snapshots"
        )
    if isinstance(exc, redis.ConnectionError | OSError | ssl.SSLError):
        tls_hint = "" if endpoint.tls else " (if the server requires TLS, use rediss://)"
        return BackupError(
            f"Cannot connect to Redis at {where} ({msg}). Fix: check host and port in {endpoint.variable}, that "
            f"the server is running and reachable from here{tls_hint}"
        )
    return BackupError(f"Redis at {where} failed while {doing} it: {type(exc).__name__}: {msg}")


def keyspace(client: redis.Redis) -> dict[int, dict[str, int]]:
    """{db: {"keys": n, "expires": m}} from INFO keyspace (databases without keys are absent)."""
    out = {}
    for name, stats in client.info("keyspace").items():
        if name.startswith("db") and isinstance(stats, dict):
            out[int(name[2:])] = {"keys": int(stats.get("keys", 0)), "expires": int(stats.get("expires", 0))}
    return dict(sorted(out.items()))


def key_counts(client: redis.Redis) -> dict[int, int]:
    """{db: keys} from INFO keyspace."""
    return {db: v["keys"] for db, v in keyspace(client).items()}


def count_keys(endpoint: RedisEndpoint, doing: str = "counting keys in") -> dict[int, int]:
    """{db: keys} of the server at `endpoint`, over a connection of its own."""
    client = endpoint.client()
    try:
        return key_counts(client)
    except redis.RedisError as exc:
        raise explain(endpoint, exc, doing) from None
    finally:
        client.close()


def server_facts(client: redis.Redis) -> dict:
    info = client.info("server")
    repl = client.info("replication")
    return {
        "redis_version": str(info.get("redis_version", "?")),
        "redis_mode": info.get("redis_mode"),
        "role": repl.get("role"),
        "os": info.get("os"),
    }
