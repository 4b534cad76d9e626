"""Errors turned into run failures: the message an operator reads in the run, the event log and the alert,
with every registered secret masked (core messages are built without secrets; this is the last exit)."""

import dagster as dg

from ..core.errors import is_permanent
from ..core.secrets import redact_text


def failure(exc: BaseException, *, allow_retries: bool | None = None) -> dg.Failure:
    """`raise failure(exc) from None`: a dg.Failure with `exc`'s redacted text. Retried unless `exc` is permanent
    (or `allow_retries` says otherwise)."""
    retries = not is_permanent(exc) if allow_retries is None else allow_retries
    return dg.Failure(redact_text(str(exc)), allow_retries=retries)
