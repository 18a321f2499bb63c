"""The Grafana admin password: from the environment, else generated once and kept 0600."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from calopsctl.paths import home

GRAFANA_ADMIN_USER = "admin"
PASSWORD_ENV = "GRAFANA_ADMIN_PASSWORD"  # noqa: S105 (the variable name, not a password)


def password_file() -> Path:
    return home() / "secrets" / "grafana_admin_password"


def grafana_admin_password() -> str:
    """``GRAFANA_ADMIN_PASSWORD`` when set, else the stored one, else a new one stored 0600.

    Never admin/admin: a stack reachable from a browser must not ship a guessable login.
    """
    from_env = os.environ.get(PASSWORD_ENV, "").strip()
    if from_env:
        return from_env
    path = password_file()
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    return _store_new(path)


def stored_password() -> str | None:
    """The password ``calops info`` shows, without creating one."""
    from_env = os.environ.get(PASSWORD_ENV, "").strip()
    if from_env:
        return from_env
    path = password_file()
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def _store_new(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_urlsafe(18)
    # O_EXCL + mode at creation: the file is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value
