"""Typed config sections: a YAML section becomes a frozen dataclass, each value coerced to its field's
type, an unknown key or a wrong type refused in one line naming the key (ConfigError).

Each layer's config module declares its sections; a section's own checks are its `check` method, beside
its fields, and what spans layers is checked where the run is composed (icl_lr/run/config.py). A section
whose keys depend on the components it names (`data:` on its task and encoding, `model:` on its family)
is the composition of its shared fields and each component's Config (`section_class`).
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


def one_line(error: BaseException, limit: int | None = 200) -> str:
    """An error's message on one line (whitespace runs as single spaces), cut at `limit` characters (None: whole)."""
    return " ".join(str(error).split())[:limit]


def is_number(value) -> bool:
    """An int or a float, not a bool (NaN and infinities are numbers)."""
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
        check(is_number(value), f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is int:
        check(isinstance(value, int) and not isinstance(value, bool), f"{key} must be an integer, got {value!r}")
        return value
    if hint is bool:
        check(isinstance(value, bool), f"{key} must be true or false, got {value!r}")
        return value
    if hint is str:  # Hydra reads an all-digit group or name as a number: keep its text
        check(isinstance(value, str) or is_number(value), f"{key} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"no coercion for {hint} ({key})")


def build(cls, values: Any, prefix: str = "", sections: dict | None = None):
    """cls(**values) with every value coerced to its field's type; unknown keys refused. `sections`:
    {field: the section class to build it as}, where a field's hint is only its shared base."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls) | (sections or {})
    full_key = lambda name: f"{prefix}.{name}" if prefix else name
    for name in values:
        check(name in hints, f"unknown key {full_key(name)}")
    return cls(**{name: _coerce(hints[name], value, full_key(name)) for name, value in values.items()})


_SECTIONS = {}  # (base, parts) -> their section class, made once


def section_class(base: type, parts: tuple) -> type:
    """The section with `base`'s shared fields and every part's (each a component's frozen Config dataclass,
    its keys its own); its `check` runs base's and each part's on the whole section. Two parts owning one
    key are refused (ConfigError naming it)."""
    parts = tuple(dict.fromkeys(parts))
    if (base, parts) not in _SECTIONS:
        owners = {f.name: (f, base) for f in dataclasses.fields(base)}
        for part in parts:  # a key may come to two parts from one class they both extend (the same field)
            for f in dataclasses.fields(part):
                other, owner = owners.setdefault(f.name, (f, part))
                check(other is f, f"{f.name} is a key of both {owner.__name__} and {part.__name__}")

        def check_all(section) -> None:
            for owner in (base, *parts):
                owner.check(section)

        def reduce(section):  # pickled by its parts, as the class itself is made here
            return _rebuild, (base, parts, dataclasses.asdict(section))

        namespace = {"check": check_all, "__reduce__": reduce}
        name = "+".join(part.__name__ for part in (base, *parts)).replace("+", "_")
        _SECTIONS[base, parts] = dataclasses.make_dataclass(name, [], bases=(*parts[::-1], base), frozen=True,
                                                            namespace=namespace)  # fmt: skip
    return _SECTIONS[base, parts]


def _rebuild(base: type, parts: tuple, values: dict):
    return build(section_class(base, parts), values)


def check_sections(cfg, prefix: str = "") -> None:
    """Runs the `check` of `cfg` and of every section inside it (their keys under `prefix`)."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            check_sections(value, f"{prefix}{field.name}.")
    if hasattr(cfg, "check"):
        cfg.check()


def free_keys(cfg, prefix: str = "") -> set:
    """The dotted keys of a config's fields (and its sections') marked `free` (metadata): a resumed run may
    change them, as they change neither what the model sees nor how it is updated."""
    keys = set()
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            keys |= free_keys(value, f"{prefix}{field.name}.")
        elif field.metadata.get("free"):
            keys.add(f"{prefix}{field.name}")
    return keys


FREE = {"free": True}  # field metadata: a resume may change this key


def unflatten(flat: dict) -> dict:
    """Dotted keys as a nested config, flatten's inverse ({'model.n_layer': 3} -> {'model': {'n_layer': 3}})."""
    tree = {}
    for key, value in flat.items():
        *parents, name = key.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = value
    return tree


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


def replace_keys(cfg, values: dict):
    """`cfg` (nested frozen dataclasses) with the dotted keys of `values` set, unchecked: flatten's keys, a
    packed run's values given as traced arrays (icl_lr/train/pack.py)."""
    nested = unflatten(values)
    changes = {k: replace_keys(getattr(cfg, k), v) if isinstance(v, dict) else v for k, v in nested.items()}
    return dataclasses.replace(cfg, **changes)
