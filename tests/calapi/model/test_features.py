"""The data contract's one Sex encoding, both ways."""

from __future__ import annotations

import numpy as np
import pytest

from calapi.model.features import FEMALE, MALE, encode_sex, sex_labels


@pytest.mark.parametrize(
    ("value", "code"),
    [("male", 1.0), ("female", 0.0), (" MALE ", 1.0), ("Female", 0.0), ("m", 1.0), ("F", 0.0)],
)
def test_encode_sex_accepts_any_case_and_m_or_f(value: str, code: float) -> None:
    """male/female in any case, padded, or m/f map to 1.0/0.0."""
    assert encode_sex(value) == code


@pytest.mark.parametrize("value", ["", "x", "man", None, 1.0])
def test_encode_sex_refuses_anything_else(value: object) -> None:
    """Any other value raises ValueError naming it and the two accepted words."""
    with pytest.raises(ValueError, match=r"'male' or 'female', got") as raised:
        encode_sex(value)
    assert repr(value) in str(raised.value)


def test_sex_labels_reverse_the_codes() -> None:
    """Codes (or booleans) become "male"/"female", and encoding them gives the codes back."""
    codes = np.array([1.0, 0.0, 0.0, 1.0])
    labels = sex_labels(codes)
    assert labels.tolist() == [MALE, FEMALE, FEMALE, MALE]
    assert [encode_sex(label) for label in labels] == codes.tolist()
    assert sex_labels(np.array([True, False])).tolist() == [MALE, FEMALE]
