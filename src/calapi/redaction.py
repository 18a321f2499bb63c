"""One way to show a URI that may carry credentials: secrets become ``***``, the rest stays."""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# A query parameter whose name contains one of these holds a secret (api_key, X-Amz-Signature,
# auth, pwd, access_token, sig...).
SECRET_WORDS: Final = (
    "token", "password", "passwd", "pwd", "pass", "secret", "key", "sig", "auth", "credential",
)  # fmt: skip
REDACTED: Final = "***"


def redact_uri(uri: str) -> str:
    """``uri`` with its password (or a bare user part, often a token) and the values of
    secret-looking query parameters replaced by ``***``."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    query = parse_qsl(parts.query, keep_blank_values=True)
    secret_query = any(_secret(key) for key, _ in query)
    if "@" not in netloc and not secret_query:
        return uri  # as written: urlunsplit would turn sqlite:////abs/path into sqlite://abs/path
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        name, has_password, _ = user.partition(":")
        netloc = f"{name}:{REDACTED}@{host}" if has_password else f"{REDACTED}@{host}"
    if secret_query:
        hidden = [(key, REDACTED if _secret(key) else value) for key, value in query]
        parts = parts._replace(query=urlencode(hidden, safe="*:"))
    return urlunsplit(parts._replace(netloc=netloc))


def _secret(name: str) -> bool:
    return any(word in name.lower() for word in SECRET_WORDS)
