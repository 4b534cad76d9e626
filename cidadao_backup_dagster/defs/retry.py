"""Retries for transient failures (a network blip, storage throttling that outlived botocore's own retries).
Permanent errors (wrong password, missing database, refusals) raise dg.Failure(allow_retries=False)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from .settings import Settings


def retry_policy(settings: Settings, default_delay_s: float) -> dg.RetryPolicy:
    """BACKUP_RETRIES (default 2) and BACKUP_RETRY_DELAY_S (first wait; doubles, with jitter) tune it; they are
    read when the definitions are built (defs/settings.py)."""
    delay = float(default_delay_s) if settings.retry_delay_s is None else settings.retry_delay_s
    return dg.RetryPolicy(
        max_retries=settings.retries, delay=delay, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
    )
