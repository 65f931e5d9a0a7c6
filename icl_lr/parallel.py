"""Data parallelism over every local device (one process; multi-host is not wired in yet).

One mesh axis, "data": the batch (and the eval's prompts) split across devices, the TrainState
replicated. The step stays one jitted function of the state: its batch is sampled inside `jit` and
constrained to the batch sharding, and XLA's partitioner turns the replicated update into an
all-reduce of the gradients. On one device every sharding is trivial and the program is unchanged.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from icl_lr.config import ConfigError, RunConfig

AXIS = "data"


def data_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def split_rows(mesh: Mesh) -> NamedSharding:
    """Axis 0 (prompts) across the devices, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def constrain_rows(mesh: Mesh, tree):
    """Inside jit: every array of `tree` split along axis 0 across the devices."""
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, split_rows(mesh)), tree)


def check_split(cfg: RunConfig) -> None:
    """Each device takes an equal share of every batch: refuses, in one line, a batch that does not split."""
    n_devices = jax.device_count()
    for key, size in (("training.batch_size", cfg.training.batch_size), ("eval.batch_size", cfg.eval.batch_size)):
        if size % n_devices:
            raise ConfigError(f"{key} ({size}) must be divisible by the number of devices ({n_devices})")
