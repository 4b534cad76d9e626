"""Jobs of one op each, launched from the Launchpad: the recovery jobs of every domain and the on-demand backup.
A recovery op writes an audit record that copies its output's metadata."""

from collections.abc import Callable

import dagster as dg

from ..core.errors import BackupError, ConfigurationError
from .audit import audit_storage, audited
from .failures import failure
from .sources import Binding, PgBinding, RedisBinding


def source_note(binding: Binding) -> str:
    """The sentence a listed source's job descriptions end with (none for the implicit source)."""
    return f" Source `{binding.name}`." if binding.name else ""


def op_job(op_def: dg.OpDefinition, name: str, description: str, tags: dict[str, str]) -> dg.JobDefinition:
    """A job that runs `op_def` alone."""

    @dg.job(name=name, description=description, tags=tags)
    def single_op_job():
        op_def()

    return single_op_job


def optional_text(key: str, value: str | None) -> dict[str, dg.MetadataValue]:
    """`{key: value}` as text metadata when the run has a value (a replaced database, a pre-flush snapshot)."""
    return {key: dg.MetadataValue.text(value)} if value else {}


def audit_output(audit: dict, metadata: dict[str, dg.MetadataValue], artifact_key: str) -> None:
    """Copy an op's output metadata into its audit record."""
    meta = {k: v.value for k, v in metadata.items() if k != "sample"}
    audit.update(meta, artifact=meta[artifact_key])
    if meta.get("dry_run"):
        audit["result"] = "dry_run"


def recovery_job(
    binding: PgBinding | RedisBinding,
    name: str,
    *,
    description: str,
    op_description: str,
    config_type: type[dg.Config],
    resource_keys: set[str],
    action: str,
    artifact_key: str,
    run: Callable[[dg.OpExecutionContext, dg.Config, PgBinding | RedisBinding], dict[str, dg.MetadataValue]],
) -> dg.JobDefinition:
    """Job `name` (op `<name>_op`) running `run` under an audit record `action` whose artifact is the output's
    `artifact_key` metadata. `run` returns that metadata: a recovery op's output is nothing else. A BackupError or
    ConfigurationError `run` raises fails the run, never retried: a recovery is re-launched by a person."""
    tags = {"cidadao/domain": "recovery", **binding.tags}

    @dg.op(
        name=binding.named(f"{name}_op"),
        description=op_description,
        tags=tags,
        required_resource_keys={*binding.resource_keys, *resource_keys},
    )
    def recovery_op(context: dg.OpExecutionContext, config: config_type) -> dg.Output:  # type: ignore[valid-type]
        with audited(context, audit_storage(binding.storage(context.resources)), action) as audit:
            try:
                metadata = run(context, config, binding)
            except (BackupError, ConfigurationError) as exc:  # a refusal or a fault a person must look at first
                raise failure(exc, allow_retries=False) from None
            audit_output(audit, metadata, artifact_key)
            return dg.Output(None, metadata=metadata)

    return op_job(recovery_op, binding.named(name), description + source_note(binding), tags)
