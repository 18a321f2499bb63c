"""Read /predict bodies into a float matrix and /feedback bodies into ``FeedbackIn``, or
into a 413/422 (with a message per field): strict JSON, no booleans as numbers."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from itertools import chain
from typing import Any, Final

import numpy as np
import orjson
from pydantic import ValidationError

from calapi.model.features import NUMERIC_FEATURES, PLAUSIBLE, SEX_ALIASES, FloatArray, encode_sex
from calapi.serving.predlog.base import MAX_ID_CHARS
from calapi.serving.schemas import ID_MAX, ID_MIN, ROWS, FeedbackIn, Row, RowId

_NUMBERS: Final = (int, float)
_NUMBER_TYPES: Final = frozenset(_NUMBERS)
_ID_TYPES: Final = frozenset((int, str, type(None)))
_NUMBERS_OF: Final = operator.itemgetter(*NUMERIC_FEATURES)
_LOW: Final = np.array([0.0, *(PLAUSIBLE[name][0] for name in NUMERIC_FEATURES)])
_HIGH: Final = np.array([1.0, *(PLAUSIBLE[name][1] for name in NUMERIC_FEATURES)])
_LOW_LIST: Final = _LOW.tolist()
_HIGH_LIST: Final = _HIGH.tolist()
_VECTOR_ROWS: Final = 16
_SEX_KEY, _SEX_ALIAS = SEX_ALIASES


class BadRequestError(Exception):
    """A request the API refuses: its status and one sentence or FastAPI-style errors."""

    def __init__(self, status: int, detail: str | list[dict[str, Any]]) -> None:
        super().__init__(detail if isinstance(detail, str) else detail[0]["msg"])
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ParsedRows:
    """Validated rows: the raw matrix laid out as FEATURES and each row's id (or None)."""

    raw: FloatArray
    ids: list[RowId | None]
    single: bool


def parse_predict_body(body: bytes, max_rows: int) -> ParsedRows:
    """One row, ``{"instances": [...]}`` or a list of rows; strict JSON (no NaN/Infinity)."""
    document = _json(body)
    if isinstance(document, dict) and "instances" in document:
        return _batch(document["instances"], ("body", "instances"), max_rows)
    if isinstance(document, list):
        return _batch(document, ("body",), max_rows)
    if isinstance(document, dict):
        fast = _plain_rows([document], single=True)
        if fast is not None:
            return fast
        row = _validate_one(document)
        return ParsedRows(_encode([row]), [row.id], single=True)
    message = "Body must be a row object, a list of rows or {'instances': [...]}."
    raise BadRequestError(422, [_error(("body",), message, "model_type")])


def _batch(items: Any, where: tuple[str, ...], max_rows: int) -> ParsedRows:
    if not isinstance(items, list):
        raise BadRequestError(
            422, [_error(where, "A batch must be a JSON list of rows.", "list_type")]
        )
    if not items:
        raise BadRequestError(422, [_error(where, "A batch needs at least one row.", "too_short")])
    if len(items) > max_rows:
        message = f"A batch holds at most {max_rows} rows, got {len(items)}; split it."
        raise BadRequestError(413, message)
    fast = _plain_rows(items, single=False)
    if fast is not None:
        return fast
    try:
        rows = ROWS.validate_python(items)
    except ValidationError as exc:
        raise BadRequestError(422, _errors(exc, where)) from None
    return ParsedRows(_encode(rows), [row.id for row in rows], single=False)


def _plain_rows(items: list[Any], *, single: bool) -> ParsedRows | None:
    """The common case, fast: plain numbers in range and a known sex.

    Accepts exactly what ``Row`` accepts when every value is already a JSON number; for
    anything else it returns None and ``Row`` validates, with its messages per field.
    """
    if len(items) >= _VECTOR_ROWS:
        return _plain_matrix(items, single=single)
    read = _plain_table(items)
    if read is None or not _in_bounds(read[0]):
        return None
    return ParsedRows(np.array(read[0], dtype=np.float64), read[1], single=single)


def _plain_table(items: list[Any]) -> tuple[list[tuple[Any, ...]], list[Any]] | None:
    table: list[tuple[Any, ...]] = []
    ids: list[Any] = []
    try:
        for item in items:
            sex = _sex_of(item)
            if type(sex) is not str:
                return None
            table.append((encode_sex(sex), *_NUMBERS_OF(item)))
            ids.append(item.get("id"))
    except (KeyError, TypeError, ValueError):
        return None
    if not all(type(value) in _NUMBERS for values in table for value in values[1:]):
        return None
    if not _plain_ids(ids):
        return None
    return table, ids


def _in_bounds(table: list[tuple[Any, ...]]) -> bool:
    # A few rows: plain comparisons beat numpy's per-call overhead (NaN fails both).
    return all(
        low <= value <= high
        for values in table
        for value, low, high in zip(values, _LOW_LIST, _HIGH_LIST, strict=True)
    )


def _plain_matrix(items: list[Any], *, single: bool) -> ParsedRows | None:
    """``_plain_table`` for many rows: each step one pass in C instead of Python per value."""
    try:
        sexes = list(map(_sex_of, items))
        numbers = list(map(_NUMBERS_OF, items))
        ids = [item.get("id") for item in items]
        codes = _sex_codes(sexes)
    except (KeyError, TypeError, AttributeError):
        return None
    if codes is None or not _NUMBER_TYPES.issuperset(map(type, chain.from_iterable(numbers))):
        return None
    if not _plain_ids(ids):
        return None
    raw = np.empty((len(items), len(_LOW)))
    raw[:, 0] = codes
    raw[:, 1:] = np.fromiter(
        chain.from_iterable(numbers), np.float64, count=len(items) * len(NUMERIC_FEATURES)
    ).reshape(len(items), len(NUMERIC_FEATURES))
    if not (np.isfinite(raw).all() and (raw >= _LOW).all() and (raw <= _HIGH).all()):
        return None
    return ParsedRows(raw, ids, single=single)


def _plain_ids(ids: list[Any]) -> bool:
    """Every id absent, an int within ±ID_MAX, or a string short enough to be a log key."""
    return _ID_TYPES.issuperset(map(type, ids)) and not any(
        len(row_id) > MAX_ID_CHARS if type(row_id) is str else not ID_MIN <= row_id <= ID_MAX
        for row_id in ids
        if row_id is not None
    )


def _sex_of(item: dict[str, Any]) -> Any:
    """The row's spelling of its sex; None (so Row validates) when it sends both keys."""
    if _SEX_KEY not in item:
        return item[_SEX_ALIAS]
    return None if _SEX_ALIAS in item else item[_SEX_KEY]


def _sex_codes(sexes: list[Any]) -> list[float] | None:
    """1.0/0.0 per row, looking each distinct spelling up once; None for an unknown one."""
    codes: dict[Any, float] = {}
    for spelling in set(sexes):
        if type(spelling) is not str:
            return None
        try:
            codes[spelling] = encode_sex(spelling)
        except ValueError:
            return None
    return list(map(codes.__getitem__, sexes))


def parse_feedback_body(body: bytes) -> FeedbackIn:
    """``{"id": ..., "Calories": ...}`` in strict JSON, or a 422 with a message per field."""
    try:
        return FeedbackIn.model_validate(_json(body))
    except ValidationError as exc:
        raise BadRequestError(422, _errors(exc, ("body",))) from None


def _json(body: bytes) -> Any:
    """The document; NaN, Infinity and numbers beyond a double (1e309) are not JSON here."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error = _error(("body",), f"Body is not valid JSON: {exc}", "json_invalid")
        raise BadRequestError(422, [error]) from None


def _validate_one(document: dict[str, Any]) -> Row:
    try:
        return Row.model_validate(document)
    except ValidationError as exc:
        raise BadRequestError(422, _errors(exc, ("body",))) from None


def _encode(rows: list[Row]) -> FloatArray:
    return np.array(
        [
            (encode_sex(r.Sex), r.Age, r.Height, r.Weight, r.Duration, r.Heart_Rate, r.Body_Temp)
            for r in rows
        ],
        dtype=np.float64,
    )


def _errors(exc: ValidationError, where: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        _error((*where, *error["loc"]), error["msg"], error["type"])
        for error in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def _error(loc: tuple[Any, ...], message: str, kind: str) -> dict[str, Any]:
    return {"loc": list(loc), "msg": message, "type": kind}
