"""Recovery, per PostgreSQL source: restore and row-recovery jobs for the on-call engineer, and the monthly
restore drill."""

import dagster as dg

from ..drills import recent_drill_checks
from ..sources import DomainDefs, PgBinding
from .drill import build_drill
from .jobs import build_recover_rows_job, build_restore_job


def build(binding: PgBinding) -> DomainDefs:
    drill, drill_checks, drill_job, drill_schedule = build_drill(binding)
    recent = recent_drill_checks(drill_checks)
    return DomainDefs(
        defs=dg.Definitions(
            assets=[drill],
            asset_checks=drill_checks,
            jobs=[build_restore_job(binding), build_recover_rows_job(binding), drill_job],
            schedules=[drill_schedule],
        ),
        health_checks=recent,  # series-wide: must also run hourly on its own (see definitions.py)
    )
