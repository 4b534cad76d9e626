"""The backup health report as plain Python: per artifact class, the newest valid artifact and its age against
the RPO, the last restore drill's duration against the RTO, the size trend and the latest check results,
read from storage (manifests, drill reports) and rendered as a markdown table. The Dagster asset only feeds
it storages, targets and check results (core stays Dagster-free).

RPO / RTO targets come from the strategy's tables ("Recovery Point Objective", "Recovery Time Objective"):
PostgreSQL RPO 24 h (alert at 48 h), RTO 30 min (database corruption); the weekly external copy RTO 2 h
(complete data loss); Redis: the last snapshot (hourly, alert at 2 h), RTO 5 min (cache failure); critical
investigations (the exports) RPO 7 days.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from ..artifacts.drill_reports import is_report_name
from ..artifacts.manifest import iso, parse_iso, valid_manifests
from ..artifacts.storage import Storage
from ..errors import BackupError
from ..postgres.pitr.health import BASE_MAX_AGE, RecoverableWindow, recoverable_window

LEVELS = ("ok", "warning", "high", "critical")
ICONS = {"ok": "✅", "warning": "🟡", "high": "🟠", "critical": "🔴", "skipped": "⏭️", "error": "❌"}
SIZE_DEVIATION = 0.5  # strategy: backup_size_deviation > 50%


@dataclass(frozen=True)
class Targets:
    rpo_hours: float | None  # the recovery point objective
    alert_hours: float | None  # the freshness check's limit (the alert)
    rto_seconds: float | None = None  # the recovery time objective its restore must meet
    rto_scenario: str = ""
    drilled: bool = False  # a restore drill exists for this class; no drill report is then a finding


# (kind, cadence) -> targets; the kind and cadence are the first and last segments of a class's series.
DEFAULT_TARGETS = {
    ("postgres", "daily"): Targets(24, 48, 30 * 60, "database corruption < 30 min", drilled=True),
    ("postgres", "weekly"): Targets(7 * 24, 8 * 24 + 6, 2 * 3600, "complete data loss < 2 h"),
    ("redis", "hourly"): Targets(1, 2, 5 * 60, "cache failure < 5 min", drilled=True),
    ("exports", "daily"): Targets(7 * 24, 7 * 24),  # strategy: "Critical Investigations: 7 days"
    ("exports", "weekly"): Targets(7 * 24, 15 * 24),
    # PITR (postgres/<source>/base): the newest recoverable instant, WAL archived every 5 min, alert at 10 min
    ("postgres", "base"): Targets(5 / 60, 10 / 60, 30 * 60, "point-in-time recovery < 30 min", drilled=True),
}
CADENCE_HOURS = {"hourly": 1, "daily": 24, "weekly": 7 * 24, "monthly": 31 * 24}


def default_targets(series: str) -> Targets:
    kind, cadence = series.split("/", 1)[0], series.rsplit("/", 1)[-1]
    if (kind, cadence) in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[(kind, cadence)]
    hours = CADENCE_HOURS.get(cadence)
    return Targets(hours, 2 * hours if hours else None)


@dataclass(frozen=True)
class CheckStatus:
    """The latest completed evaluation of one check (from the Dagster instance)."""

    name: str
    passed: bool
    severity: str  # ERROR | WARN
    partition: str | None = None
    timestamp: float | None = None


@dataclass
class ClassHealth:
    name: str
    status: str  # ok | warning | high | critical | skipped | error
    location: str = ""
    note: str = ""
    asset: str | None = None
    newest_partition: str | None = None
    taken_at: str | None = None
    age_hours: float | None = None
    targets: Targets = field(default_factory=lambda: Targets(None, None))
    stored_bytes: int | None = None
    median_bytes: float | None = None
    size_change_pct: float | None = None
    history_count: int = 0
    drill: dict | None = None
    checks: list[CheckStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def raise_to(self, level: str, problem: str) -> None:
        self.problems.append(problem)
        if self.status in LEVELS and LEVELS.index(level) > LEVELS.index(self.status):
            self.status = level


def skipped(name: str, reason: str) -> ClassHealth:
    return ClassHealth(name, "skipped", note=f"not configured: {reason}")


def errored(name: str, reason: str, location: str = "") -> ClassHealth:
    return ClassHealth(name, "error", location=location, note=f"could not be read: {reason}")


def latest_drill(storage: Storage, series: str, root: str | None = None) -> dict | None:
    """The newest restore-drill report (passed or not) that proved an artifact of `series`. Drills write to
    `drills/<kind>/<source>/<month>/report.json` beside a series `<kind>/<source>/<cadence>` (or under `root`)."""
    root = root or "drills/" + series.rsplit("/", 1)[0] + "/"
    inside = storage.uri(series) + "/"
    best = None
    for key in storage.list_keys(root):
        if not is_report_name(key.rsplit("/", 1)[-1]):
            continue
        try:
            report = json.loads(storage.read_bytes(key))
            finished = report["finished_at"]
        except (ValueError, KeyError, TypeError):
            continue
        if not str(report.get("backup_uri", "")).startswith(inside):
            continue  # a drill of another series of the same source (e.g. the daily one for the weekly copy)
        if best is None or finished > best["finished_at"]:
            best = report
    return best


def class_health(
    name: str,
    storage: Storage,
    series: str,
    *,
    now: datetime,
    targets: Targets | None = None,
    size_history: int = 7,
    checks_for: Callable[[str], Sequence[CheckStatus]] | None = None,
    asset: str | None = None,
) -> ClassHealth:
    """One row of the report. `checks_for(asset)` returns the latest check results of the asset that writes
    the series (named in its newest manifest, else `asset`)."""
    targets = targets or default_targets(series)
    if is_pitr_series(series):
        return pitr_health(name, storage, series, now=now, targets=targets, checks_for=checks_for, asset=asset)
    row = ClassHealth(name, "ok", location=storage.uri(series), targets=targets, asset=asset)
    valid = valid_manifests(storage, series, limit=size_history + 1)
    if not valid and targets.rpo_hours is None and targets.alert_hours is None:
        row.note = "none stored (made on demand only)"  # e.g. on-demand backups: having none is no finding
    elif not valid:
        row.raise_to("critical", "no valid artifact")
    else:
        newest = valid[-1]
        row.asset = newest.run.asset or asset
        row.newest_partition = newest.dagster_partition
        row.taken_at = iso(newest.taken_at)
        row.age_hours = round((now - newest.taken_at).total_seconds() / 3600, 2)
        if targets.alert_hours is not None and row.age_hours > targets.alert_hours:
            row.raise_to("critical", f"newest is {row.age_hours:.1f} h old, over the {targets.alert_hours:g} h limit")
        elif targets.rpo_hours is not None and row.age_hours > targets.rpo_hours:
            row.raise_to("warning", f"newest is {row.age_hours:.1f} h old, over the {targets.rpo_hours:g} h RPO")
        row.stored_bytes = newest.stored_bytes
        previous = [m.stored_bytes for m in valid[:-1]]
        row.history_count = len(previous)
        if previous:
            row.median_bytes = statistics.median(previous)
            if row.median_bytes:
                change = (newest.stored_bytes - row.median_bytes) / row.median_bytes
                row.size_change_pct = round(change * 100, 1)
                if abs(change) > SIZE_DEVIATION:
                    row.raise_to("warning", f"size {change:+.0%} from the median of the previous {len(previous)}")
    row.drill = _drill_summary(storage, series, targets, now, row)
    if checks_for and row.asset:
        _judge_checks(row, checks_for(row.asset))
    return row


def _judge_checks(row: ClassHealth, checks: Sequence[CheckStatus]) -> None:
    row.checks = sorted(checks, key=lambda c: c.name)
    for check in row.checks:
        if not check.passed:
            level = "high" if check.severity.upper() == "ERROR" else "warning"
            row.raise_to(level, f"check {check.name} failed ({check.severity.upper()})")


def _drill_summary(
    storage: Storage, series: str, targets: Targets, now: datetime, row: ClassHealth, root: str | None = None
) -> dict | None:
    try:
        report = latest_drill(storage, series, root)
    except BackupError as exc:
        row.raise_to("warning", f"drill reports unreadable ({exc})")
        return None
    if report is None:
        if targets.drilled:
            row.raise_to("high", "no restore drill report: this series was never restored")
        return None
    rto = report.get("rto_seconds") or targets.rto_seconds
    duration = report.get("duration_seconds")
    summary = {
        "partition": report.get("partition"),
        "passed": bool(report.get("passed")),
        "duration_s": float(duration) if duration is not None else None,
        "rto_s": float(rto) if rto else None,
        "finished_at": report["finished_at"],
        "age_days": round((now - parse_iso(report["finished_at"])).total_seconds() / 86400, 1),
        "proved": report.get("backup_partition"),
    }
    if not summary["passed"]:
        row.raise_to("high", f"last drill ({summary['partition']}) failed")
    elif summary["duration_s"] is not None and summary["rto_s"] and summary["duration_s"] > summary["rto_s"]:
        row.raise_to("high", f"last drill took {summary['duration_s']:.0f} s, over the {summary['rto_s']:.0f} s RTO")
    if summary["age_days"] > 35:
        row.raise_to("warning", f"last drill is {summary['age_days']:.0f} days old")
    return summary


# ------------------------------------------------------------------------------------------------ render


def human_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return "—"


def _num(x: float) -> str:
    return f"{x:.1f}".removesuffix(".0")


def _hours(h: float | None) -> str:
    if h is None:
        return "—"
    return f"{_num(h / 24)} d" if h >= 72 else f"{_num(h)} h"


def _seconds(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 120:
        return f"{_num(s)} s"
    return f"{_num(s / 60)} min" if s < 2 * 3600 else f"{_num(s / 3600)} h"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _age_cell(row: ClassHealth) -> str:
    if row.age_hours is None:
        return "—"
    t = row.targets
    text = f"{_hours(row.age_hours)} / RPO {_hours(t.rpo_hours)}"
    return text + (f" (alert {_hours(t.alert_hours)})" if t.alert_hours else "")


def _drill_cell(row: ClassHealth) -> str:
    d, t = row.drill, row.targets
    if row.status in ("skipped", "error"):
        return "—"
    if d is None:
        rto = f"RTO {_seconds(t.rto_seconds)}" if t.rto_seconds else "no RTO target"
        return f"none ({rto})" if t.drilled else f"— ({rto}; no drill for this class)"
    icon = ICONS["ok"] if d["passed"] else ICONS["critical"]
    text = f"{icon} {d['partition']}: {_seconds(d['duration_s'])}"
    if d["rto_s"] and d["duration_s"] is not None:
        text += f" / RTO {_seconds(d['rto_s'])} ({100 * d['duration_s'] / d['rto_s']:.0f}%)"
    return text + f", {d['age_days']:g} d ago"


def _size_cell(row: ClassHealth) -> str:
    if row.stored_bytes is None:
        return "—"
    if row.median_bytes is None:
        return f"{human_bytes(row.stored_bytes)} (no history yet)"
    return f"{human_bytes(row.stored_bytes)} vs median {human_bytes(row.median_bytes)} ({row.size_change_pct:+.0f}%)"


def _checks_cell(row: ClassHealth) -> str:
    if not row.checks:
        return "— (no results yet)" if row.asset else "—"
    failed = [c for c in row.checks if not c.passed]
    if not failed:
        return f"{ICONS['ok']} {len(row.checks)} passed"
    parts = []
    for c in failed:
        icon = ICONS["high"] if c.severity.upper() == "ERROR" else ICONS["warning"]
        parts.append(f"{icon} {c.name}" + (f" [{c.partition}]" if c.partition else ""))
    passed = len(row.checks) - len(failed)
    return ", ".join(parts) + (f"; {passed} passed" if passed else "")


def render_markdown(rows: Sequence[ClassHealth], now: datetime) -> str:
    lines = [
        f"**Backup health** at {iso(now)} — "
        + ", ".join(
            f"{sum(r.status == s for r in rows)} {s}"
            for s in (*LEVELS, "skipped", "error")
            if any(r.status == s for r in rows)
        ),
        "",
        "| | class | newest valid | age / RPO | last drill / RTO | size (last vs median of previous) | checks |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in rows:
        newest = f"`{r.newest_partition}`" if r.newest_partition else ("none" if r.status != "skipped" else "—")
        lines.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in (
                    ICONS[r.status],
                    f"**{r.name}**",
                    newest,
                    _age_cell(r),
                    _drill_cell(r),
                    _size_cell(r),
                    _checks_cell(r),
                )
            )
            + " |"
        )
        if r.note or r.problems:
            notes.append(
                f"- **{r.name}**"
                + (f" ({r.location})" if r.location else "")
                + ": "
                + "; ".join([*([r.note] if r.note else []), *r.problems])
            )
    lines += _window_lines(rows, now)
    if notes:
        lines += ["", "Findings:", *notes]
    return "\n".join(lines)


def numeric_metadata(rows: Sequence[ClassHealth]) -> dict[str, float | int]:
    """Numbers the UI plots across materializations (per class: age, size, size change, drill duration)."""
    out: dict[str, float | int] = {
        "classes": len(rows),
        "classes_ok": sum(r.status == "ok" for r in rows),
        "classes_with_findings": sum(r.status in ("warning", "high", "critical", "error") for r in rows),
        "classes_skipped": sum(r.status == "skipped" for r in rows),
    }
    for r in rows:
        if r.age_hours is not None:
            out[f"{r.name}_age_hours"] = r.age_hours
        if r.stored_bytes is not None:
            out[f"{r.name}_stored_bytes"] = r.stored_bytes
        if r.size_change_pct is not None:
            out[f"{r.name}_size_change_pct"] = r.size_change_pct
        if r.drill and r.drill["duration_s"] is not None:
            out[f"{r.name}_drill_duration_s"] = r.drill["duration_s"]
    out.update(_window_numbers(rows))
    return out


def with_alert_limit(targets: Targets, alert_hours: float | None) -> Targets:
    return targets if alert_hours is None else replace(targets, alert_hours=alert_hours)


# ------------------------------------------------------------------------------------------------ PITR


@dataclass
class PitrHealth(ClassHealth):
    """A PITR source's row (series `postgres/<source>/base`): its newest artifact is the newest recoverable instant,
    its age how far that lags behind now, and it carries the recoverable window."""

    window: RecoverableWindow | None = None


def is_pitr_series(series: str) -> bool:
    parts = str(series).split("/")
    return len(parts) == 3 and parts[0] == "postgres" and parts[2] == "base"


def pitr_health(
    name: str,
    storage: Storage,
    series: str,
    *,
    now: datetime,
    targets: Targets,
    checks_for: Callable[[str], Sequence[CheckStatus]] | None = None,
    asset: str | None = None,
) -> PitrHealth:
    """Judged by what a restore to an instant can reach: the newest recoverable instant against the RPO targets,
    a window with a base to start from, the newest base's age; the PITR drill and the base and WAL checks."""
    source = series.split("/")[1]
    row = PitrHealth(name, "ok", location=storage.uri(series), targets=targets, asset=asset)
    window = row.window = recoverable_window(storage, source)
    row.newest_partition = window.newest_base
    if window.latest is None:
        row.raise_to("critical", "nothing is recoverable to an instant: " + "; ".join(window.problems))
    else:
        lag = (now - window.latest).total_seconds()
        row.taken_at, row.age_hours = iso(window.latest), round(lag / 3600, 4)
        limit, rpo = targets.alert_hours, targets.rpo_hours
        if limit is not None and lag > limit * 3600:
            row.raise_to(
                "critical", f"the newest recoverable instant is {_seconds(lag)} old, over {_seconds(limit * 3600)}"
            )
        elif rpo is not None and lag > rpo * 3600:
            row.raise_to("warning", f"the newest recoverable instant is {_seconds(lag)} old, over the RPO")
        for problem in window.problems:
            row.raise_to("high" if window.earliest is None else "warning", problem)
    if window.newest_base_at is not None and now - window.newest_base_at > BASE_MAX_AGE:
        row.raise_to("warning", f"the newest base backup is {(now - window.newest_base_at).days} days old")
    row.drill = _drill_summary(storage, series, targets, now, row, root=f"drills/postgres-pitr/{source}/")
    if checks_for and asset:  # the base backup asset's checks and the WAL archive's (wal_continuity, RPO, slot)
        wal = "postgres_wal_archive".join(asset.rsplit("postgres_base_backup", 1))
        _judge_checks(row, [*checks_for(asset), *(checks_for(wal) if wal != asset else [])])
    return row


def _window_lines(rows: Sequence[ClassHealth], now: datetime) -> list[str]:
    windows = [(r, r.window) for r in rows if isinstance(r, PitrHealth) and r.window is not None]
    if not windows:
        return []
    lines = [
        "",
        "Point-in-time recovery: the instants a restore can reach now",
        "",
        "| class | recoverable from | recoverable until | achieved RPO (last WAL run) | behind now |",
        "|---|---|---|---|---|",
    ]
    for r, w in windows:
        lag = w.lag(now)
        cells = (
            f"**{r.name}**",
            iso(w.earliest) if w.earliest else "none",
            iso(w.latest) if w.latest else "none",
            _seconds(w.achieved_rpo_seconds) if w.achieved_rpo_seconds is not None else "—",
            _seconds(lag.total_seconds()) if lag is not None else "—",
        )
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _window_numbers(rows: Sequence[ClassHealth]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in rows:
        w = r.window if isinstance(r, PitrHealth) else None
        if w is not None and w.achieved_rpo_seconds is not None:
            out[f"{r.name}_achieved_rpo_s"] = w.achieved_rpo_seconds
        if w is not None and w.earliest and w.latest:
            out[f"{r.name}_recoverable_hours"] = round((w.latest - w.earliest).total_seconds() / 3600, 2)
    return out
