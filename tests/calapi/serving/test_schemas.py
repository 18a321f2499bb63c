"""The /predict row schema is the feature contract of calapi.model.features, field by field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from calapi.model.features import FEATURES, NUMERIC_FEATURES, PLAUSIBLE, SEX_ALIASES, SEX_CODES
from calapi.serving.schemas import EXAMPLE_ROW, Row


def test_row_fields_are_the_features_in_order() -> None:
    """Row has the id, then exactly FEATURES, in the order the raw matrix lays them out."""
    assert tuple(Row.model_fields) == ("id", *FEATURES)


@pytest.mark.parametrize("name", NUMERIC_FEATURES)
def test_numeric_bounds_are_the_plausible_ranges(name: str) -> None:
    """Each measure's JSON schema bounds are PLAUSIBLE's, inclusive."""
    for branch in Row.model_json_schema()["anyOf"]:  # a row with Sex, a row with Gender
        schema = branch["properties"][name]
        assert (schema["minimum"], schema["maximum"]) == PLAUSIBLE[name]


@pytest.mark.parametrize("key", SEX_ALIASES)
@pytest.mark.parametrize("spelling", sorted(SEX_CODES))
def test_every_sex_spelling_and_key_of_the_contract_validates(key: str, spelling: str) -> None:
    """Each accepted spelling, under Sex or its alias, validates (in any case)."""
    body = {k: v for k, v in EXAMPLE_ROW.items() if k != "Sex"} | {key: f" {spelling.upper()} "}
    assert Row.model_validate(body).Sex == spelling


def test_an_unknown_sex_is_refused() -> None:
    """A spelling outside the contract is a validation error naming the field."""
    with pytest.raises(ValidationError, match="Sex"):
        Row.model_validate({**EXAMPLE_ROW, "Sex": "other"})
