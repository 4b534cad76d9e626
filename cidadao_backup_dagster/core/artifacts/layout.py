"""Where a backup series lives in storage, and one listing of it grouped by partition.

<storage root>/<kind>/<source>/<cadence>/<partition>/manifest-<written at>-<random>.json   (one per run)
<storage root>/<kind>/<source>/<cadence>/<partition>/<source>_<partition>_<written at>-<random>.<ext>
<storage root>/<kind>/<source>/<cadence>/<partition>/manifest.json      (older layout: still read)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from .clock import utc_now
from .storage import Storage

MANIFEST_NAME = "manifest.json"


def series_prefix(kind: str, source: str, cadence: str) -> str:
    return f"{kind}/{source}/{cadence}"


class Series(str):
    """A series prefix (new artifacts are written under it) that also reads older prefixes of the same source.

    PostgreSQL series were once keyed by the database name in the URL (`postgres/<database>/daily`); they are now
    keyed by the source's stable name. Readers (restores, checks, retention) see both, so a series started before
    the upgrade stays restorable and under retention; writers only ever use the new one."""

    legacy: tuple[str, ...]

    def __new__(cls, prefix: str, legacy: tuple[str, ...] = ()):
        series = super().__new__(cls, prefix)
        series.legacy = tuple(p for p in dict.fromkeys(legacy) if p and p != prefix)
        return series


def read_prefixes(series: str) -> tuple[str, ...]:
    return (str(series), *getattr(series, "legacy", ()))


def partition_prefix(series: str, partition: str) -> str:
    return f"{series}/{partition}"


# ------------------------------------------------------------------------------------------ layout
# Every run writes its own manifest, `manifest-<written at>-<random>.json`, and never overwrites one: two runs
# of a partition (a re-run, a retry, a backfill, two CLIs at once) both stay, and an object-locked bucket works.
# A partition's current artifact is its newest valid manifest. `manifest.json` (one per partition, the layout
# before per-run manifests) is still read, as the oldest manifest of its partition.
RUN_MANIFEST_PREFIX = "manifest-"


def is_manifest_name(name: str) -> bool:
    return name == MANIFEST_NAME or (name.startswith(RUN_MANIFEST_PREFIX) and name.endswith(".json"))


def _write_order(key: str) -> tuple[int, str]:
    name = key.rsplit("/", 1)[-1]
    return (0, "") if name == MANIFEST_NAME else (1, name)


def run_token(now: datetime | None = None) -> str:
    """`<UTC to the microsecond>Z-<8 hex>`: sorts by time, and two runs in one microsecond still differ."""
    return f"{(now or utc_now()).astimezone(UTC):%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:8]}"


def new_manifest_key(series: str, partition: str) -> str:
    return f"{partition_prefix(series, partition)}/{RUN_MANIFEST_PREFIX}{run_token()}.json"


@dataclass(frozen=True)
class SeriesIndex:
    """One listing of a series, grouped by partition: manifest keys (oldest written first) and the other
    objects (data objects, finished or not)."""

    manifests: dict[str, list[str]]
    objects: dict[str, list[str]]

    @property
    def partitions(self) -> list[str]:
        """Partitions with at least one manifest, oldest first (partition keys sort by time)."""
        return sorted(self.manifests)


def index_series(storage: Storage, series: str, partition: str | None = None) -> SeriesIndex:
    """List a series (or one partition of it) once. A listing error raises StorageReadError: an unreadable
    bucket is never an empty one."""
    manifests: dict[str, list[str]] = {}
    objects: dict[str, list[str]] = {}
    for root in read_prefixes(series):
        prefix = f"{partition_prefix(root, partition)}/" if partition else f"{root}/"
        for key in storage.list_keys(prefix):
            rest = key[len(root) + 1 :]
            if "/" not in rest:
                continue  # something at the series root is not a partition's
            part, name = rest.split("/", 1)
            (manifests if is_manifest_name(name) else objects).setdefault(part, []).append(key)
    for keys in manifests.values():
        keys.sort(key=_write_order)
    return SeriesIndex(manifests, objects)
