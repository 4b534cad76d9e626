"""Keep passwords out of logs, metadata, manifests and exception text."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@")
_KEYWORD_PASSWORD = re.compile(r"(?i)\b(password|passwd|pwd|secret|aws_secret_access_key)\s*=\s*('[^']*'|\S+)")


def redact_url(url: str) -> str:
    """`postgresql://u:pw@h/db` -> `postgresql://u:***@h/db`; URLs without a password are unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def redact_text(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """Remove known secret values, URL passwords and `password=...` pairs from free text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _KEYWORD_PASSWORD.sub(lambda m: f"{m.group(1)}=***", text)
