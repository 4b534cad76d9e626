"""Late partitions: a snapshot-type backup (pg_dump, a Redis RDB, a full-table CSV) holds the data of the
moment it runs, whatever its partition says. Labelling today's data "2025-06-01" would make restore-by-date
and recover-by-date pick the wrong thing, so a partition whose window ended longer ago than a grace period
is refused unless the operator asks for it on purpose, and then the manifest says `late: true`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..errors import ConfigurationError, RefusedError

# Strategy-aligned defaults: a missed daily run may be caught up the next day, a weekly one within the week.
DEFAULT_GRACE_HOURS = {"hourly": 6.0, "daily": 48.0, "weekly": 8 * 24.0}
GRACE_VARIABLE = "BACKUP_LATE_GRACE_HOURS"


def parse_grace(text: str) -> dict[str, float]:
    """`daily=48,weekly=192,hourly=6` (any subset) over the defaults."""
    out = dict(DEFAULT_GRACE_HOURS)
    for item in filter(None, (x.strip() for x in (text or "").split(","))):
        name, _, value = item.partition("=")
        name = name.strip()
        try:
            hours = float(value)
        except ValueError:
            hours = -1.0
        if name not in out or hours < 0:
            raise ConfigurationError(
                GRACE_VARIABLE, f"{item!r} is not cadence=hours", "write e.g. daily=48,weekly=192,hourly=6"
            )
        out[name] = hours
    return out


@dataclass(frozen=True)
class Lateness:
    partition: str
    window_end: datetime
    now: datetime
    grace: timedelta

    @property
    def late(self) -> bool:
        return self.now - self.window_end > self.grace

    def record(self) -> dict:
        """What the manifest and the metadata keep about the label (the snapshot time is recorded anyway)."""
        return {"late": self.late, "partition_end": self.window_end.astimezone(UTC).isoformat()}


def check_late(
    partition: str, window_end: datetime, *, cadence: str, grace_hours: dict[str, float], allow_late: bool,
    what: str, now: datetime | None = None,
) -> Lateness:  # fmt: skip
    """Refuse (RefusedError, nothing written) a partition whose window ended more than the cadence's grace ago,
    unless `allow_late`. Returns the lateness to record."""
    now = now or datetime.now(UTC)
    lateness = Lateness(partition, window_end, now, timedelta(hours=grace_hours[cadence]))
    if lateness.late and not allow_late:
        ago = now - window_end
        raise RefusedError(
            f"Refusing to back up partition {partition}: it ended {_human(ago)} ago "
            f"({window_end:%Y-%m-%d %H:%M} UTC), past the {grace_hours[cadence]:g} h grace for {cadence} {what}. "
            f"A snapshot taken now holds the data of {now:%Y-%m-%d %H:%M} UTC, not of {partition}, so restores "
            "and recoveries by date would pick it wrongly. Nothing was written. To back up now, materialize the "
            "current partition (or run the on-demand backup job); to store today's data under this label on "
            "purpose, launch with config allow_late: true (the manifest then records late: true and the real "
            f"snapshot time); to change the grace, set {GRACE_VARIABLE}."
        )
    return lateness


def _human(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 72 else f"{hours / 24:.0f} days"
