"""The model card: one builder for trainer and scripts, atomic saving, tolerant reading."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from calapi.model.card import (
    CARD_KEYS,
    CARD_SCHEMA_VERSION,
    CardFacts,
    build_card,
    library_versions,
    read_card,
    save_card,
    training_ranges,
)
from calapi.model.features import FEATURES, TARGET


def script_facts(**overrides: Any) -> CardFacts:
    """What calops knows about a script's model: no training rows."""
    facts = CardFacts(
        name="calories",
        model_file="model.joblib",
        sha256="ab" * 32,
        created=datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC),
        metrics={"rmsle": 0.2},
        data={"source": "synthetic", "synthetic": True},
        holdout={"enabled": True},
        written_by="a test",
    )
    return dataclasses.replace(facts, **overrides)


def test_a_card_without_training_facts_states_what_is_known() -> None:
    """A script's card has the contract's keys, in order, and none that need training rows."""
    card = build_card(script_facts())
    assert list(card) == [
        "schema_version", "name", "created", "model_file", "sha256", "features", "target",
        "units", "metrics", "data", "versions", "holdout", "written_by",
    ]  # fmt: skip
    assert card["schema_version"] == CARD_SCHEMA_VERSION
    assert card["created"] == "2026-01-02T03:04:05+00:00"
    assert (card["features"], card["target"]) == (list(FEATURES), TARGET)
    assert card["versions"]["scikit-learn"]


def test_training_facts_take_their_documented_place() -> None:
    """Facts only a fit knows land in CARD_KEYS order; without written_by there is none."""
    training = {"estimator": {"n_iter": 3}, "training_ranges": {}, "reference": {}}
    card = build_card(script_facts(training=training, written_by=None))
    assert list(card) == [key for key in CARD_KEYS if key in card]
    assert list(card).index("training_ranges") < list(card).index("metrics")
    assert "written_by" not in card


def test_library_versions_name_python_calapi_and_absent_packages() -> None:
    """Python and calapi always; an installed package's version; None for a missing one."""
    found = library_versions(("numpy", "no-such-package-calops"))
    assert list(found) == ["python", "calapi", "numpy", "no-such-package-calops"]
    assert found["numpy"]
    assert found["no-such-package-calops"] is None


def test_saved_card_reads_back_and_is_world_readable(tmp_path: Path) -> None:
    """save_card writes the JSON with mode 644 and no temp; read_card returns it."""
    card = build_card(script_facts())
    path = tmp_path / "model_card.json"
    save_card(path, card)
    assert [p.name for p in tmp_path.iterdir()] == ["model_card.json"]
    assert path.stat().st_mode & 0o777 == 0o644
    assert read_card(path, card["sha256"]) == (card, None)


def test_a_failed_save_keeps_the_previous_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If writing fails midway, the old card stays whole and no temp file is left."""
    path = tmp_path / "model_card.json"
    save_card(path, {"name": "old"})

    def disk_full(temp: Path, payload: dict[str, Any]) -> None:
        temp.write_text("{", encoding="utf-8")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("calapi.model.card.write_json", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_card(path, {"name": "new"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"name": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["model_card.json"]


@pytest.mark.parametrize(
    ("content", "note"),
    [
        (None, "No model card at"),
        ("{not json", "is unreadable"),
        ("[1, 2]", "is not a JSON object"),
        ('{"sha256": "other"}', "describes another model file"),
    ],
)
def test_unusable_cards_are_ignored_with_a_reason(
    tmp_path: Path, content: str | None, note: str
) -> None:
    """Missing, broken, non-object and mismatched cards give None and one sentence."""
    path = tmp_path / "model_card.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    card, reason = read_card(path, "mine")
    assert card is None
    assert reason is not None
    assert note in reason


def test_training_ranges_read_from_a_card() -> None:
    """Ranges come back as (min, max) floats; a card without them gives None."""
    card = {"training_ranges": {"Age": {"min": 20, "max": 79}}}
    assert training_ranges(card) == {"Age": (20.0, 79.0)}
    assert training_ranges({"training_ranges": {"Age": {"min": 1}}}) is None
    assert training_ranges(None) is None
