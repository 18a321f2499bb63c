"""Background processes in their own session: spawned detached, found by pid, stopped by group.

``os.posix_spawn`` with ``setsid`` instead of ``subprocess.Popen``: the process must outlive the
``calops`` command that started it, so there is no Popen object to keep (or to warn on exit).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

# /proc/<pid>/stat after the command name: state, ppid, pgrp, session, ... (0-based)
SESSION: Final = 3
# What every process inherits from the caller: where programs and home are, language and time
# zone, and how to reach the network (proxies, the CAs an intercepting proxy needs). Nothing
# else: a service never sees the caller's unrelated secrets (AWS_*, GRAFANA_ADMIN_PASSWORD...).
COMMON_VARIABLES: Final = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
        "http_proxy", "https_proxy", "no_proxy", "all_proxy",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    }
)  # fmt: skip
COMMON_PREFIXES: Final = ("LC_",)


def spawn(argv: Sequence[str], *, env: Mapping[str, str], log: Path) -> int:
    """Start ``argv`` as the leader of a new session, stdout+stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    return os.posix_spawn(argv[0], list(argv), dict(env), file_actions=actions, setsid=True)


def child_env(
    prefixes: Sequence[str] = (),
    *,
    deny: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The caller's ``COMMON_VARIABLES`` and the variables starting with one of ``prefixes``
    (a service's own settings), less the names in ``deny``."""
    source = os.environ if environ is None else environ
    keep = (*COMMON_PREFIXES, *prefixes)
    denied = set(deny)
    return {
        name: value
        for name, value in source.items()
        if (name in COMMON_VARIABLES or name.startswith(keep)) and name not in denied
    }


def _reap(pid: int) -> None:
    """Collect an exited child of this process, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def leader_alive(pid: int) -> bool:
    """True when ``pid`` runs and still leads its own process group (guards against pid reuse)."""
    _reap(pid)
    try:
        return os.getpgid(pid) == pid and not _is_zombie(pid)
    except ProcessLookupError:
        return False


def group_alive(pgid: int) -> bool:
    """True while any process of the group exists (a dead leader can leave workers behind)."""
    _reap(pgid)
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return not (_is_zombie(pgid) and not _group_members(pgid))


def stop_group(pgid: int, *, grace: float = 10.0) -> bool:
    """SIGTERM the group, wait up to ``grace`` seconds, SIGKILL what is left; True if it ran."""
    return bool(stop_groups([pgid], grace=grace))


def stop_groups(pgids: Iterable[int], *, grace: float = 10.0) -> list[int]:
    """``stop_group`` for several groups at once: every one is signalled before any is waited
    for, so stopping N replicas takes one grace period, not N; the groups that ran."""
    running = [pgid for pgid in pgids if group_alive(pgid)]
    for pgid in running:
        _signal(pgid, signal.SIGTERM)
    left = _wait_all_gone(running, grace)
    for pgid in left:
        _signal(pgid, signal.SIGKILL)
    _wait_all_gone(left, grace)
    return running


def _signal(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_all_gone(pgids: list[int], timeout: float) -> list[int]:
    """The groups of ``pgids`` still alive after waiting up to ``timeout`` for them all."""
    deadline = time.monotonic() + timeout
    left = [pgid for pgid in pgids if group_alive(pgid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [pgid for pgid in left if group_alive(pgid)]
    return left


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in the group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        after = fields.rpartition(")")[2].split()
        if len(after) > SESSION and int(after[SESSION]) == pgid and after[0] != "Z":
            members.append(int(entry.name))
    return members
