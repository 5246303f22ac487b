"""The machinery of HAP's settings tree (hap/settings.py), free of TensorFlow so that the command
line's parser and `hap --help` stay fast.

Settings are frozen dataclasses. `defaults_from(section)` gives a dataclass its field defaults
from one section of hap/defaults.yaml, so that file is the only place a default is written;
`parse` builds a dataclass from plain data (YAML, JSON, `--set` values), checking each value's
type and naming the key of a bad one; `to_plain` is its inverse (JSON-ready).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import os
import re
import sys
import types
import typing

import yaml

DEFAULTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "defaults.yaml")


class SettingsError(ValueError):
    """A bad settings key or value; the message names the key, the value and what is allowed."""


@functools.cache
def defaults_tree() -> dict:
    with open(DEFAULTS_FILE, encoding="utf-8") as f:
        # Through JSON: YAML anchors (`*floors`, `<<: *trainer`) load as one shared object, and
        # a change to one model's copy would change the other's.
        return json.loads(json.dumps(yaml.safe_load(f)))


def default_value(path: str):
    """The default of one key, e.g. "serving.port" (a copy: callers may not change the file's)."""
    node = defaults_tree()
    for part in path.split(".") if path else ():
        node = node[part]
    return copy.deepcopy(node)


def _hints(cls) -> dict:
    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


def defaults_from(section: str):
    """Class decorator, applied before @dataclass: every annotated field gets its default from
    `section` of hap/defaults.yaml (a nested dataclass: built from its subsection)."""

    def decorate(cls):
        values = default_value(section)
        hints = _hints(cls)
        for name in cls.__dict__.get("__annotations__", {}):
            key = f"{section}.{name}" if section else name
            if name not in values:
                raise KeyError(f"{DEFAULTS_FILE}: {key} has no default")
            value, kind = values[name], hints[name]
            if dataclasses.is_dataclass(kind):
                setattr(cls, name, dataclasses.field(default_factory=functools.partial(parse, kind, value, key)))
            elif isinstance(value, (dict, list)):
                setattr(cls, name, dataclasses.field(default_factory=functools.partial(parse_value, kind, value, key)))
            else:
                setattr(cls, name, value)
        return cls

    return decorate


_TYPE_WORDS = {int: ("an integer", "int"), float: ("a number", "float"), bool: ("true or false", "bool"),
               str: ("a string", "str")}


def type_text(kind, plain: bool = False) -> str:
    """A setting's type in words, as an error says it ("an integer or null") or, `plain`, as the
    reference lists it ("int or null", "mapping of str to float")."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_text(a, plain) for a in args)
    if origin in (list, tuple):
        return f"{'' if plain else 'a '}list of {type_text(args[0], plain)}"
    if origin in (dict, typing.Mapping) or kind is dict:
        if not args:
            return "mapping" if plain else "a mapping"
        return f"mapping of {type_text(args[0], True)} to {type_text(args[1], True)}" if plain else \
            f"a mapping of {type_text(args[1])}"
    if dataclasses.is_dataclass(kind):
        return "{" + ", ".join(f.name for f in dataclasses.fields(kind)) + "}" if plain else "a mapping of settings"
    words = _TYPE_WORDS.get(kind)
    return (words[1] if plain else words[0]) if words else getattr(kind, "__name__", str(kind))


def parse_value(kind, value, key: str):
    """`value` as type `kind`, or a SettingsError naming `key`."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_value(arg, value, key)
            except SettingsError:
                pass
        raise SettingsError(f"setting {key}: {value!r} is not {type_text(kind)}")
    if dataclasses.is_dataclass(kind):
        return parse(kind, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"setting {key}: {value!r} is not {type_text(kind)}")
        items = [parse_value(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, typing.Mapping) or kind is dict:
        if not isinstance(value, dict):
            raise SettingsError(f"setting {key}: {value!r} is not {type_text(kind)}")
        if not args:
            return copy.deepcopy(value)
        return {str(k): parse_value(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is typing.Any or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
        return value
    raise SettingsError(f"setting {key}: {value!r} is not {type_text(kind)}")


def fields_of(cls) -> dict:
    """{field name: type} of a settings dataclass."""
    hints = _hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def unknown_key_error(key: str, valid: list[str]) -> SettingsError:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    near = f"; did you mean {', '.join(close)}?" if close else ""
    return SettingsError(f"unknown setting {key!r}{near} (`hap config show` lists every key)")


def parse(cls, data, key: str = ""):
    """The dataclass `cls` from a mapping: unknown keys, bad types and values the class refuses
    (its __post_init__) are SettingsErrors naming the key. Missing keys take the defaults."""
    where = key or "the settings"
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise SettingsError(f"setting {where}: {data!r} is not a mapping of settings")
    kinds = fields_of(cls)
    unknown = [k for k in data if k not in kinds]
    if unknown:
        prefix = f"{key}." if key else ""
        raise unknown_key_error(prefix + str(unknown[0]), [prefix + k for k in kinds])
    values = {name: parse_value(kinds[name], value, f"{key}.{name}" if key else name) for name, value in data.items()}
    try:
        return cls(**values)
    except SettingsError:
        raise
    except (ValueError, TypeError) as e:
        raise SettingsError(f"setting {where}: {e}") from None


def to_plain(obj):
    """Plain data (dicts, lists, scalars) of a settings dataclass, JSON- and YAML-ready."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


_KEY_LINE = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):")


def key_comments() -> dict[str, str]:
    """{dotted key: the comment lines right above it in hap/defaults.yaml}, the keys' meanings."""
    comments, stack, pending = {}, [], []
    with open(DEFAULTS_FILE, encoding="utf-8") as f:
        for line in f:
            stripped = line.strip()
            if stripped.startswith("#"):
                pending.append(stripped.lstrip("# ").rstrip())
                continue
            match = _KEY_LINE.match(line)
            if not match:
                pending = []
                continue
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            if pending:
                comments[".".join(name for _, name in stack)] = " ".join(pending)
            pending = []
    return comments

