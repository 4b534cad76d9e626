"""Errors an operator reads at 3 a.m.: each names what is wrong and how to fix it."""


class BackupError(RuntimeError):
    """A backup or verification step failed; nothing partial was left behind."""


class ConfigurationError(ValueError):
    """A setting (usually an environment variable) is missing or malformed."""

    def __init__(self, variable: str, problem: str, fix: str):
        self.variable = variable
        super().__init__(f"{variable}: {problem}. Fix: {fix}")
