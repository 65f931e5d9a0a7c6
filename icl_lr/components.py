"""Registries of the run's components (tasks, model families, encodings), open to a researcher's own.

A config names a component (`data.task`, `model.family`, `data.encoding`) in one of three ways, resolved
in this order: a built-in name (the registry's own lines: a name and its import path, loaded on first
use), a name an installed package registers under the registry's entry-point group (`icl_lr.tasks`,
`icl_lr.families`, `icl_lr.encodings` in its pyproject's [project.entry-points]), or an import path
`module:Attribute` (a module on sys.path or in the working directory) or `path/to/file.py:Attribute`.
The built-ins go through the same import as a plugin does.

Each resolved component keeps its `origin`, what code it came from: a built-in (icl-lr's own version covers
it), an entry point's distribution and version, a module's or a file's path and the sha256 of its content
when it was imported. A run records its components' origins (icl_lr/run/start.py), so a resume on other code
is told from one on the same.

Every component carries `Config`, the frozen dataclass of the keys it owns in its config section, with
its checks in `check` beside its fields. What it must have besides is the registry's `interface`; a
component that fails to import or lacks part of it is refused in one line (ConfigError) before
anything compiles.
"""

import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from icl_lr.fields import ConfigError, check, one_line


@dataclasses.dataclass(frozen=True)
class NoKeys:
    """The Config of a component that owns no keys."""

    def check(self) -> None:
        pass


def _load(path: str, key: str):
    """(the object at `module:Attribute` or `file.py:Attribute`, its module); ConfigError naming `key` otherwise."""
    module_name, _, attribute = path.partition(":")
    check(module_name and attribute, f"{key}={path!r}: not a known name, nor an import path module:Attribute")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name).resolve()
            check(file.is_file(), f"{key}={path!r}: no file {file}")
            spec = importlib.util.spec_from_file_location(f"icl_lr_plugin_{file.stem}", file)
            module = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
            if spec.name not in sys.modules:
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:  # a module beside the command
                sys.path.append(str(Path.cwd()))
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as error:
        reason = one_line(error)
        raise ConfigError(f"{key}={path!r}: cannot import {module_name} ({type(error).__name__}: {reason})") from None
    check(hasattr(module, attribute), f"{key}={path!r}: module {module_name} has no {attribute}")
    return getattr(module, attribute), module


def sha256_of(file: str | None) -> str | None:
    """The sha256 of a file's content (None for a module without a file)."""
    return hashlib.sha256(Path(file).read_bytes()).hexdigest() if file else None


def origin_of_path(path: str, module) -> dict:
    """Where a component named by import path came from: its file (absolute) and that file's sha256."""
    module_name = path.partition(":")[0]
    file = getattr(module, "__file__", None)
    source = "file" if module_name.endswith(".py") else "import_path"
    return {"source": source, "file": file and str(Path(file).resolve()), "sha256": sha256_of(file)}


class Registry:
    """One kind of component: `key` the config key that names it, `group` its entry-point group,
    `builtins` {name: 'module:Attribute'}, `interface` the attributes every one must have."""

    def __init__(self, key: str, group: str, builtins: dict, interface: tuple):
        self.key, self.group, self.builtins, self.interface = key, group, dict(builtins), interface
        self._resolved, self._origins = {}, {}

    def entry_points(self) -> dict:
        """{name: entry point} of the installed packages' components."""
        return {ep.name: ep for ep in importlib.metadata.entry_points(group=self.group)}

    def names(self) -> tuple:
        """Every component known by name: the built-ins, then the installed packages'."""
        return tuple(dict.fromkeys([*self.builtins, *self.entry_points()]))

    def resolve(self, name: str, key: str | None = None):
        """The component `name` stands for, its interface checked; ConfigError (one line naming `key`, by
        default the registry's) otherwise."""
        if name not in self._resolved:
            self._resolve(name, key or self.key)
        return self._resolved[name]

    def origin(self, name: str) -> dict:
        """What code the component `name` came from: {"source": builtin | entry_point | import_path | file, and
        for an entry point its distribution and version, for a module or file its path and sha256 as imported}."""
        self.resolve(name)
        return self._origins[name]

    def _resolve(self, name: str, key: str):
        if name in self.builtins:
            component, origin = _load(self.builtins[name], key)[0], {"source": "builtin"}
        elif name in (installed := self.entry_points()):
            dist = installed[name].dist
            origin = {"source": "entry_point", "distribution": dist and dist.name, "version": dist and dist.version}
            try:
                component = installed[name].load()
            except Exception as error:
                raise ConfigError(
                    f"{key}={name}: the entry point {installed[name].value} ({self.group}) fails to import "
                    f"({type(error).__name__}: {one_line(error)})"
                ) from None
        elif ":" in name:
            component, module = _load(name, key)
            origin = origin_of_path(name, module)
        else:
            raise ConfigError(
                f"{key} must be one of {self.names()}, an entry point of {self.group} or an import path "
                f"module:Attribute, got {name!r}"
            )
        missing = [attribute for attribute in ("Config", *self.interface) if not hasattr(component, attribute)]
        check(not missing, f"{key}={name}: {component!r} lacks {', '.join(missing)} of the interface")
        config = component.Config
        check(
            dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen,
            f"{key}={name}: its Config must be a frozen dataclass of the keys it owns",
        )
        self._resolved[name], self._origins[name] = component, origin
        return component

    def owners_of(self, field: str) -> tuple:
        """The names of the known components whose Config owns `field`."""
        owners = []
        for name in self.names():
            try:
                config = self.resolve(name).Config
            except ConfigError:
                continue
            if field in {f.name for f in dataclasses.fields(config)}:
                owners.append(name)
        return tuple(owners)
