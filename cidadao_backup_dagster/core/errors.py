"""Errors an operator reads at 3 a.m.: each names what is wrong and how to fix it.

The type says what to do next, never the message text: a PermanentError is not retried (another attempt
cannot fix it), a RefusedError is a deliberate "no" (audited as refused), a StorageReadError means "unsure"
(whoever meets it stops instead of reading it as "nothing there"), a DamagedArtifact is proven damage.
"""


class BackupError(RuntimeError):
    """A backup, restore or verification step failed; nothing partial was left behind. Transient unless a
    subclass says otherwise: another attempt may succeed."""


class PermanentError(BackupError):
    """Another attempt cannot fix it until someone changes something (a version, a setting, a permission)."""


class RefusedError(PermanentError):
    """Refused on purpose to protect data (a late partition, a non-empty target without confirmation)."""


class StorageReadError(BackupError):
    """Storage could not be read (5xx after retries, a timeout, a permission error). Not 'absent': a reader
    that meets it must stop, never treat the artifact as missing or invalid."""


class StorageAccessDenied(StorageReadError, PermanentError):
    """The credentials lack a permission: retrying will not help."""


class DamagedArtifact(BackupError):
    """Proven damage: a manifest that does not parse, an object missing (while the listing works) or resized."""


class ConfigurationError(ValueError):
    """A setting (usually an environment variable) is missing or malformed."""

    def __init__(self, variable: str, problem: str, fix: str):
        self.variable = variable
        super().__init__(f"{variable}: {problem}. Fix: {fix}")


def is_permanent(exc: BaseException) -> bool:
    """Retrying only delays the page to the on-call engineer for these."""
    return isinstance(exc, (PermanentError, ConfigurationError))


def root_cause(exc: BaseException) -> BaseException:
    """The core error behind a Dagster Failure: `raise dg.Failure(...) from None` still keeps it as __context__."""
    seen = exc
    while not isinstance(seen, (BackupError, ConfigurationError)):
        nxt = seen.__cause__ or seen.__context__
        if nxt is None:
            return exc
        seen = nxt
    return seen


def audit_outcome(exc: BaseException) -> str:
    return "refused" if isinstance(root_cause(exc), RefusedError) else "failed"


# pg_dump / psql messages that mean "a person must change something"; used only where a subprocess's stderr
# is the one source of truth, to pick the exception type at the place the error is born.
_PERMANENT_PG_MESSAGES = (
    "does not exist",
    "password authentication failed",
    "no pg_hba.conf entry",
    "permission denied",
    "server version mismatch",
)


def pg_error_type(stderr: str) -> type[BackupError]:
    text = stderr.lower()
    return PermanentError if any(marker in text for marker in _PERMANENT_PG_MESSAGES) else BackupError
