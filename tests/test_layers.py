"""The package's layers: imports flow one way, down this list, with no circle (imports inside functions
included), and every knob has one home (its YAML line and its typed field agree). No process starts."""

import ast
import dataclasses
import inspect
import os
import re
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, compose_config, run_config
from icl_lr.fields import flatten, free_keys
from icl_lr.model.config import ModelConfig
from icl_lr.model.encoding import ENCODINGS
from icl_lr.model.icl_model import FAMILIES
from icl_lr.records.run_dir import config_record
from icl_lr.task.config import DataConfig
from icl_lr.task.registry import TASKS
from icl_lr.train.config import RunConfig

pytestmark = pytest.mark.unit

# Bottom to top: a module may import its own layer's modules and those of the layers below it.
LAYERS = [
    "icl_lr.fields",
    "icl_lr.components",
    "icl_lr.records",
    "icl_lr.task",
    "icl_lr.model",
    "icl_lr.train",
    "icl_lr.run",
]
LAYERS += ["icl_lr.analysis", "icl_lr.cli"]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, package: str = "icl_lr") -> dict:
    """{module: the package's modules it imports, anywhere in it (module level or inside functions)}."""
    files = {module_name(p, root): p for p in (root / package).rglob("*.py")}
    graph = {}
    for module, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[module] = {name for name in found if name in files and name != package}
    return graph


def layer_of(module: str, layers: list) -> int:
    if module.rpartition(".")[2] == "__main__":  # `python -m <package>`: a command, whatever package it is in
        return len(layers) - 1
    (index,) = [i for i, layer in enumerate(layers) if module == layer or module.startswith(layer + ".")]
    return index


def upward_imports(graph: dict, layers: list) -> list:
    return [
        f"{module} -> {imported}"
        for module, imported_modules in graph.items()
        if module not in ("icl_lr", "pkg")
        for imported in imported_modules
        if layer_of(imported, layers) > layer_of(module, layers)
    ]


def cycles(graph: dict) -> list:
    state, found = {}, []

    def visit(module, path):
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                found.append(" -> ".join([*path[path.index(imported) :], imported]))
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_imports_flow_down_the_layers_with_no_circle():
    graph = import_graph(ROOT)
    assert all(layer_of(module, LAYERS) >= 0 for module in graph if module != "icl_lr")  # each in one layer
    assert not upward_imports(graph, LAYERS)
    assert not cycles(graph)
    # the run is built once (train/setup.py) and passed down: below it, nothing looks a task up by name
    lookups = {m for m, imported in graph.items() if "icl_lr.task.registry" in imported}
    assert lookups <= {"icl_lr.train.setup", "icl_lr.run.config", "icl_lr.task.registry"} | {
        m for m in graph if m.startswith(("icl_lr.analysis", "icl_lr.cli"))
    }, lookups


def test_the_walk_finds_an_import_inside_a_function_going_up_and_a_circle(tmp_path):
    package = tmp_path / "pkg"
    for layer in ("low", "high"):
        (package / layer).mkdir(parents=True)
        (package / layer / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("def f():\n    from pkg.high import b\n")
    (package / "high" / "b.py").write_text("from pkg.low import a\n")
    graph = import_graph(tmp_path, "pkg")
    assert "pkg.low.a -> pkg.high.b" in upward_imports(graph, ["pkg.low", "pkg.high"])
    assert cycles(graph) == ["pkg.high.b -> pkg.low.a -> pkg.high.b"]


def test_every_typed_field_has_its_yaml_line_and_back():
    """The composed default config names the default run's keys with their values; configs/data's YAML
    every built-in task's and encoding's keys with their defaults, and back; each model YAML exactly its
    family's keys and the shared ones."""
    composed = flatten(yaml.safe_load(_composed_yaml()))
    fields = config_record(RunConfig())
    assert {k: composed[k] for k in fields} == fields
    assert {k for k in composed if not k.startswith(("data.", "model."))} <= set(fields)
    data_keys = set(flatten(dataclasses.asdict(DataConfig()), "data."))
    for registry in (TASKS, ENCODINGS):
        for name in registry.names():
            owned = config_record(registry.resolve(name).Config())
            assert {f"data.{k}": composed[f"data.{k}"] for k in owned} == {f"data.{k}": v for k, v in owned.items()}
            data_keys |= {f"data.{k}" for k in owned}
    assert {k for k in composed if k.startswith("data.")} == data_keys
    for preset in sorted((ROOT / "configs" / "model").glob("*.yaml")):
        keys = set(yaml.safe_load(_composed_yaml(f"model={preset.stem}"))["model"])
        family = FAMILIES.resolve(yaml.safe_load(_composed_yaml(f"model={preset.stem}"))["model"]["family"])
        assert keys == {f.name for f in dataclasses.fields(ModelConfig)} | {
            f.name for f in dataclasses.fields(family.Config)
        }, preset.name


def _composed_yaml(*overrides) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(compose_config(*overrides))


def test_the_keys_a_resume_may_change_are_declared_on_their_fields():
    every_family = [run_config(), run_config("model=lstm"), run_config("model=mamba"), run_config("experiment=lsa")]
    free = set().union(*(free_keys(cfg) for cfg in every_family))
    assert {k for k in free if not k.startswith(("eval.", "wandb."))} == {
        "training.steps",
        "training.distributed",
        "training.cpu_devices",
        "training.compile_cache",
        "training.steps_per_dispatch",
        "training.log_every",
        "training.eval_every",
        "training.checkpoint_every",
        "training.max_to_keep",
        "training.trajectory",
        "training.allow_code_change",
        "model.embedding_std",
        "model.gd_learning_rate",
        "model.scan",
        "init_from",
    }
    every = set(flatten(dataclasses.asdict(RunConfig())))
    assert {k for k in every if k.startswith(("eval.", "wandb."))} <= free


def test_every_registered_component_has_the_interface_its_registry_promises():
    """Read from the registries: a component added there is checked here with no edit."""
    for registry in (TASKS, FAMILIES, ENCODINGS):
        for name in registry.names():
            component = registry.resolve(name)
            assert {"Config", *registry.interface} <= set(dir(component)), (registry.key, name)
            assert dataclasses.is_dataclass(component.Config()), (registry.key, name)  # its keys, defaults
    for name in FAMILIES.names():  # built from (its section, dtype), called on (embeddings, train)
        trunk = FAMILIES.resolve(name)
        assert {"config", "dtype"} <= set(trunk.__dataclass_fields__), name
        assert list(inspect.signature(trunk.__call__).parameters)[2:] == ["train"], name


def test_a_missing_extra_is_named_in_one_line(monkeypatch, capsys):
    """The runtime install leaves out the sweeps engine, wandb-workspaces and pyarrow: each command that needs
    one says which extra installs it."""
    import importlib.util

    from icl_lr.cli import analyze, sweep

    monkeypatch.setattr(sweep, "sweeps", None)
    assert sweep.main(["sweeps/model_size.yaml"]) == 2
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else find_spec(name, *a)
    )
    with pytest.raises(SystemExit):
        analyze.parse_args(["outputs", "--format", "parquet"])
    assert "--format parquet need pyarrow: pip install 'icl-lr[parquet]'" in capsys.readouterr().err


def test_every_imported_package_is_declared():
    """Each third-party package the code imports is a requirement of the runtime or of an extra."""
    import sys

    lines = [line.split("#")[0].strip() for p in ROOT.glob("requirements*.txt") for line in p.read_text().splitlines()]
    declared = {re.split(r"[=<>\[ ]", line)[0].lower() for line in lines if line}
    aliases = {
        "yaml": "pyyaml",
        "sklearn": "scikit-learn",
        "wandb_workspaces": "wandb-workspaces",
        "xgboost": "xgboost-cpu",
    }
    aliases |= {"orbax": "orbax-checkpoint", "hydra": "hydra-core", "jaxlib": "jaxlib"}
    imported = set()
    for path in [*(ROOT / "icl_lr").rglob("*.py"), ROOT / "train.py", ROOT / "analyze.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            imported |= {name.split(".")[0] for name in names}
    third_party = {n for n in imported if n not in sys.stdlib_module_names and n != "icl_lr"}
    assert {n for n in third_party if aliases.get(n, n).lower() not in declared} == set()


def test_the_project_speaks_of_itself_only():
    """No issue numbers, no mention of the document it was started from or of sessions, outside tests/."""
    pattern = re.compile(
        r"issue [0-9]+|the issue|the seed's format|the brief|original brief|\bsessions?\b", re.IGNORECASE
    )
    skip = {".git", ".venv", "tests", "outputs", "multirun", "wandb", "analysis", "__pycache__", ".pytest_cache"}
    found = []
    for folder, folders, files in os.walk(ROOT):
        folders[:] = [f for f in folders if f not in skip and not f.endswith(".egg-info")]
        for name in files:
            path = Path(folder) / name
            if path.suffix in {".py", ".md", ".yaml", ".toml", ".txt", ".sh", ".sbatch"} or name == "run":
                found += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in pattern.finditer(path.read_text())]
    assert not found
