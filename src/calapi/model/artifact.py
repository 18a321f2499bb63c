"""Model files on disk: written as one atomic set, hashed, and read back ready to predict."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Final

from calapi.errors import ModelError, ModelRefusedError, PickleRefusedError
from calapi.model.features import FloatArray
from calapi.model.predictor import Predictor, build_predictor, probe_rows
from calapi.model.safeformat import ALLOW_PICKLE, SAFE_FILE, SAFE_SUFFIX, load_safe

log = logging.getLogger("calapi")

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


def read_model(
    path: Path, *, stated: Mapping[str, str] | None = None, allow_pickle: bool = False
) -> tuple[Any, str]:
    """The model in ``path`` and the sha256 of the very bytes it was built from.

    The file is read once and hashed before anything is deserialized: each record in
    ``stated`` (who states it -> sha256) must match, else ModelRefusedError. A ``.skops``
    file is built from trusted types only; anything else is taken for a pickle, which runs
    whatever code it holds, so it is refused unless ``allow_pickle`` (then logged loudly).
    """
    data = _read_bytes(path)
    sha256 = hashlib.sha256(data).hexdigest()
    for who, expected in (stated or {}).items():
        if sha256 != expected:
            raise ModelRefusedError(
                f"{path} is not the file {who} names (sha256 {sha256[:12]}, not "
                f"{expected[:12]}), so it was not loaded; restore it or retrain with "
                "`calops train`."
            )
    if path.suffix == SAFE_SUFFIX:
        return load_safe(data, str(path)), sha256
    if not allow_pickle:
        raise PickleRefusedError(
            f"{path} is a pickle, which runs any code its writer put in it when loaded, so it "
            f"was not loaded; retrain with `calops train` (it writes {SAFE_FILE}), or pass "
            f"{ALLOW_PICKLE} if you trust everyone who can write where it is stored."
        )
    log.warning(
        "Loading the pickle %s because pickles are allowed (%s): loading a pickle can run "
        "any code its writer put in it.",
        path,
        ALLOW_PICKLE,
    )
    return unpickle(data, str(path)), sha256


def unpickle(data: bytes, source: str) -> Any:
    """The object in joblib (or plain pickle) bytes: this runs any code they hold."""
    import joblib

    map_moved_modules()
    try:
        return joblib.load(io.BytesIO(data))
    except Exception as exc:  # a pickle can raise anything; say so in one sentence
        raise ModelError(
            f"{source} is not a loadable model ({type(exc).__name__}: {exc}); retrain it."
        ) from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"Could not read the model {path} ({exc.strerror or exc}).") from None


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


def load_model(path: Path, *, allow_pickle: bool = False) -> Any:
    """The estimator in a model file, checked to predict valid rows; ModelError if not."""
    estimator, _sha256 = read_model(path, allow_pickle=allow_pickle)
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
