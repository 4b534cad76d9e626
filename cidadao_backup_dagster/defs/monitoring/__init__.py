"""Monitoring: alert sensors (failed runs, failed checks) and the backup health report."""

import dagster as dg

from ..protection.classes import ArtifactClass
from .alerts import alert_sensors, check_alert_sensor, run_failure_alert_sensor
from .report import REPORT_ASSET, build_report_asset, build_report_job, build_report_schedule, build_report_sensor


def build_defs(classes: list[ArtifactClass], resource_keys: set[str], asset_checks: list) -> dg.Definitions:
    """`classes`: every domain's artifact classes (the report's rows); `resource_keys`: the code location's
    resources (a class's storage and series may need any of them); `asset_checks`: the checks whose latest
    results the report shows."""
    check_keys = {key for checks_def in asset_checks for key in checks_def.check_keys}
    report = build_report_asset(classes, resource_keys, check_keys)
    job = build_report_job(report)
    return dg.Definitions(
        assets=[report],
        jobs=[job],
        schedules=[build_report_schedule(job)],
        sensors=[*alert_sensors, build_report_sensor(job)],
    )


__all__ = ["REPORT_ASSET", "build_defs", "check_alert_sensor", "run_failure_alert_sensor"]
