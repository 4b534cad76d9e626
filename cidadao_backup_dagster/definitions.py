"""The code location: `dg dev`, `dagster dev -w workspace.yaml` or `-m cidadao_backup_dagster.definitions`.

Backups, checks, drills and recovery jobs are generated per source (defs/sources.py): one PostgreSQL
database and one Redis from DATABASE_URL / REDIS_URL, or every source listed in BACKUP_SOURCES_FILE.
The environment is read once, here, into defs/settings.py's Settings (docs/configuration.md)."""

import dagster as dg

from .core.sources import Sources
from .defs import exports, monitoring, postgres, protection, recovery, redis
from .defs.postgres import pitr
from .defs.resources import build_resources
from .defs.settings import Settings
from .defs.sources import DomainDefs, PgBinding, RedisBinding

HEALTH_CHECKS_JOB = "backup_health_checks_job"

# Every run executes its steps in the run's own process: a backup and its checks (integrity, size, freshness,
# ...) are one short chain of I/O-bound steps, and Dagster's default multiprocess executor would start a fresh
# interpreter per step (~2 s and ~150 MB each, most of a small backup's time and CPU). The checks stay separate
# steps, so the UI shows each with its own history, and a failed blocking check still fails its step and skips
# what depends on it. Set on the Definitions, not per job: `dg launch --assets` and the UI's Materialize run the
# implicit asset job, which only takes the code location's executor. The run config keeps the default
# executor's shape, so a run may still ask for step processes: `execution: {config: {multiprocess: {}}}`.
EXECUTOR = dg.multi_or_in_process_executor.configured(
    lambda config: config,  # the stock executor validates the fields under either mode
    name="in_process_by_default",
    config_schema=dg.Field(
        dg.Selector(
            {
                "in_process": dg.Field(dg.Permissive(), default_value={}),
                "multiprocess": dg.Field(dg.Permissive(), default_value={}),
            }
        ),
        default_value={"in_process": {}},
    ),
)


def build_domains(settings: Settings) -> list[DomainDefs]:
    sources = settings.sources
    pg = [PgBinding.of(spec, settings) for spec in sources.postgres]
    rd = [RedisBinding.of(spec, settings) for spec in sources.redis]
    return [
        *(postgres.build(b) for b in pg),
        *(pitr.build(b) for b in pg if pitr.pitr_for(b)),  # opt-in: pitr: true, or POSTGRES_PITR=on
        *(recovery.build(b) for b in pg),
        *(redis.build(b) for b in rd),
        exports.build(PgBinding.of(sources.export_source, settings)),
    ]


def build_health_checks(checks: list):
    # Checks that judge a whole series (is the newest backup recent? did a drill pass lately?) also run hourly
    # on their own: if backups or drills stop running, nothing inside those runs would notice.
    job = dg.define_asset_job(
        HEALTH_CHECKS_JOB,
        selection=dg.AssetSelection.checks(*checks),
        description="RPO freshness of every backup series and recency of the last passing restore drill.",
    )
    schedule = dg.ScheduleDefinition(
        name="backup_health_checks_schedule",
        job=job,
        cron_schedule="17 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    return job, schedule


def build_defs(sources: Sources | None = None, settings: Settings | None = None) -> dg.Definitions:
    """Definitions with settings read from the environment as it is now (tests and the quick start
    call this after setting variables; the code location uses `defs` below). `sources` replaces
    BACKUP_SOURCES_FILE's (the BackupSources component passes its own)."""
    settings = settings or Settings.from_environ(sources=sources)
    domains = build_domains(settings)
    # PITR's base backups and WAL: one retention plan and one report row per source with PITR on
    classes = [*(c for d in domains for c in d.artifact_classes), *protection.pitr_retention_classes(settings)]
    resources = {**build_resources(settings), **exports.build_export_resources(settings)}
    targets = [t for d in domains for t in d.storage_targets]
    protection_defs = protection.build_defs(classes, targets, settings)
    parts = [*(d.defs for d in domains), protection_defs]
    checks = [c for part in parts for c in part.asset_checks or []]
    health_job, health_schedule = build_health_checks(
        [*(c for d in domains for c in d.health_checks), *(protection_defs.asset_checks or [])]
    )
    return dg.Definitions.merge(
        *parts,
        monitoring.build_defs(classes, set(resources), checks),
        protection.build_sweeper_defs(settings),
        dg.Definitions(jobs=[health_job], schedules=[health_schedule], resources=resources, executor=EXECUTOR),
    )


defs = build_defs()
