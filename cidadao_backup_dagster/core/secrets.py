"""Keep secrets out of everything that leaves the process: run logs, failures, metadata, manifests, audit
records and alerts.

One process-wide registry holds every secret value the process knows (passwords from source URLs, target
passwords, AWS secret key and session token, Slack token, webhook URL, age identity contents). It is filled
when the resources are built (`register_environment`) and again wherever a secret is parsed or used
(`register_secret`); `redact_text` masks every registered value, plus anything shaped like
`scheme://user:password@` or `password=...`, in any text. `install_log_redaction` applies it to every
log record the process creates, Dagster's run logs included.

Connection URLs are checked by `parse_credentials` before any other parser sees them: a mistyped URL gets
an error that names the variable and the fix, and never repeats what follows the user name.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

from .errors import ConfigurationError

MASK = "***"
# Shorter values are not registered: masking them would garble ordinary words, numbers and JSON. They are
# still masked where they stand in a URL's user:password@ or after `password=`.
MIN_SECRET_LENGTH = 6

_URL_PASSWORD = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*(?::/{1,2}|//))(?P<user>[^:/@\s\"']*):(?P<pw>[^\s\"]*)@"
)
_KEYWORD_PASSWORD = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|aws_secret_access_key|aws_session_token)\s*=\s*('[^']*'|\S+)"
)
_PLACEHOLDERS = {"password", "pass", "pw", "secret", MASK}
_DIGEST = re.compile(r"[0-9a-fA-F]{32,}")  # sha256 and the like: never a secret, must never be altered
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:?//")  # also `postgresql//...`, a URL missing its ':'
_SECRET_VARIABLE = re.compile(r"(?i)(PASSWORD|PASSWD|SECRET|SECRET_ACCESS_KEY|TOKEN|API_KEY|WEBHOOK_URL)$")

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()  # longest first; replaced as a whole, so readers never need the lock


def _variants(value: str) -> set[str]:
    """The value as it may appear in text: raw, percent-encoded, JSON-escaped, repr-escaped."""
    return {value, quote(value, safe=""), quote(value), json.dumps(value)[1:-1], repr(value)[1:-1]}


def register_secret(value: str | None) -> None:
    """Mask `value` (and its encodings) in every message from now on. Idempotent; short values are ignored."""
    global _secrets
    value = (value or "").strip()
    if len(value) < MIN_SECRET_LENGTH:
        return
    new = {v for v in _variants(value) if len(v) >= MIN_SECRET_LENGTH} - set(_secrets)
    if not new:
        return
    with _lock:
        _secrets = tuple(sorted({*_secrets, *new}, key=lambda s: (-len(s), s)))


def registered_secrets() -> tuple[str, ...]:
    return _secrets


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Mask registered secrets, `secrets` (any length), URL passwords and `password=...` pairs in free text."""
    extra = {v for s in secrets if s for v in _variants(s)}
    for secret in sorted(extra, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(_mask_url_password, text)
    return _KEYWORD_PASSWORD.sub(lambda m: f"{m.group(1)}={MASK}", text)


def _mask_url_password(match: re.Match) -> str:
    if match["pw"].strip("<>[]").lower() in _PLACEHOLDERS:  # `user:password@` in a Fix: hint stays readable
        return match.group()
    return f"{match['scheme']}{match['user']}:{MASK}@"


def redact_data(value: Any, secrets: Iterable[str | None] = ()) -> Any:
    """`redact_text` on every string inside a JSON-like value; keys, numbers and digests are left as they are
    (a manifest must stay valid JSON with its checksums intact)."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return value if _DIGEST.fullmatch(value) else redact_text(value, secrets)
    if isinstance(value, Mapping):
        return {k: redact_data(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v, secrets) for v in value]
    return value


# ------------------------------------------------------------------------------------------ registering


def url_password_candidates(url: str) -> list[str]:
    """What may be the password in a URL, however mistyped (a missing ':', an unencoded '@', '/' or '#'): every
    reading another parser could make of it. Only for registering, never for connecting."""
    url = (url or "").strip()
    rest = url.split("//", 1)[1] if "//" in url else url.partition(":")[2]
    found: list[str] = []
    at = rest.rfind("@")
    if at >= 0:
        _user, sep, password = rest[:at].partition(":")
        if sep:
            found += [password, password.split("@")[0], re.split(r"[/?#@]", password)[0]]
    else:  # `user:PASSWORD` without @host reads as host:port
        authority = re.split(r"[/?#]", rest)[0]
        ports = {_authority_port(authority)}
        if not authority.startswith("["):
            ports.add(authority.partition(":")[2])
        found += [p for p in ports if p and not p.isdigit() and "," not in p]  # h1:5432,h2:5433 lists hosts
    return list(dict.fromkeys(c for p in found for c in (p, unquote(p)) if c))


def register_url(url: str | None) -> None:
    """Register the password of a connection URL (every reading of a mistyped one)."""
    for candidate in url_password_candidates(url or ""):
        register_secret(candidate)


def register_file(path: str | None) -> None:
    """Register a key file's contents (an age identity file): the whole text and each key line."""
    if not path:
        return
    try:
        text = Path(path).expanduser().read_text(errors="replace")
    except OSError:
        return  # whoever needs the file reports that it is missing
    register_secret(text.strip())
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-----")):
            register_secret(line)


def register_environment(environ: Mapping[str, str]) -> None:
    """Register every secret the environment holds: values of variables named like `*_PASSWORD`, `*_SECRET`,
    `*_TOKEN`, `*_SECRET_ACCESS_KEY`, `*_WEBHOOK_URL` (and the path of a webhook URL, its secret part), and the
    password of every URL carrying credentials (DATABASE_URL, REDIS_URL, DAGSTER_PG_URL, ...)."""
    for name, value in environ.items():
        value = (value or "").strip()
        if not value:
            continue
        if _SECRET_VARIABLE.search(name):
            register_secret(value)
            if "://" in value:
                register_secret(value.split("://", 1)[1].partition("/")[2])  # a webhook's path is its token
        if "@" in value and _URL_START.match(value):
            register_url(value)


# ----------------------------------------------------------------------------------------- log records

_installed = False


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string is reported by the handler, as without us
        return
    redacted = redact_text(message)
    if redacted != message:
        record.msg, record.args = redacted, ()
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        redacted = redact_text(text)
        if redacted != text:
            record.exc_text = redacted  # formatters use it instead of formatting the traceback again


def install_log_redaction() -> None:
    """Mask secrets in every log record created in this process from now on (Dagster's `context.log`
    included: its records are made by the same factory). Idempotent."""
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


# ---------------------------------------------------------------------------------------- parsing URLs

ENCODE_HINT = (
    "percent-encode the password (and the user name): @ is %40, / is %2F, # is %23, % is %25, : is %3A, ? is %3F "
    "(Python: urllib.parse.quote(password, safe=''))"
)
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class Credentials(NamedTuple):
    user: str | None  # decoded
    password: str | None  # decoded; None when the URL has no ':password'
    raw_password: str | None  # as written in the URL
    present: bool  # the URL has a `...@` user-info part (what follows it cannot hold the password)


def _authority_port(authority: str) -> str:
    """The text after the port ':' of `host:port` / `[v6]:port` ('' when there is none)."""
    if authority.startswith("["):
        after = authority.partition("]")[2]
        return after[1:] if after.startswith(":") else ""
    return authority.rpartition(":")[2] if ":" in authority else ""


def parse_credentials(url: str, variable: str, *, kind: str, schemes: tuple[str, ...], example: str) -> Credentials:
    """Check a connection URL's scheme and user-info part, and decode them. Every error names `variable` and the
    fix, and repeats nothing that follows the user name (a mistyped URL is where a password leaks from).

    After this, the rest of the URL (host, port, path, query) holds no part of the password, so other parsers
    may read it and quote it."""
    fix = f"use {example}"
    head = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if head is None:
        name = re.match(r"[A-Za-z][A-Za-z0-9+.-]*", url)
        if name and name.group().lower() in schemes:
            problem = f"is not a {kind} URL: {name.group()!r} must be followed by '://' (a ':' or '/' is missing)"
        else:
            problem = f"is not a {kind} URL: it does not start with {schemes[0]}://"
        raise ConfigurationError(variable, problem, fix)
    scheme = head.group(1).lower()
    if scheme not in schemes:
        raise ConfigurationError(variable, f"is not a {kind} URL (unsupported scheme {scheme!r})", fix)
    rest = url[head.end() :]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" not in authority:
        if "@" in tail:
            raise ConfigurationError(
                variable,
                "has an '@' after the host part: if it ends user:password@, the password holds an unencoded "
                "'/', '?' or '#'",
                f"{ENCODE_HINT}; an '@' elsewhere is %40",
            )
        port = _authority_port(authority)
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigurationError(
                variable,
                "cannot be parsed: what follows ':' in the host part is not a port number (if it is a password, "
                "the '@host' after it is missing)",
                fix,
            )
        return Credentials(None, None, None, False)
    userinfo = authority.rpartition("@")[0]
    if "@" in userinfo:
        raise ConfigurationError(variable, "has an unencoded '@' in its user name or password", ENCODE_HINT)
    if _BAD_PERCENT.search(userinfo):
        raise ConfigurationError(
            variable, "has a '%' in its user name or password that is not a %XX escape", ENCODE_HINT
        )
    user, sep, password = userinfo.partition(":")
    return Credentials(unquote(user) or None, unquote(password) if sep else None, password if sep else None, True)


def has_credentials(url: str) -> bool:
    """Whether a URL carries `user:password@` (also when an unencoded '/', '?' or '#' hides it from urlsplit)."""
    rest = url.split("//", 1)[1] if "//" in url else url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    return "@" in authority or (":" in authority and "@" in tail)
