"""Checked reads of JSON values: a ValueError that names the field and quotes the value."""

from __future__ import annotations

from typing import Any


def json_object(data: Any, what: str) -> None:
    if not isinstance(data, dict):
        msg = f"{what} must be a JSON object, got {data!r:.200}"
        raise ValueError(msg)


def json_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        msg = f"{name} must be an int, got {value!r}"
        raise ValueError(msg)
    return value


def json_str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        msg = f"{name} must be a str, got {value!r}"
        raise ValueError(msg)
    return value
