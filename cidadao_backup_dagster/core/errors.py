"""Errors an operator reads at 3 a.m.: each names what is wrong and how to fix it."""


class BackupError(RuntimeError):
    """A backup or verification step failed; nothing partial was left behind."""


class ConfigurationError(ValueError):
    """A setting (usually an environment variable) is missing or malformed."""

    def __init__(self, variable: str, problem: str, fix: str):
        self.variable = variable
        super().__init__(f"{variable}: {problem}. Fix: {fix}")


# Errors that another attempt cannot fix: retrying them only delays the page to the on-call engineer.
_PERMANENT = (
    "does not exist",
    "password authentication failed",
    "no pg_hba.conf entry",
    "permission denied",
    "is not a partition key",
    "refusing",
)


def is_permanent(message: str) -> bool:
    text = message.lower()
    return any(marker in text for marker in _PERMANENT)
