"""Redis persistence health as pure functions over what the server reports (INFO persistence, CONFIG GET).
The Dagster checks and the persistence sensor call these; `read_persistence` is the only one that talks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import redis

from ..monitoring.health import Verdict
from .endpoint import RedisEndpoint, explain

MAX_LAST_SAVE_AGE_S = 3600  # strategy alert "Redis Persistence Disabled": redis_rdb_last_save_age > 3600 (high)


@dataclass(frozen=True)
class Persistence:
    info: dict  # INFO persistence
    config: dict | None  # CONFIG GET appendonly/appendfsync/save; None when CONFIG is refused (managed services)
    config_error: str | None = None


def read_persistence(endpoint: RedisEndpoint) -> Persistence:
    """INFO persistence, plus the persistence settings when CONFIG GET is allowed. Raises BackupError."""
    client = endpoint.client()
    try:
        info = client.info("persistence")
        # LASTSAVE is the start time until the first save; the uptime tells "never saved" on Redis < 7 (no rdb_saves)
        info["uptime_in_seconds"] = client.info("server").get("uptime_in_seconds")
        try:
            config = {}
            for name in ("appendonly", "appendfsync", "save"):
                config.update({k: v for k, v in client.config_get(name).items()})
            return Persistence(info, config)
        except redis.ResponseError as exc:  # renamed CONFIG (ElastiCache), or an ACL without config|get
            return Persistence(info, None, endpoint.redact(str(exc)))
    except redis.RedisError as exc:
        raise explain(endpoint, exc, "reading INFO persistence from") from None
    finally:
        client.close()


def persistence_config_verdict(p: Persistence) -> Verdict:
    """Passes when AOF is on with appendfsync everysec or always, and RDB save rules exist (the strategy's
    redis.conf: `save 900 1` / `save 300 10` / `save 60 10000` and `appendonly yes` + `appendfsync everysec`)."""
    aof_on = bool(int(p.info.get("aof_enabled", 0)))
    meta: dict = {"aof_enabled": aof_on}
    problems = []
    if p.config is None:
        meta["config_readable"] = False
        problems.append(
            f"CONFIG GET is refused ({p.config_error}), so appendfsync and the save rules cannot be checked; "
            "check them in the provider's console"
        )
    else:
        fsync, save = p.config.get("appendfsync", "?"), p.config.get("save", "").strip()
        meta.update(appendonly=p.config.get("appendonly"), appendfsync=fsync, save_rules=save or "(none)")
        if fsync not in ("everysec", "always"):
            problems.append(f"appendfsync is {fsync!r} (want everysec or always)")
        if not save:
            problems.append('no RDB save rules (save ""): the server never writes an RDB by itself')
    if not aof_on:
        problems.insert(0, "AOF is off (appendonly no): a crash loses every write since the last RDB save")
    if problems:
        return Verdict(False, "; ".join(problems) + ". Fix: appendonly yes, appendfsync everysec, save rules", meta)
    return Verdict(True, f"AOF on (appendfsync {meta['appendfsync']}) and RDB save rules {meta['save_rules']!r}", meta)


NEVER_SAVED_SLACK_S = 5  # LASTSAVE and the uptime are both set at start, a second or two apart


def _never_saved(info: dict, now: datetime) -> bool:
    """True when the server has not completed one RDB save since it started. Redis sets LASTSAVE to its start
    time, so LASTSAVE alone makes a fresh server look just saved; `rdb_saves` (Redis >= 7) counts real saves."""
    if info.get("rdb_saves") is not None:
        return int(info["rdb_saves"]) == 0
    uptime = info.get("uptime_in_seconds")
    if uptime is None:
        return False  # neither is known: fall back to LASTSAVE's age alone
    started = now.timestamp() - int(uptime)
    return abs(int(info.get("rdb_last_save_time", 0)) - started) <= NEVER_SAVED_SLACK_S


def last_save_verdict(info: dict, now: datetime, max_age_s: float = MAX_LAST_SAVE_AGE_S) -> Verdict:
    """Fails when the last BGSAVE failed, when the server has never completed a save since it started while
    writes wait (whatever LASTSAVE says), or when the last RDB save (LASTSAVE) is older than `max_age_s` while
    writes wait. A server with no changes since its last save is not at risk: its RDB on disk is current
    however old it is (the strategy's alert would fire forever on an idle cache)."""
    last = int(info.get("rdb_last_save_time", 0))
    age = now.timestamp() - last
    changes = int(info.get("rdb_changes_since_last_save", 0))
    status = str(info.get("rdb_last_bgsave_status", "ok"))
    never_saved = _never_saved(info, now)
    meta = {
        "last_save_age_s": round(age),
        "max_age_s": max_age_s,
        "changes_since_last_save": changes,
        "last_bgsave_status": status,
        "bgsave_in_progress": bool(int(info.get("rdb_bgsave_in_progress", 0))),
        "never_saved": never_saved,
    }
    if status != "ok":
        return Verdict(
            False,
            f"The last BGSAVE failed (rdb_last_bgsave_status={status}); the server cannot write its RDB "
            "(disk full? fork failed? see the server log)",
            meta,
        )
    if never_saved and changes > 0:
        started_ago = float(info.get("uptime_in_seconds") or age)
        return Verdict(
            False,
            f"The server has never completed an RDB save since it started {started_ago / 60:.1f} min ago and "
            f"{changes:,} changes are not saved (LASTSAVE is only its start time): a restart loses them. Fix: "
            "set save rules (save 900 1 300 10 60 10000) or appendonly yes, or run BGSAVE now",
            meta,
        )
    if age > max_age_s and changes > 0:
        return Verdict(
            False,
            f"The last successful RDB save was {age / 60:.0f} min ago (limit {max_age_s / 60:.0f}) and "
            f"{changes:,} changes are not saved: persistence is disabled or failing (check the save rules)",
            meta,
        )
    if age > max_age_s:
        return Verdict(True, f"Last save {age / 60:.0f} min ago, but nothing changed since: the RDB is current", meta)
    if never_saved:
        return Verdict(True, f"No save since the start {age / 60:.1f} min ago, but nothing changed since", meta)
    return Verdict(True, f"Last successful save {age / 60:.1f} min ago; last BGSAVE ok", meta)


def persistence_incident(info: dict, now: datetime, max_age_s: float = MAX_LAST_SAVE_AGE_S) -> tuple[str, str] | None:
    """(incident id, reason) when the server's own persistence is failing or has never saved, else None. The
    id stays the same for as long as one incident lasts (it is keyed on LASTSAVE), so the sensor asks for one
    snapshot per incident; a later save that fails again is a new incident."""
    verdict = last_save_verdict(info, now, max_age_s)
    if verdict.passed:
        return None
    last = int(info.get("rdb_last_save_time", 0))
    if verdict.metadata["last_bgsave_status"] != "ok":
        kind = "bgsave-failed"
    else:  # a never-saved server's LASTSAVE is its start time: one incident per restart
        kind = "never-saved" if verdict.metadata["never_saved"] else "save-too-old"
    return f"{kind}-{last}", verdict.description
