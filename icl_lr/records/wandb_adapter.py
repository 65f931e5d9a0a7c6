"""Every use of W&B's internals, in one module; everything else uses W&B's public API (wandb.init, the
run's methods, wandb.Api, wandb-workspaces' report classes).

Checked against wandb 0.31.0 and wandb-workspaces 0.4.13 (the pins, tests/test_wandb_adapter.py). What
breaks when they move, and where it shows first:
- `agent_argv`: the agent's macro expansion (wandb.sdk.launch.sweeps.utils) -> the local sweep runner;
- `write_param_file`: the agent's parameter file (wandb.sdk.lib.config_util) -> sweep runs' configs;
- `summary_dict`: a public-API run's summary as a plain dict (Run.summary._json_dict) -> analyze --wandb;
- `read_run_folder`: W&B's own reader of a run's .wandb log (wandb-core's `leet inspect`, called as the
  `wandb leet inspect` command calls it: wandb.cli.leet.launch_inspect) ->
  analyze --wandb-files and the tests' reading of offline runs;
- `report_without_server`, `flat_config_axis`, `flat_config_scatter`: building a report's spec with no
  server (its one project-id lookup), and panels on flat config keys (wandb-workspaces writes nested
  paths) -> analyze --report and --report-spec.
"""

import contextlib
import functools
import json
import os
import subprocess
from pathlib import Path

WANDB_VERSION = "0.31.0"
WORKSPACES_VERSION = "0.4.13"


def agent_argv(command: list, params: dict, macros: dict, environ: dict) -> list:
    """The argv `wandb agent` runs for a sweep's `command` and these parameters: its own expansion of
    ${args...} and ${envvar:...} (read from `environ`), then `macros` (env, interpreter, program)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    saved = {k: os.environ.get(k) for k in environ}
    os.environ.update(environ)  # create_sweep_command fills ${envvar:...} from os.environ
    try:
        template = sweep_utils.create_sweep_command(list(command))  # it edits its argument in place
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    macros = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}}) | macros
    argv = []
    for word in map(str, template):
        is_macro = word.startswith("${") and word.endswith("}")
        argv += (macros.get(word[2:-1]) or []) if is_macro else [word]
    return argv


def write_param_file(path: str, params: dict) -> None:
    """The agent's parameter file, which wandb.init merges over a sweep run's config."""
    from wandb.sdk.lib import config_util

    config_util.save_config_file_from_dict(path, {key: {"value": value} for key, value in params.items()})


def summary_dict(run) -> dict:
    """A public-API run's summary as a plain dict (media as their JSON references)."""
    return run.summary._json_dict


def read_run_folder(run_folder: Path, summary: bool = False):
    """A local run folder (offline-run-*) read by W&B's own reader, which checks each record's CRC: every
    record in the order written ({"type": "history", "history": {...}}, ...), or with `summary` its
    state, config and summary. `wandb leet inspect`'s reader, wandb-core, called as that command calls it
    (wandb.cli.leet.launch_inspect) without the second's start of W&B's CLI in between."""
    from wandb.util import get_core_path

    run_folder = Path(run_folder).resolve()
    run_file = run_folder if run_folder.suffix == ".wandb" else next(iter(sorted(run_folder.glob("*.wandb"))), None)
    if run_file is None:
        raise FileNotFoundError(f"no .wandb log in {run_folder}")
    args = ["--summary", "--json"] if summary else ["--json"]
    command = [get_core_path(), "leet", "inspect", "--no-observability", *args]
    printed = subprocess.run(
        [*command, "--run-file", str(run_file), str(run_file.parent.parent)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(printed) if summary else [json.loads(line) for line in printed.splitlines()]


def config_path(key: str) -> str:
    """Where W&B keeps a flat dotted config key's value: {"training.lr": {"value": ...}} -> `training.lr.value`."""
    return f"{key}.value"


@functools.cache
def _flat_config_panels():
    import wandb_workspaces.reports.v2 as wr

    class ConfigAxis(wr.ParallelCoordinatesPlotColumn):
        """A parallel-coordinates axis of a flat config key (wr.Config alone sends `config:a.value.b`)."""

        def _to_model(self):
            model = super()._to_model()
            model.accessor = f"config:{config_path(self.metric.name)}"
            return model

    class ConfigScatter(wr.ScatterPlot):
        """A scatter plot against a flat config key (x, a wr.Config)."""

        def _to_model(self):
            model = super()._to_model()
            model.config.x_axis = f"config:{config_path(self.x.name)}"
            return model

    return ConfigAxis, ConfigScatter


def flat_config_axis(key: str):
    """A parallel-coordinates axis on the flat config key `key`."""
    import wandb_workspaces.reports.v2 as wr

    return _flat_config_panels()[0](metric=wr.Config(key))


def flat_config_scatter(key: str, **kwargs):
    """A scatter plot whose x is the flat config key `key` (other arguments as wr.ScatterPlot's)."""
    import wandb_workspaces.reports.v2 as wr

    return _flat_config_panels()[1](x=wr.Config(key), **kwargs)


@contextlib.contextmanager
def report_without_server():
    """wandb-workspaces with no server: the one call building a report's spec makes, each run set's
    project-id lookup, answered with a placeholder (the server's id goes in when the report is saved)."""
    from wandb_workspaces.reports.v2 import interface

    lookup, api = interface.execute_graphql, interface._get_api
    interface.execute_graphql = lambda _api, query, variables: {"project": {"internalId": "offline"}}
    interface._get_api = lambda: None
    try:
        yield
    finally:
        interface.execute_graphql, interface._get_api = lookup, api


def report_model(report):
    """The report's model, as `Report.save` builds it before sending."""
    return report._to_model()
