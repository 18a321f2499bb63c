"""The model card: a JSON file beside the model that says what it is and what it was fitted on.

The trainer writes a full card; for a user's script that writes none, ``calops train``
writes one with what can be known without the training data. The API's /info and its
drift monitor read it.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import calapi
from calapi.model.artifact import staged_files, write_json
from calapi.model.features import FEATURES, TARGET, UNITS

CARD_SCHEMA_VERSION: Final = 1
CARD_FILE: Final = "model_card.json"
# The layout, in order; "model_files" (every model file of the set -> its sha256) only when
# there is more than the served one, "training_ranges" to "reference_binning" and "estimator"
# only from the trainer, "written_by" only when calops wrote the card for a script.
CARD_KEYS: Final = (
    "schema_version", "name", "created", "model_file", "sha256", "model_files", "features",
    "target", "units", "training_ranges", "categories", "reference", "reference_binning",
    "metrics", "data", "estimator", "versions", "holdout", "written_by",
)  # fmt: skip
CARD_PACKAGES: Final = ("scikit-learn", "numpy", "pandas", "joblib", "skops")


@dataclass(frozen=True)
class CardFacts:
    """What a card states about one model file; ``training`` holds what only a fit knows."""

    name: str
    model_file: str
    sha256: str
    created: datetime
    metrics: Mapping[str, Any]
    data: Mapping[str, Any]
    holdout: Mapping[str, Any]
    training: Mapping[str, Any] = field(default_factory=dict)
    written_by: str | None = None
    model_files: Mapping[str, str] = field(default_factory=dict)  # name -> sha256, all formats


def build_card(facts: CardFacts) -> dict[str, Any]:
    """The card for ``facts``, its keys in the ``CARD_KEYS`` order."""
    card = {
        "schema_version": CARD_SCHEMA_VERSION,
        "name": facts.name,
        "created": facts.created.isoformat(timespec="seconds"),
        "model_file": facts.model_file,
        "sha256": facts.sha256,
        "features": list(FEATURES),
        "target": TARGET,
        "units": dict(UNITS),
        "metrics": dict(facts.metrics),
        "data": dict(facts.data),
        "versions": library_versions(CARD_PACKAGES),
        "holdout": dict(facts.holdout),
        **facts.training,
    }
    if facts.written_by is not None:
        card["written_by"] = facts.written_by
    if facts.model_files:
        card["model_files"] = dict(facts.model_files)
    return {key: card[key] for key in CARD_KEYS if key in card}


def library_versions(packages: Iterable[str]) -> dict[str, str | None]:
    """Python's and calapi's versions, then each installed package's (None when absent)."""
    found: dict[str, str | None] = {
        "python": platform.python_version(),
        "calapi": calapi.__version__,
    }
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def save_card(path: Path, card: dict[str, Any]) -> None:
    """Write ``card`` to ``path`` atomically: readers see the old card or the new one."""
    with staged_files(path.parent, (path,)) as (temp,):
        write_json(temp, card)


def read_card(path: Path, sha256: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The card and None, or None and why it is ignored; ``sha256`` (if given) must match."""
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"No model card at {path}; the model is served without one."
    except (OSError, ValueError) as exc:
        return None, f"The model card {path} is unreadable ({exc}); ignored."
    if not isinstance(card, dict):
        return None, f"The model card {path} is not a JSON object; ignored."
    if sha256 and card.get("sha256") not in (None, sha256):
        return None, f"The model card {path} describes another model file (sha256); ignored."
    return card, None


def stated_sha256(card: Mapping[str, Any] | None, name: str) -> str | None:
    """The sha256 ``card`` states for the model file ``name``, if it states one.

    ``model_files`` names every file of the set; ``sha256`` is that of ``model_file``, or of
    whichever file the card sits beside when it names none (cards of older calops).
    """
    files = (card or {}).get("model_files")
    if isinstance(files, Mapping) and isinstance(files.get(name), str):
        return str(files[name])
    sha256 = (card or {}).get("sha256")
    named = (card or {}).get("model_file")
    if isinstance(sha256, str) and sha256 and named in (None, name):
        return sha256
    return None


def names_another_file(card: Mapping[str, Any] | None, name: str) -> bool:
    """Whether ``card`` describes a model file other than ``name`` (and not ``name`` too)."""
    named = (card or {}).get("model_file")
    return isinstance(named, str) and named != name and stated_sha256(card, name) is None


def training_ranges(card: Mapping[str, Any] | None) -> dict[str, tuple[float, float]] | None:
    """The card's per-feature (min, max) of the training rows, or None when it has none."""
    try:
        raw = (card or {})["training_ranges"]
        return {name: (float(v["min"]), float(v["max"])) for name, v in raw.items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
