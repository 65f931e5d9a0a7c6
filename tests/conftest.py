import os

import pytest

from helpers import FAST, run_config

# Tests never reach a W&B server, even on a machine with a key; tests of the modes pass their own env.
os.environ["WANDB_MODE"] = "offline"


@pytest.fixture
def fast_config():
    return lambda *overrides: run_config(*FAST, *overrides)
