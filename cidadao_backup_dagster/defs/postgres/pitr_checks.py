"""The point-in-time recovery checks: on the WAL archive its continuity, the newest recoverable instant (RPO) and
the WAL the slot holds on the server; on the base backup its integrity (the newest chain re-read against its
backup_manifest) and its age. Built by one factory; what passes is decided in core/postgres/pitr/health.py."""

import dagster as dg

from ...core.artifacts.manifest import iso
from ...core.errors import BackupError, ConfigurationError
from ...core.postgres.pitr import slot_name_for
from ...core.postgres.pitr.health import (
    BASE_MAX_AGE,
    archive_status,
    base_freshness,
    newest_base,
    slot_verdict,
    verify_newest_base,
)
from ...core.postgres.pitr.server import slot_state
from ..failures import failure
from ..settings import Settings
from ..sources import PgBinding

MAX_AGE_VARIABLE = "POSTGRES_WAL_MAX_AGE_MINUTES"  # RPO check: default two 5-minute intervals
SLOT_WARN_VARIABLE = "POSTGRES_SLOT_WARN_MB"  # slot check: WARN above, ERROR above 4x


def number_setting(settings: Settings, variable: str, default: float) -> float:
    text = settings.get(variable)
    try:
        return float(text) if text else default
    except ValueError:
        raise ConfigurationError(variable, f"{text!r} is not a number", f"e.g. {variable}={default:g}") from None


def build_wal_checks(binding: PgBinding, wal: dg.AssetsDefinition) -> list:
    max_age_min = number_setting(binding.settings, MAX_AGE_VARIABLE, 10)
    warn_mb = number_setting(binding.settings, SLOT_WARN_VARIABLE, 1024)
    checks = {
        "wal_continuity": (
            "The WAL archive has every segment from the oldest base backup's start to its newest file (as wal-g "
            "wal-verify): a gap makes every instant after it unrecoverable from the bases before it.",
            _continuity,
        ),
        "recoverable_within_rpo": (
            f"The newest recoverable instant is at most {max_age_min:g} minutes old ({MAX_AGE_VARIABLE}).",
            lambda binding, context: _within_rpo(binding, context, max_age_min),
        ),
        "slot_retention": (
            f"WAL the replication slot holds on the server: WARN above {warn_mb:g} MiB ({SLOT_WARN_VARIABLE}), "
            "ERROR above 4x or when the slot is lost.",
            lambda binding, context: _slot_retention(binding, context, warn_mb),
        ),
    }
    return [_check(binding, wal, name, description, judge) for name, (description, judge) in checks.items()]


def build_base_checks(binding: PgBinding, base: dg.AssetsDefinition) -> list:
    checks = {
        "base_integrity": (
            "The newest base backup, every member of its chain, re-read: its bytes against its manifest's SHA-256s "
            "and every file against its backup_manifest (pg_verifybackup), in RESTORE_TMPDIR, as a restore checks "
            "it. ERROR names the damaged member.",
            _integrity,
            ("recovery", "encryption"),
        ),
        "base_freshness": (
            f"The newest base backup is at most {BASE_MAX_AGE.days} days old (weekly, a day of grace): recovery "
            "replays the WAL since it.",
            _base_freshness,
            (),
        ),
    }
    return [_check(binding, base, name, *args) for name, args in checks.items()]


def _check(binding: PgBinding, asset: dg.AssetsDefinition, name: str, description: str, judge, resources=()):
    """One PITR check on `asset`: `judge(binding, context)` gives its result (reading the source, its storage and
    the named `resources`). Never blocking: the WAL archive goes on whatever a check says."""

    @dg.asset_check(
        asset=asset,
        name=name,
        required_resource_keys={binding.source_key, binding.storage_key, *resources},
        description=description,
    )
    def check(context) -> dg.AssetCheckResult:
        return judge(binding, context)

    return check


def _integrity(binding: PgBinding, context) -> dg.AssetCheckResult:
    source = binding.source(context.resources)
    try:
        found = verify_newest_base(
            binding.storage(context.resources).open(), source.series_name(), bin_dir=source.bin_dir,
            identities=context.resources.encryption.identities(), tmp_dir=context.resources.recovery.scratch_dir(),
            say=context.log.info,
        )  # fmt: skip
    except (BackupError, ConfigurationError) as exc:
        raise failure(exc) from None
    if found.base is None:
        description = "No base backup yet"
    elif found.problems:
        description = f"Base {found.base} is damaged: {'; '.join(found.problems)}"
    else:
        unread = f"; encrypted, no identity: only the stored bytes of {len(found.shallow)}" if found.shallow else ""
        description = f"Base {found.base}: {len(found.members)} member(s) match their manifests{unread}"
    return dg.AssetCheckResult(
        passed=found.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "base_backup": dg.MetadataValue.text(found.base or ""),
            "members": dg.MetadataValue.json(found.members),
            "contents_unchecked": dg.MetadataValue.json(found.shallow),
            "duration_s": dg.MetadataValue.float(found.seconds),
        },
        description=description,
    )


def _base_freshness(binding: PgBinding, context) -> dg.AssetCheckResult:
    source = binding.source(context.resources)
    try:
        newest = newest_base(binding.storage(context.resources).open(), source.series_name())
    except (BackupError, ConfigurationError) as exc:
        raise failure(exc) from None
    verdict = base_freshness(newest)
    return dg.AssetCheckResult(
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity[verdict.severity],
        metadata={
            "newest_base": dg.MetadataValue.text(newest.partition if newest else ""),
            "consistent_from": dg.MetadataValue.text(newest.timings.snapshot_at if newest else ""),
        },
        description=verdict.description,
    )


def _status(binding: PgBinding, context):
    source = binding.source(context.resources)
    try:
        return archive_status(binding.storage(context.resources).open(), source.series_name())
    except (BackupError, ConfigurationError) as exc:
        raise failure(exc) from None


def _continuity(binding: PgBinding, context) -> dg.AssetCheckResult:
    st = _status(binding, context)
    meta = {
        "base_backups": dg.MetadataValue.int(st.bases),
        "oldest_base": dg.MetadataValue.text(st.oldest_base or ""),
        "recoverable_from": dg.MetadataValue.text(iso(st.recoverable_from) if st.recoverable_from else ""),
        "first_segment": dg.MetadataValue.text(st.first_segment or ""),
        "newest_file": dg.MetadataValue.text(st.newest_file or ""),
        "gaps": dg.MetadataValue.json([str(g) for g in st.gaps]),
    }
    if not st.bases:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=meta,
            description="No base backup yet: the WAL archive cannot be replayed. Materialize postgres_base_backup",
        )
    return dg.AssetCheckResult(
        passed=not st.gaps,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=meta,
        description=f"Missing: {'; '.join(str(g) for g in st.gaps)}" if st.gaps else "No gap",
    )


def _within_rpo(binding: PgBinding, context, max_age_min: float) -> dg.AssetCheckResult:
    st = _status(binding, context)
    lag = st.lag()
    ok = lag is not None and lag.total_seconds() <= max_age_min * 60
    return dg.AssetCheckResult(
        passed=ok,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "recoverable_until": dg.MetadataValue.text(iso(st.recoverable_until) if st.recoverable_until else ""),
            "lag_minutes": dg.MetadataValue.float(round(lag.total_seconds() / 60, 2) if lag else -1.0),
        },
        description="Nothing archived yet" if lag is None else f"Recoverable until {lag} ago",
    )


def _slot_retention(binding: PgBinding, context, warn_mb: float) -> dg.AssetCheckResult:
    source = binding.source(context.resources)
    name = slot_name_for(source.series_name())
    try:
        slot = slot_state(source.connection(), name)
    except (BackupError, ConfigurationError) as exc:
        raise failure(exc) from None
    verdict = slot_verdict(slot, name, int(warn_mb * 2**20), int(4 * warn_mb * 2**20))
    return dg.AssetCheckResult(
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity[verdict.severity],
        metadata={"retained_bytes": dg.MetadataValue.int((slot.retained_bytes or 0) if slot else 0)},
        description=verdict.description,
    )
