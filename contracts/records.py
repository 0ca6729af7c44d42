"""Strict typed records: frozen dataclasses read from JSON / TOML data and written back.

``from_data(cls, data, where, error)`` builds ``cls`` from plain data and raises ``error`` naming the field
(``manifest.json: models.regressor/onnx-int8.inputs[0].dtype: ...``) for an unknown key, a missing
required key or a value of the wrong type. ``to_data(record)`` is the inverse (tuples become lists).

Field types understood: ``bool``, ``int``, ``float`` (an int is accepted), ``str``, ``None``, ``Literal[...]``,
unions (``X | None``, ``float | tuple[float, ...]``), ``tuple[X, ...]``, fixed ``tuple[X, Y]``,
``dict[str, X]``, nested dataclasses, and ``dict`` / ``Any`` for free-form JSON (kept as is).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import lru_cache
from typing import Any, Literal

_NONE = type(None)


@lru_cache(maxsize=None)
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp) -> str:
    if tp is _NONE:
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(tp, value, where: str, error: type[Exception]):
    origin = typing.get_origin(tp)
    if tp is Any or tp is dict and isinstance(value, dict):
        return value
    if tp is _NONE:
        if value is None:
            return None
        raise error(f"{where}: expected null, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and _NONE in options:
            return None
        problems = []
        for option in options:
            if option is _NONE:
                continue
            try:
                return _convert(option, value, where, error)
            except error as exc:
                problems.append(str(exc).split(": ", 1)[-1])
        raise error(f"{where}: expected {' or '.join(_type_name(o) for o in options)}, got {_short(value)}")
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) in {type(v) for v in typing.get_args(tp)}:
            return value
        raise error(f"{where}: must be one of {', '.join(repr(v) for v in typing.get_args(tp))}, got {_short(value)}")
    if dataclasses.is_dataclass(tp):
        return from_data(tp, value, where, error)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise error(f"{where}: expected a list, got {_short(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]", error) for i, v in enumerate(value))
        if len(value) != len(args):
            raise error(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]", error) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise error(f"{where}: expected a table, got {_short(value)}")
        return {_convert(key_type, k, f"{where} key", error): _convert(value_type, v, f"{where}.{k}", error) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        pass  # not a dict: falls through to the error below
    else:
        raise TypeError(f"{where}: unsupported field type {tp!r}")
    raise error(f"{where}: expected {_type_name(tp)}, got {_short(value)}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def from_data(cls, data, where: str, error: type[Exception] = ValueError):
    """``cls(**data)`` with every field checked; ``error`` names the first field that is wrong."""
    if not isinstance(data, dict):
        raise error(f"{where}: expected a table, got {_short(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise error(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} (valid: {', '.join(fields)})")
    hints = _hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise error(f"{where}.{name}: missing")
            continue
        kwargs[name] = _convert(hints[name], data[name], f"{where}.{name}", error)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # a __post_init__ rule
        if isinstance(exc, error):
            raise
        raise error(f"{where}: {exc}") from None


def to_data(record):
    """Plain JSON-able data of a record (dataclasses, tuples and dicts recursively; tuples become lists)."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_data(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, (list, tuple)):
        return [to_data(v) for v in record]
    if isinstance(record, dict):
        return {str(k): to_data(v) for k, v in record.items()}
    return record


__all__ = ["from_data", "to_data"]
