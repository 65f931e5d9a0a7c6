import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from icl_lr.checkpoint import Checkpoints  # noqa: E402
from icl_lr.config import from_dictconfig  # noqa: E402
from icl_lr.run import build_model  # noqa: E402
from icl_lr.train import init_state, make_optimizer  # noqa: E402

# Tests never reach a W&B server, even on a machine with a key; tests of the modes pass their own env.
os.environ["WANDB_MODE"] = "offline"

# A run small enough for a test: the tiny model, d=3, checkpoints/evals every 20 steps.
FAST = [
    "data.n_dims=3",
    "data.n_points=8",
    "model.n_layer=1",
    "model.n_embd=32",
    "training.batch_size=16",
    "training.steps=40",
    "training.warmup_steps=0",
    "training.steps_per_dispatch=10",
    "training.log_every=10",
    "training.eval_every=20",
    "training.checkpoint_every=20",
    "eval.n_prompts=64",
    "eval.batch_size=32",
]


def compose_config(*overrides):
    """The Hydra config that `python train.py *overrides` would get."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def run_config(*overrides):
    return from_dictconfig(compose_config(*overrides))


@pytest.fixture
def fast_config():
    return lambda *overrides: run_config(*FAST, *overrides)


def no_key_env(**extra) -> dict:
    """The environment of a machine with no W&B key and no mode set (W&B's default: offline here)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_RUN_ID")}
    return env | {"NETRC": os.devnull} | extra


def train(run_dir, *overrides, fast=True, env=None, cwd=ROOT, timeout=300):
    """`python train.py [FAST] overrides hydra.run.dir=run_dir`, as a user runs it; checks it succeeds."""
    command = [sys.executable, str(ROOT / "train.py"), *(FAST if fast else []), *overrides, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=cwd, env=env or no_key_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def final_state(cfg, run_dir):
    """The last checkpointed TrainState of a run dir."""
    template = init_state(build_model(cfg), make_optimizer(cfg.training), cfg.data, cfg.seed)
    checkpoints = Checkpoints(run_dir / "checkpoints", cfg.training.max_to_keep)
    try:
        return checkpoints.restore_latest(template)
    finally:
        checkpoints.close()


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
