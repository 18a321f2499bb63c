"""Secrets files are readable by their owner only, whatever mode an older file had."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from calopsctl.secrets import grafana_admin_password, password_file, write_private
from calopsctl.settings import CliSettings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliSettings:
    """CLI settings with a private home and no password in the environment."""
    monkeypatch.delenv("GRAFANA_ADMIN_PASSWORD", raising=False)
    monkeypatch.setenv("CALOPS_HOME", str(tmp_path / ".calops"))
    return CliSettings()


def test_a_generated_password_is_0600(settings: CliSettings) -> None:
    """The first `calops up` stores a new password 0600 in a 0700 folder."""
    password = grafana_admin_password(settings)
    path = password_file(settings.home)
    assert path.read_text().strip() == password
    assert (mode(path), mode(path.parent)) == (0o600, 0o700)


def test_a_stored_password_left_0644_is_made_0600(settings: CliSettings) -> None:
    """A password file an older calops left 0644 is kept, and made 0600 when next read."""
    path = password_file(settings.home)
    path.parent.mkdir(parents=True)
    path.write_text("kept-pw\n")
    path.chmod(0o644)
    assert grafana_admin_password(settings) == "kept-pw"
    assert mode(path) == 0o600


def test_write_private_replaces_a_wide_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    """Overwriting a 0644 file leaves it 0600 with the new text and nothing beside it."""
    path = tmp_path / "compose.env"
    path.write_text("OLD=1\n")
    path.chmod(0o644)
    write_private(path, "NEW=2\n")
    assert (path.read_text(), mode(path)) == ("NEW=2\n", 0o600)
    assert list(tmp_path.iterdir()) == [path]
