"""The Grafana admin password: from the settings, else generated once and kept 0600."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from calopsctl.settings import CliSettings

GRAFANA_ADMIN_USER = "admin"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, whatever mode an older file had.

    Written to a 0600 temporary beside it and renamed over it: never a moment when the secret
    sits in a file others can read, and a wider mode left by an older version goes with it.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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
    if not path.is_file():
        return None
    path.chmod(0o600)  # a file an older calops (or a hand) left readable to others
    return path.read_text(encoding="utf-8").strip()


def _store_new(path: Path) -> str:
    value = secrets.token_urlsafe(18)
    write_private(path, value + "\n")
    return value
