"""The W&B internals icl-lr uses, all in icl_lr/records/wandb_adapter.py, checked against these versions:
when a pin moves, this fails first, and the adapter's docstring says what to re-check."""

import importlib.metadata

import pytest

from icl_lr.records import wandb_adapter

pytestmark = pytest.mark.unit


def test_the_adapter_was_checked_against_the_installed_wandb():
    assert importlib.metadata.version("wandb") == wandb_adapter.WANDB_VERSION
    assert importlib.metadata.version("wandb-workspaces") == wandb_adapter.WORKSPACES_VERSION


def test_the_agents_expansion_of_a_sweep_command():
    command = ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}", "out=${envvar:WANDB_RUN_ID}"]
    macros = {"env": ["/usr/bin/env"], "interpreter": ["python"], "program": ["train.py"]}
    argv = wandb_adapter.agent_argv(command, {"seed": 1, "data.noise_std": 0.5}, macros, {"WANDB_RUN_ID": "r1"})
    assert argv == ["/usr/bin/env", "python", "train.py", "seed=1", "data.noise_std=0.5", "out=r1"]


def test_the_parameter_file_is_the_agents(tmp_path):
    import yaml

    path = tmp_path / "wandb" / "sweep-s" / "config-r.yaml"
    wandb_adapter.write_param_file(str(path), {"model": "gpt2_small"})
    assert yaml.safe_load(path.read_text())["model"] == {"value": "gpt2_small"}
