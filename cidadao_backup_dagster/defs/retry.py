"""Retries for transient failures (a network blip, storage throttling that outlived botocore's own retries).
Permanent errors (wrong password, missing database, refusals) raise dg.Failure(allow_retries=False)."""

import os

import dagster as dg

from ..core.errors import ConfigurationError


def retry_policy(default_delay_s: float) -> dg.RetryPolicy:
    """BACKUP_RETRIES (default 2) and BACKUP_RETRY_DELAY_S (first wait; doubles, with jitter) tune it; they are
    read when the code location loads."""
    try:
        retries = int(os.getenv("BACKUP_RETRIES") or 2)
        delay = float(os.getenv("BACKUP_RETRY_DELAY_S") or default_delay_s)
    except ValueError:
        raise ConfigurationError(
            "BACKUP_RETRIES/BACKUP_RETRY_DELAY_S", "must be numbers", "e.g. BACKUP_RETRIES=2 BACKUP_RETRY_DELAY_S=120"
        ) from None
    return dg.RetryPolicy(max_retries=retries, delay=delay, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
