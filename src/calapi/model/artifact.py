"""Model files on disk: written as one atomic set, hashed, and read back ready to predict."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Final

from calapi.errors import ModelError
from calapi.model.features import FloatArray
from calapi.model.predictor import Predictor, build_predictor, probe_rows

# Pickles name classes by module. Models pickled before a module moved name its old place;
# each old name here resolves to the module that holds those classes now.
MOVED_MODULES: Final = {"calapi.pipeline": "calapi.model.pipeline"}


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def map_moved_modules() -> None:
    """Let unpickling find classes under the module names in ``MOVED_MODULES``.

    The alias stays registered: removing it after a load could break a load running on
    another thread, and an extra name for an already imported module costs nothing.
    """
    for old, new in MOVED_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))


def read_model(path: Path) -> Any:
    """The object pickled in a joblib (or plain pickle) file; ModelError if it cannot be read."""
    import joblib

    map_moved_modules()
    try:
        return joblib.load(path)
    except Exception as exc:  # a pickle can raise anything; say so in one sentence
        raise ModelError(
            f"{path} is not a loadable model ({type(exc).__name__}: {exc}); retrain it."
        ) from None


def checked_predictor(estimator: Any, source: str, probe: FloatArray | None = None) -> Predictor:
    """The estimator's fastest exact predictor, tried on ``probe`` rows; ModelError if it fails."""
    if not callable(getattr(estimator, "predict", None)):
        raise ModelError(f"{source} holds a {type(estimator).__name__}, which cannot predict.")
    rows = probe_rows(None) if probe is None else probe
    try:
        predictor = build_predictor(estimator, rows)
        predictor(rows[:1])
    except Exception as exc:  # a user's estimator can raise anything
        raise ModelError(f"The model in {source} fails to predict a valid row: {exc}") from None
    return predictor


def load_model(path: Path) -> Any:
    """The estimator in a model file, checked to predict valid rows; ModelError if not."""
    estimator = read_model(path)
    checked_predictor(estimator, str(path))
    return estimator


@contextmanager
def staged_files(folder: Path, finals: Sequence[Path]) -> Iterator[list[Path]]:
    """Yield temp files beside ``finals``; on success move each into place, in order.

    Every file is complete before the first move, so a failure anywhere leaves the
    previous set untouched and no temp behind. Temps live in the same folder, which makes
    ``os.replace`` an atomic rename; readers that watch the last file see a whole set.
    """
    temps: list[Path] = []
    try:
        for final in finals:
            handle, name = tempfile.mkstemp(dir=folder, prefix=f".{final.name}.", suffix=".tmp")
            os.close(handle)
            temps.append(Path(name))
        yield temps
        for temp, final in zip(temps, finals, strict=True):
            # mkstemp makes owner-only files; the API may run as another user (a container).
            temp.chmod(0o644)
            os.replace(temp, final)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON and flush it to disk."""
    with path.open("w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, allow_nan=True)
        handle.write("\n")
        sync(handle)


def sync(handle: IO[Any]) -> None:
    """Flush a file's buffers to the disk, so a rename never publishes a partial file."""
    handle.flush()
    os.fsync(handle.fileno())
