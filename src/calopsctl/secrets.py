"""The Grafana admin password: from the settings, else generated once and kept 0600."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from calopsctl.settings import CliSettings

GRAFANA_ADMIN_USER = "admin"


def password_file(home: Path) -> Path:
    return home / "secrets" / "grafana_admin_password"


def grafana_admin_password(settings: CliSettings) -> str:
    """``GRAFANA_ADMIN_PASSWORD`` when set, else the stored one, else a new one stored 0600.

    Never admin/admin: a stack reachable from a browser must not ship a guessable login.
    """
    stored = stored_password(settings)
    return stored if stored is not None else _store_new(password_file(settings.home))


def stored_password(settings: CliSettings) -> str | None:
    """The password ``calops info`` shows, without creating one."""
    if settings.grafana_admin_password is not None:
        return settings.grafana_admin_password.get_secret_value()
    path = password_file(settings.home)
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def _store_new(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_urlsafe(18)
    # O_EXCL + mode at creation: the file is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value
