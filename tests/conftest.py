import os
import tempfile

# Every test process and every run it starts compiles the same few small programs: JAX's persistent
# compilation cache, shared through the environment, compiles each once per suite (set before JAX loads).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "icl-lr-test-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# And compiles it at LLVM's -O1: a third less compile time than the default -O2, the tiny models run as fast.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):  # once: xdist's workers inherit it
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=1".strip()
# One CPU device in this process and the runs it starts (training.cpu_devices=auto takes JAX's count), so
# the runs of the CLI and of this process compare bit for bit; tests of more devices ask for them.
os.environ["JAX_NUM_CPU_DEVICES"] = "1"

import pytest  # noqa: E402

from helpers import FAST, run_config  # noqa: E402

# Tests never reach a W&B server, even on a machine with a key; tests of the modes pass their own env.
os.environ["WANDB_MODE"] = "offline"


@pytest.fixture
def fast_config():
    return lambda *overrides: run_config(*FAST, *overrides)
