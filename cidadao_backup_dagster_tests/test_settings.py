"""Settings read once from the environment: the S3 part size and the Redis freshness limit."""

import pytest

from cidadao_backup_dagster.core.errors import ConfigurationError
from cidadao_backup_dagster.defs.settings import Settings


def test_defaults_when_unset_or_empty():
    for env in ({}, {"BACKUP_S3_PART_SIZE_MB": "", "REDIS_SNAPSHOT_MAX_AGE_H": " "}):
        settings = Settings.from_environ(env)
        assert (settings.s3_part_size_mb, settings.redis_snapshot_max_age_h) == (16, 2.0)


def test_values_are_read():
    settings = Settings.from_environ({"BACKUP_S3_PART_SIZE_MB": "64", "REDIS_SNAPSHOT_MAX_AGE_H": "1.5"})
    assert (settings.s3_part_size_mb, settings.redis_snapshot_max_age_h) == (64, 1.5)


# 4: below S3's 5 MiB part minimum; 6000: above its 5 GiB part maximum
BAD = {"BACKUP_S3_PART_SIZE_MB": ("4", "8.5", "6000"), "REDIS_SNAPSHOT_MAX_AGE_H": ("0", "-1", "nan", "two")}


@pytest.mark.parametrize(("variable", "value"), [(name, value) for name, values in BAD.items() for value in values])
def test_a_bad_value_names_the_variable_and_the_fix(variable, value):
    with pytest.raises(ConfigurationError) as info:
        Settings.from_environ({variable: value})
    assert info.value.variable == variable
    assert "Fix:" in str(info.value)


def test_the_values_reach_the_storage_and_redis_resources():
    # The variables were once named in errors yet read by nothing: the resources must carry them.
    from cidadao_backup_dagster.defs.resources import build_resources

    env = {"BACKUP_S3_PART_SIZE_MB": "32", "REDIS_SNAPSHOT_MAX_AGE_H": "3", "REDIS_URL": "redis://127.0.0.1:6379/0"}
    resources = build_resources(Settings.from_environ(env))
    assert resources["backup_storage"].part_size_mb == 32
    assert resources["offsite_storage"].part_size_mb == 32
    assert resources["redis_source"].snapshot_max_age_hours == 3.0


def _env_fields():
    """(resource class, field, variable) of every field bound to a variable with env_field."""
    from cidadao_backup_dagster.defs.exports.resources import ExportPolicy
    from cidadao_backup_dagster.defs.monitoring.resources import AlertSettings
    from cidadao_backup_dagster.defs.protection.retention import RetentionSettings
    from cidadao_backup_dagster.defs.resources import (
        BackupEncryption,
        BackupPolicy,
        PostgresSource,
        RecoverySettings,
        RedisSource,
    )

    classes = (
        PostgresSource, RedisSource, BackupPolicy, BackupEncryption, RecoverySettings, AlertSettings, ExportPolicy,
        RetentionSettings,
    )  # fmt: skip
    return [
        (cls, name, (info.json_schema_extra or {})["env"])
        for cls in classes
        for name, info in cls.model_fields.items()
        if "env" in (info.json_schema_extra or {})
    ]


def test_every_bound_field_is_read_from_its_variable_when_set_and_keeps_its_default_when_not(monkeypatch):
    import dagster as dg

    from cidadao_backup_dagster.defs.settings import from_env

    fields = _env_fields()
    assert len(fields) >= 25  # every resource's variables, not an empty loop
    for cls, name, variable in fields:
        info = cls.model_fields[name]
        assert variable in info.description, (cls.__name__, name)
        assert getattr(from_env(cls, Settings.from_environ({})), name) == info.default, (cls.__name__, name)
        value = 7 if info.annotation is int else "set-by-test"
        monkeypatch.setenv(variable, str(value))
        configured = from_env(cls, Settings.from_environ({variable: str(value)}))
        with dg.build_resources({"r": configured}) as built:  # resolves the dg.EnvVar as a run would
            assert getattr(built.r, name) == value, (cls.__name__, name)
        monkeypatch.delenv(variable)


def test_every_variable_a_resource_reads_is_in_the_configuration_table():
    from pathlib import Path

    table = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    missing = sorted({variable for _c, _n, variable in _env_fields() if f"`{variable}`" not in table})
    assert not missing, f"not documented in docs/configuration.md: {missing}"


def test_a_bound_field_takes_text_or_whole_numbers_only():
    # dg.EnvVar resolves text and whole numbers; a float bound this way would fail only when a run starts.
    from cidadao_backup_dagster.defs.settings import env_field

    for default in (2.0, True, None):
        with pytest.raises(TypeError, match="text or a whole number"):
            env_field("SOME_VARIABLE", default, "a number")
