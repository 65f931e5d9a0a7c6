"""Typed config sections: a YAML section becomes a frozen dataclass, each value coerced to its field's
type, an unknown key or a wrong type refused in one line naming the key (ConfigError).

Each layer's config module declares its sections; a section's own checks are its `check` method, beside
its fields, and what spans layers is checked where the run is composed (icl_lr/run/config.py).
"""

import dataclasses
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def check(condition: bool, message: str) -> None:
    """Refuses a value (ConfigError with `message`, one line naming the key) unless `condition` holds."""
    if not condition:
        raise ConfigError(message)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _coerce(hint, value, key: str):
    """`value` as the type hint `hint` says, or a ConfigError naming `key`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[X]
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return None if value is None else _coerce(inner, value, key)
    if dataclasses.is_dataclass(hint):
        check(value is None or isinstance(value, dict), f"{key} must be a mapping of keys, got {value!r}")
        return build(hint, value, key)
    if typing.get_origin(hint) is tuple:  # tuple[X, ...]
        check(isinstance(value, (list, tuple)), f"{key} must be a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float:
        check(_is_number(value), f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is int:
        check(isinstance(value, int) and not isinstance(value, bool), f"{key} must be an integer, got {value!r}")
        return value
    if hint is bool:
        check(isinstance(value, bool), f"{key} must be true or false, got {value!r}")
        return value
    if hint is str:  # Hydra reads an all-digit group or name as a number: keep its text
        check(isinstance(value, str) or _is_number(value), f"{key} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"no coercion for {hint} ({key})")


def build(cls, values: Any, prefix: str = ""):
    """cls(**values) with every value coerced to its field's type; unknown keys refused."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    full_key = lambda name: f"{prefix}.{name}" if prefix else name
    for name in values:
        check(name in hints, f"unknown key {full_key(name)}")
    return cls(**{name: _coerce(hints[name], value, full_key(name)) for name, value in values.items()})


def check_sections(cfg, prefix: str = "") -> None:
    """Runs the `check` of `cfg` and of every section inside it (their keys under `prefix`)."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            check_sections(value, f"{prefix}{field.name}.")
    if hasattr(cfg, "check"):
        cfg.check()


def free_keys(cls, prefix: str = "") -> set:
    """The dotted keys of `cls`'s fields (and its sections') marked `free` (metadata): a resumed run may
    change them, as they change neither what the model sees nor how it is updated."""
    keys = set()
    for field in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[field.name]
        if dataclasses.is_dataclass(hint):
            keys |= free_keys(hint, f"{prefix}{field.name}.")
        elif field.metadata.get("free"):
            keys.add(f"{prefix}{field.name}")
    return keys


FREE = {"free": True}  # field metadata: a resume may change this key


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested config as dotted keys ({'model': {'n_layer': 3}} -> {'model.n_layer': 3}), as Hydra
    overrides, sweeps and W&B's run table name its values."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
