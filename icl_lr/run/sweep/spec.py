"""A sweep's YAML and `wandb agent`'s part in starting its runs: the config checked against the W&B sweeps
engine's schema (the engine itself imported here, None without the [sweep] extra), its program found, the
command and environment the agent would give a run, the W&B project its runs log to."""

import os
import sys
import warnings
from pathlib import Path

import yaml

from icl_lr.fields import one_line
from icl_lr.records import wandb_adapter
from icl_lr.records.config import WandbConfig

try:
    with warnings.catch_warnings():  # the engine's pydantic-1 style config warns on import under pydantic 2
        warnings.simplefilter("ignore")
        import sweeps
except ImportError:  # the [sweep] extra is not installed: main says so in one line
    sweeps = None


def load_sweep(path: Path) -> dict:
    """The sweep config, refused (ValueError, one line) when it is not YAML, not a mapping, or breaks the
    sweeps engine's schema (every violation named)."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({one_line(error, None)})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a sweep config is a mapping (program, method, parameters, ...), got {config!r:.80}")
    # run_cap is the W&B server's (the open-source engine's schema predates it): checked here, honoured by run_sweep
    parameters = config.get("parameters")  # the engine's schema check itself breaks on another type
    if "parameters" in config and not (
        isinstance(parameters, dict) and all(isinstance(spec, dict) for spec in parameters.values())
    ):
        raise ValueError(
            f"{path}: parameters must map each key to its spec ({{values: [...]}}), got {parameters!r:.80}"
        )
    run_cap = config.get("run_cap")
    if run_cap is not None and not (isinstance(run_cap, int) and run_cap >= 1):
        raise ValueError(f"{path}: run_cap must be a positive integer, got {run_cap!r}")
    violations = sweeps.schema_violations_from_proposed_config({k: v for k, v in config.items() if k != "run_cap"})
    if violations:
        raise ValueError(f"{path}: invalid sweep config: " + "; ".join(" ".join(v.split()) for v in violations))
    return config


def expand_command(sweep: dict, params: dict, environ: dict) -> list:
    """The argv `wandb agent` would run for these parameters (its macro expansion, step for step)."""
    macros = {"env": ["/usr/bin/env"], "interpreter": [sys.executable], "program": [sweep["program"]]}
    return wandb_adapter.agent_argv(sweep.get("command") or [], params, macros, environ)


def plain(value):
    """numpy scalars from the engine as plain Python values."""
    return value.item() if hasattr(value, "item") else value


def run_dir_of(argv: list) -> Path:
    """The run dir a run's command names (its hydra.run.dir=)."""
    for arg in argv:
        if arg.startswith("hydra.run.dir="):
            return Path(arg.split("=", 1)[1])
    raise ValueError("the sweep's command must set hydra.run.dir (see sweeps/*.yaml)")


def resolve_program(sweep: dict, sweep_path: Path) -> dict:
    """The sweep with `program` made absolute: found beside the YAML or in a folder above it (the
    YAML's repository), else among the package's commands (icl_lr/cli/: an installed package's YAMLs), so
    the sweep runs from any working directory."""
    program = Path(sweep["program"])
    if program.is_absolute():
        return sweep
    commands = Path(__file__).resolve().parents[2] / "cli"
    for folder in [Path(sweep_path).resolve().parent, *Path(sweep_path).resolve().parents, commands]:
        if (folder / program).is_file():
            return sweep | {"program": str(folder / program)}
    raise FileNotFoundError(f"{sweep_path}: program {program} is not beside the YAML nor in a folder above it")


def agent_environment(sweep: dict, sweep_id: str, run_id: str, params: dict) -> dict:
    """What `wandb agent` adds to a run's environment (wandb_agent.py: `run_agent` sets the project and
    entity, `Agent.__init__` WANDB_DIR where unset, `Agent._command_run` the sweep and run ids and the
    parameter file, which wandb.init merges over the run's config). The project is `agent_project`'s,
    never the folder's name, which W&B would otherwise take."""
    base = os.environ.get("WANDB_DIR") or os.path.abspath(os.getcwd())
    param_path = os.path.join(base, "wandb", f"sweep-{sweep_id}", f"config-{run_id}.yaml")
    wandb_adapter.write_param_file(param_path, params)
    environ = {"WANDB_PROJECT": agent_project(sweep), "WANDB_DIR": base}
    if sweep.get("entity"):
        environ["WANDB_ENTITY"] = sweep["entity"]
    return environ | {"WANDB_SWEEP_ID": sweep_id, "WANDB_RUN_ID": run_id, "WANDB_SWEEP_PARAM_PATH": param_path}


def agent_project(sweep: dict) -> str:
    """The W&B project a sweep's runs log to: its `project:`, else WANDB_PROJECT, else wandb.project's default."""
    return sweep.get("project") or os.environ.get("WANDB_PROJECT") or WandbConfig().project
