"""What a feedback label may be, and how it covers the rows of its request.

An item of a feedback call is ``{"id": request id, "label": value}``; the value is a
number, a bool (0/1), a numeric string ("1") or a list of numbers. Classes are integers
(column i of class scores is class i, ``evaluation``'s rule), so a string that is not a
number has no class to be. A label for a request of k rows is a list of k values, or
one value that holds for every row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..config import MAX_BATCH_SIZE

MAX_ID_CHARS = 256
MAX_LABEL_VALUES = MAX_BATCH_SIZE  # a request has at most this many rows
_INT64 = 2**63
_SHOWN = 40  # characters of a bad value a message shows

LabelValue = int | float | list


def parse_item(item: object) -> tuple[str, LabelValue]:
    """(id, label) of a feedback item; ValueError saying what is wrong with it."""
    if not isinstance(item, Mapping):
        raise ValueError(f"item is {type(item).__name__}; an item is a mapping {{id, label}}")
    unknown = sorted(str(k) for k in item if k not in ("id", "label"))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(repr(k[:_SHOWN]) for k in unknown)}; an item has "
            f"'id' and 'label'"
        )
    rid = item.get("id")
    if not isinstance(rid, str) or not rid:
        raise ValueError(
            f"'id' must be a non-empty string (the request's x-request-id); got "
            f"{repr(rid)[:_SHOWN]}"
        )
    if len(rid) > MAX_ID_CHARS:
        raise ValueError(f"'id' has {len(rid)} characters; at most {MAX_ID_CHARS}")
    if "label" not in item:
        raise ValueError("the item has no 'label'")
    return rid, parse_label(item["label"])


def parse_label(label: object) -> LabelValue:
    """The label as a number or a list of numbers; ValueError saying why it is neither."""
    if isinstance(label, bool):
        return int(label)
    if isinstance(label, int):
        if not -_INT64 <= label < _INT64:
            raise ValueError(f"label {label} is out of the 64-bit integer range")
        return label
    if isinstance(label, float):
        if not math.isfinite(label):
            raise ValueError(f"label {label} is not finite")
        return label
    if isinstance(label, str):
        text = label.strip()
        for kind in (int, float):
            try:
                value = kind(text)
            except ValueError:
                continue
            return parse_label(value)
        raise ValueError(
            f"label {label[:_SHOWN]!r} is a string that is not a number (classes are "
            f"integers: column i of the class scores is class i)"
        )
    if isinstance(label, list | tuple):
        return _parse_list(label)
    raise ValueError(
        f"label is {type(label).__name__}; use a number, a bool, a numeric string or a list "
        f"of numbers (one per row)"
    )


def _parse_list(label: list | tuple) -> list:
    if not label:
        raise ValueError("label is an empty list; give one value per row of the request")
    if len(label) > MAX_LABEL_VALUES:
        raise ValueError(
            f"label has {len(label)} values; a request has at most {MAX_LABEL_VALUES} rows"
        )
    values = []
    for i, value in enumerate(label):
        if not isinstance(value, int | float):  # bool is an int
            raise ValueError(f"label value {i} is {type(value).__name__}; a list holds numbers")
        try:
            values.append(parse_label(value))
        except ValueError as exc:
            raise ValueError(f"label value {i}: {exc}") from None
    return values


def label_rows(label: LabelValue, rows: int) -> np.ndarray:
    """The label as one value per row of a request of ``rows`` rows; ValueError when a
    list has another length."""
    if isinstance(label, list):
        if len(label) != rows:
            raise ValueError(
                f"the label has {len(label)} values for a request of {rows} rows (give one "
                f"value per row, or a single value for all of them)"
            )
        return np.asarray(label)
    return np.full(rows, label)


__all__ = [
    "MAX_ID_CHARS",
    "MAX_LABEL_VALUES",
    "LabelValue",
    "label_rows",
    "parse_item",
    "parse_label",
]
