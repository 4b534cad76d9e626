"""Resources: every setting comes from the environment through `dg.EnvVar` (set up by `build_resources` from the
Settings read when the definitions are built), validated where it is used, with errors that name the variable
and the fix."""

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from ..core.artifacts.crypto import encryption_stage, fingerprint, load_identities, parse_recipients
from ..core.artifacts.lateness import parse_grace
from ..core.artifacts.storage import DEFAULT_PARTS_IN_FLIGHT, MiB, S3Storage, Storage, sse_arguments, storage_from_url
from ..core.errors import ConfigurationError
from ..core.postgres.backup import BackupSettings, safe_name
from ..core.postgres.client import ClientDirs, PgConnection
from ..core.redis.backup import MODES, RedisEndpoint, RedisSnapshotSettings
from ..core.secrets import (
    has_credentials,
    install_log_redaction,
    register_environment,
    register_file,
    register_secret,
)
from ..core.sources import PostgresSourceSpec, RedisSourceSpec
from .settings import Settings, env_field, from_env


class PostgresSource(dg.ConfigurableResource):
    """The database to back up (`DATABASE_URL`)."""

    database_url: str = Field(default="", description="postgresql://user:password@host:5432/dbname (DATABASE_URL)")
    pg_bin_dir: str = env_field("PG_BIN_DIR", "", "The one folder holding pg_dump/pg_restore; empty = PG_BIN_DIRS")
    pg_bin_dirs: str = env_field(
        "PG_BIN_DIRS",
        "",
        "Folders searched for a pg_dump/pg_restore of at least the server's version (colon-separated), before "
        "/usr/lib/postgresql/*/bin and PATH",
    )
    url_variable: str = Field(default="DATABASE_URL", description="Environment variable holding the URL (in errors)")
    name: str = env_field(
        "POSTGRES_SOURCE_NAME",
        "cidadao",
        "Stable name of this source's backup series (or the source's name in BACKUP_SOURCES_FILE): storage keys "
        "use it, so renaming or moving the database keeps one series",
    )

    def connection(self) -> PgConnection:
        return PgConnection.from_url(self.database_url, self.url_variable)

    def series_name(self) -> str:
        return safe_name(self.name)

    def legacy_series_name(self) -> str:
        """Series were keyed by the URL's database name before they were keyed by the source's name."""
        return safe_name(self.connection().dbname)

    @property
    def bin_dir(self) -> str | ClientDirs:
        return self.pg_bin_dir or ClientDirs.parse(self.pg_bin_dirs)


class S3Settings(dg.Config):
    """How the S3 client is made (dagster-aws's S3Resource builds it). Plain config rather than a nested resource:
    Dagster 1.13 initializes nested resources through the deprecated InitResourceContext.dagster_run."""

    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (AWS_ENDPOINT_URL); None = AWS")
    region_name: str | None = Field(default=None, description="Region (AWS_DEFAULT_REGION, else AWS_REGION)")
    max_attempts: int = Field(default=10, description="botocore 'standard' retries: 5xx, SlowDown, throttling")

    def get_client(self):
        return S3Resource(
            endpoint_url=self.endpoint_url, region_name=self.region_name, max_attempts=self.max_attempts
        ).get_client()


class BackupStorage(dg.ConfigurableResource):
    """Where artifacts go: `s3://bucket/prefix` (AWS S3, Supabase Storage, MinIO, R2) or `file:///path`."""

    url: str = Field(default="", description="s3://bucket/prefix or file:///absolute/path")
    variable: str = Field(default="BACKUP_STORAGE_URL", description="Environment variable named in errors")
    missing_hint: str = Field(default="", description="What to do when the URL is empty")
    part_size_mb: int = Field(default=16, description="S3 multipart part size, equal for all parts (MiB)")
    parts_in_flight: int = Field(default=DEFAULT_PARTS_IN_FLIGHT, description="S3 parts uploading at once (memory)")
    prefix: str = Field(default="", description="Folder under the URL for one source (its storage_prefix)")
    s3_sse: str = Field(
        default="AES256",
        description="S3 server-side encryption of every object (BACKUP_S3_SSE): AES256 (SSE-S3), aws:kms (SSE-KMS) "
        "or off (for services that reject or ignore SSE headers: Cloudflare R2, Supabase Storage, MinIO without KMS)",
    )
    s3_sse_kms_key_id: str = Field(
        default="", description="KMS key id, ARN or alias for aws:kms (BACKUP_S3_SSE_KMS_KEY_ID); empty = aws/s3"
    )
    sse_variable: str = Field(default="BACKUP_S3_SSE", description="Environment variable named in SSE errors")
    s3: S3Settings = Field(default_factory=S3Settings, description="The S3 client's endpoint, region and retries")

    def open(self) -> Storage:
        if not self.url:
            raise ConfigurationError(self.variable, "is not set", self.missing_hint or "set s3://bucket/prefix")
        if self.url.startswith("s3://") and self.s3.endpoint_url and has_credentials(self.s3.endpoint_url):
            raise ConfigurationError(
                "AWS_ENDPOINT_URL",
                "carries credentials (user:password@)",
                "remove them: give the key in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            )
        url = f"{self.url.rstrip('/')}/{self.prefix.strip('/')}" if self.prefix.strip("/") else self.url
        sse_arguments(self.s3_sse, self.s3_sse_kms_key_id, self.sse_variable)  # a bad setting fails on any URL
        s3_args = {"s3_client_factory": self.s3.get_client, "parts_in_flight": self.parts_in_flight}
        storage = storage_from_url(url, variable=self.variable, part_size=self.part_size_mb * MiB, **s3_args)
        if isinstance(storage, S3Storage):
            storage.use_encryption(self.s3_sse, self.s3_sse_kms_key_id, self.sse_variable)
        return storage


def _parse_range(text: str) -> tuple[int | None, int | None]:
    """`500-2048` (MB) -> bytes; empty or `off` -> no range."""
    text = text.strip().lower()
    if text in ("", "off", "none"):
        return None, None
    try:
        low, high = (int(float(x) * 1_000_000) if x.strip() else None for x in text.split("-", 1))
    except ValueError:
        raise ConfigurationError(
            "BACKUP_EXPECTED_SIZE_MB", f"{text!r} is not a range", "write MIN-MAX in MB, e.g. 500-2000, or off"
        ) from None
    return low, high


class BackupPolicy(dg.ConfigurableResource):
    """Knobs for compression and the health checks; defaults come from the strategy."""

    zstd_level: int = env_field("BACKUP_ZSTD_LEVEL", 3, "zstd level: 1 fastest, 19 smallest")
    size_history: int = Field(default=7, description="How many earlier valid backups the size check compares to")
    max_size_deviation_pct: float = Field(default=50.0, description="Strategy: 'backup_size_deviation > 50%'")
    expected_size_mb: str = env_field(
        "BACKUP_EXPECTED_SIZE_MB", "500-2000", "Expected stored size MIN-MAX in MB; 'off' disables"
    )
    daily_max_age_hours: float = Field(default=48, description="Strategy alert: backup_age_hours > 48 (RPO 24 h)")
    weekly_max_age_hours: float = Field(default=8 * 24 + 6, description="Weekly offsite copy: a week plus slack")
    late_grace_hours: str = env_field(
        "BACKUP_LATE_GRACE_HOURS",
        "",
        "How long after its period ends a partition may still be backed up, per cadence, e.g. "
        "'daily=48,weekly=192,hourly=6' (these are the defaults)",
    )

    def late_grace(self) -> dict[str, float]:
        return parse_grace(self.late_grace_hours)

    def settings(self, source: PostgresSource) -> BackupSettings:
        if not 1 <= self.zstd_level <= 22:
            raise ConfigurationError(
                "BACKUP_ZSTD_LEVEL", f"{self.zstd_level} is out of range", "use 1..22 (3 is default)"
            )
        return BackupSettings(zstd_level=self.zstd_level, pg_bin_dir=source.bin_dir)

    def expected_range(self) -> tuple[int | None, int | None]:
        return _parse_range(self.expected_size_mb)


class BackupEncryption(dg.ConfigurableResource):
    """age encryption of every artifact. The worker needs only the public keys; the identity file is read
    only by restores, drills and deep verification."""

    recipients: str = env_field("BACKUP_AGE_RECIPIENTS", "", "age public keys, comma-separated")
    identity_file: str = env_field("BACKUP_AGE_IDENTITY_FILE", "", "age identity file for restores")
    environment: str = env_field("CIDADAO_ENV", "", "Deployment marker; 'production' requires encryption")

    @property
    def production(self) -> bool:
        return self.environment.strip().lower() == "production"

    def _recipients(self):
        return parse_recipients(self.recipients) if self.recipients.strip() else []

    def stage(self):
        """The pipeline's encryption stage, or None when no recipients are configured."""
        recipients = self._recipients()
        return encryption_stage(recipients) if recipients else None

    def manifest_entry(self) -> dict | None:
        recipients = self._recipients()
        if not recipients:
            return None
        return {"format": "age-encryption.org/v1", "recipients": [fingerprint(r) for r in recipients]}

    def identities(self) -> list | None:
        register_file(self.identity_file)
        return load_identities(self.identity_file) if self.identity_file else None


class RecoverySettings(dg.ConfigurableResource):
    """Where restores work. Passwords live here (from the environment), never in a job's run config,
    because run config is stored in the run history for everyone to read."""

    tmp_dir: str = env_field("RESTORE_TMPDIR", "", "Folder for decompressed archives; empty = TMPDIR")
    target_password: str = env_field(
        "RESTORE_TARGET_PASSWORD", "", "Password for a restore target server other than the source"
    )
    drill_server_url: str = env_field(
        "DRILL_DATABASE_URL",
        "",
        "Server for the scratch databases of restore drills and of recover_rows; empty = the source server",
    )
    restore_jobs: int = Field(default=2, description="pg_restore --jobs for drills")

    def scratch_dir(self) -> str | None:
        return self.tmp_dir or None

    def recover_scratch_server(self, live: PgConnection) -> PgConnection | None:
        """Where recover_rows restores its temporary copy and evaluates the filter: the drill server
        (DRILL_DATABASE_URL, swept by sweep_scratch like the drills'), else None = the live database's server."""
        if not self.drill_server_url:
            return None
        return self.server(self.drill_server_url, live, "DRILL_DATABASE_URL")

    def server(self, url: str, source: PgConnection, variable: str) -> PgConnection:
        """A server to restore onto: `url` (its database part is only used to connect), else the source's.
        The source's password and TLS settings (sslmode, sslrootcert) are reused on the source's own host and port."""
        register_secret(self.target_password)
        if not url:
            return source.with_dbname("postgres")
        base, query = (url.split("?", 1) + [""])[:2]
        if "/" not in base.split("://", 1)[-1]:  # only the server given (its ?sslmode=... kept after the path)
            url = f"{base}/postgres" + (f"?{query}" if query else "")
        conn = PgConnection.from_url(url, variable)
        if (conn.host, conn.port) == (source.host, source.port):
            conn = conn.with_tls_of(source)
        if conn.password and variable != "DRILL_DATABASE_URL":
            raise ConfigurationError(
                variable,
                "contains a password, and run config is kept in the run history",
                "remove it and set RESTORE_TARGET_PASSWORD in the code location's environment",
            )
        if not conn.password and self.target_password:
            return PgConnection(conn.params, self.target_password)
        if not conn.password and (conn.host, conn.port) == (source.host, source.port):
            return PgConnection(conn.params, source.password)
        return conn


class RedisSource(dg.ConfigurableResource):
    """The Redis to snapshot (`REDIS_URL`) and how. Only the Redis assets, checks, sensor and jobs need
    REDIS_URL: without it they fail (or skip) saying so, and everything else still loads and runs."""

    redis_url: str = Field(
        default="", description="redis://[user:password@]host:6379[/db], rediss:// for TLS (REDIS_URL)"
    )
    name: str = env_field(
        "REDIS_SOURCE_NAME",
        "cache",
        "Name of the snapshot series in storage: keep it when the instance is re-provisioned under a new host, so "
        "restores and checks still find the earlier snapshots",
    )
    mode: str = env_field(
        "REDIS_SNAPSHOT_MODE",
        "auto",
        "rdb (SYNC, point-in-time), logical (SCAN + DUMP + PTTL, for services that refuse SYNC) or auto (rdb, "
        "falling back to logical with a warning)",
    )
    connect_timeout_s: int = env_field("REDIS_CONNECT_TIMEOUT_S", 10, "Connect timeout in seconds")
    socket_timeout_s: int = env_field("REDIS_SOCKET_TIMEOUT_S", 60, "Read timeout in seconds waiting for the server")
    server_bin: str = env_field("REDIS_SERVER_BIN", "", "redis-server for restores and drills; empty = PATH")
    target_password: str = env_field(
        "REDIS_TARGET_PASSWORD", "", "Password for a restore/flush target given in run config"
    )
    max_last_save_age_s: int = Field(default=3600, description="Strategy alert: redis_rdb_last_save_age > 3600")
    snapshot_max_age_hours: float = Field(default=2.0, description="Freshness: newest valid snapshot at most this old")

    url_variable: str = Field(default="REDIS_URL", description="Environment variable holding the URL (in errors)")

    def endpoint(self) -> RedisEndpoint:
        return RedisEndpoint.from_url(
            self.redis_url,
            self.url_variable,
            connect_timeout=self.connect_timeout_s,
            socket_timeout=self.socket_timeout_s,
        )

    def target(self, url: str) -> RedisEndpoint:
        """A restore/flush target: `url` from run config (no password there; REDIS_TARGET_PASSWORD), else REDIS_URL."""
        register_secret(self.target_password)
        if not url.strip():
            return self.endpoint()
        target = RedisEndpoint.from_url(
            url, "target_url", connect_timeout=self.connect_timeout_s, socket_timeout=self.socket_timeout_s
        )
        if target.password is not None:
            raise ConfigurationError(
                "target_url",
                "contains a password, and run config is kept in the run history",
                "remove it and set REDIS_TARGET_PASSWORD in the code location's environment",
            )
        return target.with_password(self.target_password or None)

    def settings(self, zstd_level: int = 3) -> RedisSnapshotSettings:
        if self.mode not in MODES:
            raise ConfigurationError(
                "REDIS_SNAPSHOT_MODE", f"{self.mode!r} is not a mode", "use auto, rdb or logical (auto is default)"
            )
        return RedisSnapshotSettings(mode=self.mode, zstd_level=zstd_level)  # type: ignore[arg-type]

    @property
    def bin(self) -> str | None:
        return self.server_bin or None


def _storage(settings: Settings, s3: S3Settings, prefix: str = "", *, offsite: bool = False) -> BackupStorage:
    """BACKUP_STORAGE_URL, or OFFSITE_STORAGE_URL, under `prefix`."""
    if offsite:
        # the offsite bucket may be another provider: OFFSITE_S3_SSE (+ _KMS_KEY_ID), else the BACKUP_ pair
        sse = "OFFSITE_S3_SSE" if settings.get("OFFSITE_S3_SSE") else "BACKUP_S3_SSE"
        variable, default_url = "OFFSITE_STORAGE_URL", ""
        hint = (
            "set it to an external bucket, e.g. s3://cidadao-ai-backups-offsite/postgres "
            "(the weekly copy must not live beside the daily ones)"
        )
    else:
        sse, variable, default_url, hint = "BACKUP_S3_SSE", "BACKUP_STORAGE_URL", f"file://{settings.local_storage}", ""
    return BackupStorage(
        url=settings.env_or(variable, default_url),
        variable=variable,
        missing_hint=hint,
        prefix=prefix,
        s3_sse=settings.env_or(sse, "AES256"),
        s3_sse_kms_key_id=settings.env_or(f"{sse}_KMS_KEY_ID", ""),
        sse_variable=sse,
        part_size_mb=settings.s3_part_size_mb,
        parts_in_flight=settings.s3_parts_in_flight,
        s3=s3,
    )


def _postgres_source(settings: Settings, spec: PostgresSourceSpec) -> PostgresSource:
    listed = {"name": spec.name} if spec.name else {}  # a listed source's name is its series name
    return from_env(
        PostgresSource, settings, database_url=settings.env_or(spec.url_env, ""), url_variable=spec.url_env, **listed
    )


def _redis_source(settings: Settings, spec: RedisSourceSpec) -> RedisSource:
    listed = {"name": spec.name} if spec.name else {}
    return from_env(
        RedisSource,
        settings,
        redis_url=settings.env_or(spec.url_env, ""),
        url_variable=spec.url_env,
        snapshot_max_age_hours=settings.redis_snapshot_max_age_h,
        **listed,
        **({"mode": spec.mode} if spec.mode else {}),
    )


def _per_source(settings: Settings, s3: S3Settings) -> dict[str, dg.ConfigurableResource]:
    """Each listed source's connection and storages (the shared URLs with its storage_prefix); the implicit Redis
    source's connection."""
    per_source: dict[str, dg.ConfigurableResource] = {}
    for spec in settings.sources.postgres:
        if spec.name:
            per_source[f"postgres_source__{spec.name}"] = _postgres_source(settings, spec)
            per_source[f"backup_storage__{spec.name}"] = _storage(settings, s3, spec.storage_prefix)
            per_source[f"offsite_storage__{spec.name}"] = _storage(settings, s3, spec.storage_prefix, offsite=True)
    for spec in settings.sources.redis:
        if spec.name:
            per_source[f"redis_source__{spec.name}"] = _redis_source(settings, spec)
            per_source[f"backup_storage__{spec.name}"] = _storage(settings, s3, spec.storage_prefix)
        else:
            per_source["redis_source"] = _redis_source(settings, spec)
    return per_source


def _shared(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The resources every source shares: backup policy, encryption, alerts and recovery settings."""
    from .monitoring.resources import AlertSettings  # at call time: the defs.monitoring package imports this module

    shared = {
        "backup_policy": BackupPolicy,
        "encryption": BackupEncryption,
        "alerts": AlertSettings,
        "recovery": RecoverySettings,
    }
    return {key: from_env(resource_type, settings) for key, resource_type in shared.items()}


def build_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    """Shared resources, and per source of `settings.sources` (default: one from DATABASE_URL and one from
    REDIS_URL) its connection and its storage (the shared URLs with the source's storage_prefix). `settings`
    defaults to the environment now (tests and tools that build resources alone)."""
    if settings is None:
        settings = Settings.from_environ()
    # Every secret of the environment is known before anything runs: whatever message carries one masks it.
    register_environment(settings.environ)
    register_file(settings.get("BACKUP_AGE_IDENTITY_FILE") or None)
    install_log_redaction()
    s3 = S3Settings(
        endpoint_url=settings.env_or("AWS_ENDPOINT_URL", None),
        region_name=settings.env_or("AWS_DEFAULT_REGION", settings.env_or("AWS_REGION", None)),
        max_attempts=10,  # botocore "standard" retry mode: backoff on 5xx, SlowDown and throttling
    )
    return {
        # The exports (and the one-source default) read `postgres_source`; shared jobs write to `backup_storage`.
        "postgres_source": _postgres_source(settings, settings.sources.export_source),
        "backup_storage": _storage(settings, s3),
        "offsite_storage": _storage(settings, s3, offsite=True),
        **_per_source(settings, s3),
        **_shared(settings),
    }
