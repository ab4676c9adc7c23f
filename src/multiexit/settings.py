"""One spec per stage: settings dataclasses that validate themselves, name the bad key, and make their CLI.

A stage's settings are one frozen dataclass deriving from :class:`Settings`. Each field carries its
one default, a help text, and (optionally) its allowed range or choices::

    @dataclass(frozen=True)
    class GenerateSettings(Settings):
        batch_size: int = setting(32, "prompts per forward pass", minimum=1)
        device: str = setting("auto", "auto, cpu, cuda, cuda:1, ...", check=check_device)

* :meth:`Settings.from_dict` checks names, types and values and raises :class:`ConfigError`
  naming the key (``config key 'models.m.train.learning_rate': must be > 0, got -1``); the plan
  calls it with the config key prefix, so every stage's settings are validated before any job runs.
* :meth:`Settings.as_dict` is the JSON spec a rule passes to its job (``--spec '{...}'``); the job
  calls :meth:`Settings.from_dict` on it again (the second and last check, where the stage uses it).
* :meth:`Settings.add_arguments` builds a script's argparse options from the same fields, so a
  default exists once, in the dataclass.

Types understood in annotations: ``int``, ``float``, ``bool``, ``str``, ``X | None``, ``X | Y`` of
those, ``tuple[X, ...]`` / ``list[X]`` of scalars (JSON lists; on the command line comma-separated),
and ``dict`` (a JSON object, also on the command line).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from typing import Any, Callable

_META = "multiexit"


class ConfigError(ValueError):
    """A config problem; the message starts with the offending key."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"config key '{key}': {message}")


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    choices: tuple | None = None,
    check: Callable[[Any], None] | None = None,
    cli: bool = True,
):
    """A settings field: its default, help text and value checks (``check`` raises ValueError)."""
    meta = {"help": help, "minimum": minimum, "maximum": maximum, "exclusive_minimum": exclusive_minimum,
            "choices": tuple(choices) if choices is not None else None, "check": check, "cli": cli}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple (or None) as a settings default, not a mutable value")
    return dataclasses.field(default=default, metadata={_META: meta})


def _join_key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _options(annotation) -> list:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


def _type_name(annotation) -> str:
    names = []
    for option in _options(annotation):
        if option is type(None):
            names.append("null")
        elif typing.get_origin(option) in (tuple, list):
            inner = typing.get_args(option)[0]
            names.append(f"a list of {_type_name(inner)}")
        else:
            names.append({int: "an integer", float: "a number", bool: "true/false", str: "a string",
                          dict: "a mapping"}.get(option, str(option)))
    return " or ".join(names)


def _convert(value, annotation):
    """``value`` as ``annotation`` (ints accepted for floats; lists become tuples); TypeError if it does not fit."""
    for option in _options(annotation):
        if option is type(None):
            if value is None:
                return None
            continue
        origin = typing.get_origin(option)
        if origin in (tuple, list):
            if isinstance(value, (list, tuple)):
                inner = typing.get_args(option)[0]
                try:
                    return tuple(_convert(v, inner) for v in value)
                except TypeError:
                    continue
            continue
        if option is bool:
            if isinstance(value, bool):
                return value
            continue
        if option is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            continue
        if option is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            continue
        if option is str:
            if isinstance(value, str):
                return value
            continue
        if option is dict:
            if isinstance(value, dict):
                return dict(value)
            continue
        if option is Any:
            return value
    raise TypeError(f"must be {_type_name(annotation)}, got {value!r}")


def _check_value(value, meta: dict) -> None:
    if value is None:
        return
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if meta["choices"] is not None and item not in meta["choices"]:
            raise ValueError(f"must be one of {', '.join(map(repr, meta['choices']))}, got {item!r}")
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            low, high = meta["minimum"], meta["maximum"]
            if low is not None and (item < low or (meta["exclusive_minimum"] and item == low)):
                raise ValueError(f"must be {'>' if meta['exclusive_minimum'] else '>='} {low}, got {item!r}")
            if high is not None and item > high:
                raise ValueError(f"must be <= {high}, got {item!r}")
    if meta["check"] is not None:
        meta["check"](value)


class Settings:
    """Base of every stage's settings dataclass (subclasses are ``@dataclass(frozen=True)``)."""

    @classmethod
    def _fields(cls) -> list[tuple[dataclasses.Field, Any, dict]]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            meta = f.metadata.get(_META) or {"help": "", "minimum": None, "maximum": None, "exclusive_minimum": False,
                                             "choices": None, "check": None, "cli": True}
            out.append((f, hints[f.name], meta))
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict | None, key: str = ""):
        """Validated settings from ``data``; missing keys take their defaults. Raises ConfigError naming the key."""
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(key or "<settings>", f"expected a mapping, got {data!r}")
        names = cls.field_names()
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(_join_key(key, unknown[0]), f"unknown setting; valid settings: {', '.join(names)}")
        values = {}
        for f, annotation, meta in cls._fields():
            where = _join_key(key, f.name)
            if f.name not in data:
                if f.default is dataclasses.MISSING:
                    raise ConfigError(where, "required setting is missing")
                continue
            try:
                value = _convert(data[f.name], annotation)
                _check_value(value, meta)
            except (TypeError, ValueError) as err:
                raise ConfigError(where, str(err)) from None
            values[f.name] = value
        try:
            made = cls(**values)
        except ConfigError as err:
            raise ConfigError(_join_key(key, err.key), err.message) from None
        except ValueError as err:  # cross-field checks in __post_init__: "name: message" names the field
            name, _, message = str(err).partition(": ")
            raise (ConfigError(_join_key(key, name), message) if name in names else ConfigError(key or "<settings>", str(err))) from None
        return made

    @classmethod
    def error_for(cls, message: str, key: str = "", data: dict | None = None) -> ConfigError:
        """A ConfigError for ``message`` naming ``key`` and the field (or key of ``data``) the message mentions first."""
        import re

        names = [*cls.field_names(), *(data if isinstance(data, dict) else ())]
        spots = [(m.start(), name) for name in names for m in [re.search(rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])", message)] if m]
        name = min(spots)[1] if spots else None
        return ConfigError(_join_key(key, name) if name else (key or "<settings>"), message)

    @classmethod
    def check_value(cls, name: str, value, key: str):
        """``value`` checked and converted as field ``name`` (types, range, choices); ConfigError naming ``key``."""
        for f, annotation, meta in cls._fields():
            if f.name == name:
                try:
                    value = _convert(value, annotation)
                    _check_value(value, meta)
                except (TypeError, ValueError) as err:
                    raise ConfigError(key, str(err)) from None
                return value
        raise KeyError(f"{cls.__name__} has no setting {name!r}")

    def as_dict(self) -> dict:
        """JSON-ready values of every field (tuples as lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, key: str = "--spec"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(key, f"not valid JSON ({err}): {text!r}") from None
        return cls.from_dict(data, key)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
        """One ``--option`` per field (dashes for underscores), defaulting to "not given" (the dataclass default)."""
        for f, annotation, meta in cls._fields():
            if f.name in exclude or not meta["cli"]:
                continue
            flag = "--" + f.name.replace("_", "-")
            default = None if f.default is dataclasses.MISSING else f.default
            text = meta["help"] + (f" (default: {_jsonable(default)})" if f.default is not dataclasses.MISSING else " (required)")
            text = text.replace("%", "%%")  # argparse formats help with %-style fields
            if _options(annotation) == [bool]:
                parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
            else:
                parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar=f.name.upper(), help=text)

    @classmethod
    def describe(cls, indent: str = "  ") -> str:
        """One line per field for a script's help: its spec key, help text and default (as JSON)."""
        width = max(len(f.name) for f in dataclasses.fields(cls))
        lines = []
        for f, _, meta in cls._fields():
            default = "required" if f.default is dataclasses.MISSING else f"default {json.dumps(_jsonable(f.default))}"
            lines.append(f"{indent}{f.name:<{width}}  {meta['help']} ({default})")
        return "\n".join(lines)

    @classmethod
    def values_from_args(cls, namespace: argparse.Namespace) -> dict:
        """The :meth:`add_arguments` options given on the command line, as config values (unvalidated)."""
        hints = {f.name: annotation for f, annotation, _ in cls._fields()}
        return {name: _parse_cli(value, hints[name]) if isinstance(value, str) else value
                for name, value in vars(namespace).items() if name in hints}

    @classmethod
    def from_args(cls, namespace: argparse.Namespace, key: str = ""):
        """Settings from parsed :meth:`add_arguments` options (strings parsed as JSON-like scalars / comma lists)."""
        return cls.from_dict(cls.values_from_args(namespace), key)

    @classmethod
    def from_cli(cls, namespace: argparse.Namespace, key: str = ""):
        """Settings from a script's ``--spec`` JSON object (``namespace.spec``, may be None) with the
        :meth:`add_arguments` options given on the command line on top."""
        data = {}
        if getattr(namespace, "spec", None):
            try:
                data = json.loads(namespace.spec)
            except json.JSONDecodeError as err:
                raise ConfigError("--spec", f"not valid JSON ({err}): {namespace.spec!r}") from None
            if not isinstance(data, dict):
                raise ConfigError("--spec", f"expected a JSON object, got {namespace.spec!r}")
        return cls.from_dict({**data, **cls.values_from_args(namespace)}, key)


def check_device(value: str) -> None:
    """``auto`` or a device string torch can parse (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...).

    ``cpu`` and ``cuda[:N]`` (N without leading zeros, at most 4 digits), which torch always parses, pass
    without importing torch (2 s): the plan checks every stage's device in every Snakemake process."""
    if value == "auto" or re.fullmatch(r"cpu|cuda(:(0|[1-9][0-9]{0,3}))?", value):
        return
    import torch

    try:
        torch.device(value)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"not a torch device ({err}): {value!r}") from None


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _parse_scalar(text: str, annotation):
    for option in _options(annotation):
        if option is type(None) and text.lower() in ("none", "null"):
            return None
        if option is bool and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if option is int:
            try:
                return int(text)
            except ValueError:
                pass
        if option is float:
            try:
                return float(text)
            except ValueError:
                pass
    return text


def _parse_cli(text: str, annotation):
    for option in _options(annotation):
        if option is dict:
            try:
                return json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError("<command line>", f"not valid JSON ({err}): {text!r}") from None
        if typing.get_origin(option) in (tuple, list):
            inner = typing.get_args(option)[0]
            return [_parse_scalar(part.strip(), inner) for part in text.split(",") if part.strip()]
    return _parse_scalar(text, annotation)


__all__ = ["ConfigError", "Settings", "check_device", "setting"]
