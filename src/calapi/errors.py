"""The one exception family of calops: expected failures with a one-sentence message."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails


class CalopsError(Exception):
    """An expected failure; ``str(exc)`` says what failed and what to do about it."""


class ConfigError(CalopsError):
    """The training configuration is missing or invalid."""


class DataError(CalopsError):
    """A data file is missing, has a missing column or holds an impossible value."""


class ModelError(CalopsError):
    """No model, or a model that cannot be loaded or used."""


class ModelRefusedError(ModelError):
    """A model file that could run code when loaded, or that is not the file its record names."""


class PickleRefusedError(ModelRefusedError):
    """A pickled model, refused because loading pickles was not allowed."""


def validation_reason(error: ErrorDetails) -> str:
    """Why one pydantic error happened, in words: a validator's own sentence as it wrote it.

    pydantic puts "Value error, " before what a validator's ValueError says; that prefix is
    pydantic's, not the user's business.
    """
    cause = error.get("ctx", {}).get("error") if error["type"] == "value_error" else None
    return str(cause or error["msg"]).rstrip(".")
