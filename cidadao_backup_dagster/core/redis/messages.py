"""Errors about refused keys without their values.

Values never reach a message: a refused RESTORE is reported by its key (escaped, cut when long) and the
server's reason, never by the command (redis-py's pipeline errors quote it, payload included, and a server
without RESTORE echoes its first arguments); a malformed logical snapshot is reported without its bytes."""

from __future__ import annotations

import re
from collections.abc import Iterable

import redis

from ..errors import BackupError, PermanentError
from .endpoint import RedisAccessError

_ARGS_ECHO = re.compile(r",?\s*with args beginning with:.*", re.S)  # Redis's "unknown command ..." quotes its args


_PIPELINE_ECHO = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.S)  # redis-py quotes the command


_BYTES_REPR = re.compile(r"""\bb(['"])(?:\\.|(?!\1).)*\1""", re.S)


_PRINTABLE_RUN = re.compile(rb"[\x21-\x7e][\x20-\x7e]{4,}[\x21-\x7e]")


def show_key(key: bytes | str | None, limit: int = 80) -> str:
    """A key as a message may show it: quoted, non-printable characters escaped, cut after `limit` bytes."""
    raw = key if isinstance(key, bytes) else str(key).encode()
    text = raw[:limit].decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text).replace("'", "\\'")
    return f"'{text}...' ({len(raw):,} bytes)" if len(raw) > limit else f"'{text}'"


def without_bytes(text: str) -> str:
    """`text` with every Python bytes literal (b'...', how a parser quotes what it read) left out."""
    return _BYTES_REPR.sub("<bytes not shown>", text)


def redis_reason(exc: BaseException, values: Iterable[bytes] = ()) -> str:
    """What the server answered (its error code and text), without anything it or redis-py echoed of the
    command: the arguments may be a value (a session token). Any run of printable bytes from `values` that
    still shows up is cut out too."""
    text = str(exc.args[0]) if exc.args else ""
    text = _PIPELINE_ECHO.sub("", text)
    text = _ARGS_ECHO.sub(" (arguments not shown)", text)
    code = getattr(exc, "status_code", None)
    if code and not text.startswith(code):
        text = f"{code} {text}"  # redis-py strips OOM, NOPERM, ERR ... into the exception type
    text = without_bytes(text)
    for value in values:
        for run in sorted(set(_PRINTABLE_RUN.findall(value)), key=len, reverse=True):
            text = text.replace(run.decode("ascii"), "<value not shown>")
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return (text[:300] + "...") if len(text) > 300 else text or type(exc).__name__


def without_echo(exc: BaseException) -> BaseException:
    """`exc` with its message reduced to redis_reason(), of the same type (so explain() still classifies it)."""
    if not isinstance(exc, redis.RedisError):
        return exc
    try:
        return type(exc)(redis_reason(exc))
    except Exception:  # noqa: BLE001 - an exception type with another signature
        return redis.RedisError(redis_reason(exc))


def execute_restores(pipe, sent: list[tuple[bytes, bytes]], where: str, db: int) -> None:
    """Run a pipeline of RESTOREs (one per `sent` (key, payload), in order); on a refusal raise an error naming
    the first refused key and the server's reason, never the payload."""
    replies = pipe.execute(raise_on_error=False)
    failed = [(i, r) for i, r in enumerate(replies) if isinstance(r, Exception)]
    if failed:
        index, exc = failed[0]
        key, payload = sent[index]
        raise restore_error(where, db, key, payload, exc, failed=len(failed), batch=len(replies))


def restore_error(
    where: str, db: int, key: bytes, payload: bytes, exc: BaseException, *, failed: int = 1, batch: int = 1
) -> BackupError:
    """The error for a refused RESTORE: the key, the reason and the fix."""
    reason = redis_reason(exc, [payload])
    what = f"{where} refused to RESTORE key {show_key(key)} in db{db} ({reason})"
    if failed > 1:
        what += f"; {failed - 1:,} more of the {batch:,} keys in that batch were refused too"
    if "payload version" in reason or "checksum" in reason:
        return PermanentError(
            f"{what}: the target is older than the snapshot's source (or the payload is damaged). Fix: restore "
            "into a Redis at least as new as the source, or pick another snapshot"
        )
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return PermanentError(
            f"{what}: the target is out of memory. Fix: raise its maxmemory (or restore into a bigger instance); "
            "keys restored before this one stay"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError | redis.AuthenticationError):
        return RedisAccessError(f"{what}. Fix: grant the target's user +restore (and +select, +info)")
    if "unknown command" in reason:
        return PermanentError(
            f"{what}: RESTORE is disabled or renamed on the target. Fix: enable RESTORE for the restore, or "
            "restore into a Redis that allows it"
        )
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return PermanentError(f"{what}: the target is a read-only replica. Fix: restore into its primary")
    return BackupError(what)
