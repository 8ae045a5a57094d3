"""Typed mapping -> dataclass conversion that names the exact key path of every error.

The study file is validated by its own dataclass type hints: one place declares each key, its
type and its default, and this module turns a YAML mapping into those dataclasses or raises a
`ConfigError` naming the offending path (with a did-you-mean for misspelt keys).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from sweeps.errors import ConfigError


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def build(cls: type, data: Any, path: str) -> Any:
    """Build dataclass `cls` from mapping `data`: check keys and types, fill the defaults that
    depend on other keys (`fill_defaults`), then run its checks (`validate`, which changes nothing)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a mapping, got {describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if not isinstance(key, str) or key not in fields:
            raise ConfigError(join(path, str(key)), "unknown key" + did_you_mean(str(key), fields))
    hints = get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = coerce(hints[name], data[name], join(path, name))
        elif dataclasses.is_dataclass(hints[name]) and field.default_factory is not dataclasses.MISSING:
            kwargs[name] = build(hints[name], {}, join(path, name))  # a section left out: its defaults filled too
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(join(path, name), "required key is missing")
    obj = cls(**kwargs)
    fill_defaults = getattr(obj, "fill_defaults", None)  # defaults derived from other keys, before any check
    if fill_defaults is not None:
        fill_defaults()
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)
    return obj


def describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}"


def coerce(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal or is_choice(tp):
        allowed = get_args(tp) if origin is Literal else tp.choices()
        if value is False and "off" in allowed:  # YAML 1.1 reads an unquoted `off` (or `no`) as false
            return "off"
        if value not in allowed:
            hint = did_you_mean(str(value), [str(a) for a in allowed])
            names = ", ".join(str(a) for a in allowed)
            raise ConfigError(path, f"must be one of {names}; got {value!r}{hint}")
        return value
    if origin in (Union, types.UnionType):
        return coerce_union(get_args(tp), value, path)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected a list, got {describe(value)}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(path, f"expected {len(args)} items, got {len(value)}")
            return tuple(coerce(a, v, join(path, i)) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return [coerce(item, v, join(path, i)) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {describe(value)}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(path, f"expected an integer, got {describe(value)}")
        return value
    if tp is float:
        number = value
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(path, f"expected a number, got {describe(value)}") from None
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ConfigError(path, f"expected a number, got {describe(value)}")
        if not math.isfinite(number):
            raise ConfigError(path, f"expected a finite number, got {describe(value)}")
        return float(number)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {describe(value)}")
        return value
    raise TypeError(f"schema type {tp!r} at {path} is not supported")


def coerce_union(options: tuple, value: Any, path: str) -> Any:
    """Pick the union member by the shape of the value: null, mapping, list or scalar."""
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(path, "must not be empty (null)")
    if isinstance(value, dict):
        shaped = [o for o in options if dataclasses.is_dataclass(o) or get_origin(o) is dict]
    elif isinstance(value, list | tuple):
        shaped = [o for o in options if get_origin(o) in (list, tuple)]
    else:
        shaped = [
            o
            for o in options
            if o is not type(None)
            and not dataclasses.is_dataclass(o)
            and get_origin(o) not in (list, tuple, dict)
        ]
    errors = []
    for option in shaped:
        try:
            return coerce(option, value, path)
        except ConfigError as err:
            errors.append(err)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigError(path, "; or ".join(e.message for e in errors))
    kinds = ", ".join(sorted({form_name(o) for o in options if o is not type(None)}))
    raise ConfigError(path, f"expected {kinds}, got {describe(value)}")


class Choice(str):
    """A string field whose allowed values are read when a file is checked, not fixed in a
    Literal: a registry that grows (the budget units) is known to the validation and the schema
    without another edit. Subclass it with `choices`."""

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        raise NotImplementedError


def is_choice(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Choice)


def form_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp) or get_origin(tp) is dict:
        return "a mapping"
    if get_origin(tp) in (list, tuple):
        return "a list"
    if get_origin(tp) is Literal or is_choice(tp):
        return "one of " + ", ".join(map(str, get_args(tp) if get_origin(tp) is Literal else tp.choices()))
    return getattr(tp, "__name__", str(tp))
