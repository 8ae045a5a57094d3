"""`--set KEY.PATH=VALUE`: change one key of the study file from the command line.

Each override is applied to the raw YAML mapping before validation, so an overridden value is
checked exactly like one written in the file (same key paths, same did-you-mean). The value is
read as YAML: a scalar (`0.1`, `true`, `null`, `cosine`) or a flow collection (`[32, 64]`,
`{low: 1, high: 8}`). A key path walks mappings by name and lists by index
(`search.batch_size.0=32`); a missing or empty (null) section on the way is created.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import yaml

from sweeps.config.schema import describe
from sweeps.errors import ConfigError


def split_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=VALUE` -> (["a", "b", "c"], the YAML value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text}", "expected KEY.PATH=VALUE, e.g. --set search.base_lr.high=0.1")
    parts = key.split(".")
    if any(not p.strip() for p in parts):
        raise ConfigError(f"--set {key}", "empty part in the key path")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        reason = str(err).splitlines()[0]
        raise ConfigError(f"--set {key}", f"{raw!r} is not a YAML value ({reason})") from None
    return [p.strip() for p in parts], value


def apply_overrides(data: dict, sets: Sequence[str]) -> dict:
    """A copy of the study file's mapping `data` with every `KEY.PATH=VALUE` of `sets` applied,
    in order (a later one wins). Only the shape of the path is checked here; the keys and the
    values are validated with the rest of the file."""
    if not isinstance(data, dict):
        raise ConfigError("", f"the study file must be a mapping of sections, got {type(data).__name__}")
    out = copy.deepcopy(data)
    for text in sets:
        parts, value = split_override(text)
        key = ".".join(parts)
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            child = child_of(node, part, key, parts[:depth])
            if child is None:  # a section left out, or left empty (`early_stopping:`)
                child = {}
                put(node, part, child, key)
            elif not isinstance(child, dict | list):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {key}", f"{where} is {describe(child)}, not a mapping; "
                                                  f"set {where} itself instead")
            node = child
        put(node, parts[-1], value, key)
    return out


def child_of(node: dict | list, part: str, key: str, above: list[str]) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    return node[index_of(node, part, key, above)]


def put(node: dict | list, part: str, value: Any, key: str) -> None:
    if isinstance(node, dict):
        node[part] = value
    else:
        node[index_of(node, part, key, key.split(".")[:-1])] = value


def index_of(items: list, part: str, key: str, above: list[str]) -> int:
    where = ".".join(above)
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(f"--set {key}", f"{where} is a list: index it with a number, not {part!r}") from None
    if not 0 <= index < len(items):
        raise ConfigError(f"--set {key}", f"{where} holds {len(items)} items: no index {index}")
    return index


@contextmanager
def blamed_on(sets: Sequence[str]) -> Iterator[None]:
    """A validation error at (or inside, or above) an overridden key says which --set caused it."""
    try:
        yield
    except ConfigError as err:
        culprit = culprit_of(err.path, sets)
        if culprit is None:
            raise
        raise ConfigError(err.path, f"{err.message} (from --set {culprit})") from err


def culprit_of(path: str, sets: Sequence[str]) -> str | None:
    if not path:
        return None
    error_parts = path.replace("[", ".").replace("]", "").split(".")
    for text in reversed(sets):  # the last override of a key is the one that counts
        key = text.partition("=")[0].strip()
        parts = key.split(".")
        n = min(len(parts), len(error_parts))
        if parts[:n] == error_parts[:n]:
            return text
    return None
