"""What the scheduled backup assets (PostgreSQL dumps, Redis snapshots) share in a run: the progress they log and
what their manifest records about the run."""

from collections.abc import Callable

import dagster as dg

from ..core.artifacts.lateness import Lateness
from ..core.artifacts.pipeline import Progress
from ..core.artifacts.storage import MiB


def log_progress(context: dg.AssetExecutionContext, what: str, taken: str) -> Callable[[Progress], None]:
    """The pipeline's progress callback: `<what> progress: N MiB <taken>, N MiB stored, ...` in the run's log."""

    def progress(p: Progress) -> None:
        context.log.info(
            f"{what} progress: {p.raw_bytes / MiB:,.0f} MiB {taken}, {p.stored_bytes / MiB:,.0f} MiB stored, "
            f"{p.mb_per_s:,.1f} MiB/s after {p.elapsed:,.0f} s"
        )

    return progress


def run_record(context: dg.AssetExecutionContext, lateness: Lateness) -> dict:
    """What the manifest keeps about the run that wrote it: its id, the asset, and whether the partition was late."""
    return {"dagster_run_id": context.run.run_id, "asset": context.asset_key.to_user_string(), **lateness.record()}
