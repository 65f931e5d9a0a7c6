import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from icl_lr.config import from_dictconfig  # noqa: E402

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
