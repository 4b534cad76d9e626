"""Recovery: restore and row-recovery jobs for the on-call engineer, and the monthly restore drill."""

import dagster as dg

from .drill import (
    drill_duration_within_rto,
    drill_passed,
    postgres_restore_drill,
    postgres_restore_drill_job,
    postgres_restore_drill_schedule,
    recent_passing_drill,
)
from .jobs import recover_rows, restore_postgres

# Series-wide checks that must run on their own schedule too (see definitions.py).
health_checks = [recent_passing_drill]

defs = dg.Definitions(
    assets=[postgres_restore_drill],
    asset_checks=[drill_passed, drill_duration_within_rto, recent_passing_drill],
    jobs=[restore_postgres, recover_rows, postgres_restore_drill_job],
    schedules=[postgres_restore_drill_schedule],
)
