"""Data parallelism over every device: those of this process, or of every process of a multi-host job.

One mesh axis, "data": the batch (and the eval's prompts) split across devices, the TrainState
replicated. The step stays one jitted function of the state: its batch is sampled inside `jit` and
constrained to the batch sharding, and XLA's partitioner turns the replicated update into an
all-reduce of the gradients. On one device every sharding is trivial and the program is unchanged.
Multi-host (`training.distributed`): every process runs the same program on the global mesh, and
process 0 alone writes the run dir, its lock and the W&B run (orbax coordinates the checkpoints).
"""

import math
import os
import zlib

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from icl_lr.fields import ConfigError, one_line
from icl_lr.train.config import RunConfig

AXIS = "data"


def cpu_device_count(cfg: RunConfig) -> int | None:
    """What `training.cpu_devices` asks for: its count; or for auto, None where JAX was told already
    (JAX_NUM_CPU_DEVICES, XLA_FLAGS), else one device per core this process may use, fewer where a batch
    would not split evenly."""
    if cfg.training.cpu_devices != "auto":
        return int(cfg.training.cpu_devices)
    if jax.config.jax_num_cpu_devices >= 0 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    batches = math.gcd(cfg.training.batch_size, cfg.eval.batch_size)
    return max(n for n in range(1, cores + 1) if batches % n == 0)


def use_cpu_devices(cfg: RunConfig) -> None:
    """Splits a CPU into `training.cpu_devices` devices; called before anything touches a device.

    Why: one XLA CPU device runs a step's ops one after another, each spread over the cores by a thread
    pool that the small matmuls and the ops between them leave partly idle. Devices that each take a
    share of the batch keep the cores busy (the figures: docs/benchmark.md). JAX fixes the count when it
    starts; a later job of a multirun that asks for another count is refused. GPU runs leave the CPU
    devices unused.
    """
    count = cpu_device_count(cfg)
    if count is None:
        return
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX has started in this process (an earlier job of a multirun)
        started = len(jax.devices("cpu"))
        if started != count and cfg.training.cpu_devices != "auto":
            raise ConfigError(
                f"training.cpu_devices ({count}): this process already runs on {started} CPU devices, which JAX "
                "fixes at its start; run this job in its own process"
            ) from None


def compile_cache_dir() -> str:
    """Where runs keep compiled programs by default: $XDG_CACHE_HOME/icl-lr/jax, else ~/.cache/icl-lr/jax."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "icl-lr", "jax")


def use_compile_cache(cfg: RunConfig) -> None:
    """JAX's persistent compilation cache (`training.compile_cache`), set before the first compile: a run of
    shapes an earlier run compiled reads its programs from disk instead of compiling them again (the train
    step's compile is most of a short run's start). A cache dir set already (JAX_COMPILATION_CACHE_DIR,
    jax.config) is kept, and so are JAX's own settings (JAX_ENABLE_COMPILATION_CACHE=false, the minimum
    compile time of a cached program, 1 s by default: the many tiny programs are not worth a file each)."""
    if not cfg.training.compile_cache:
        jax.config.update("jax_enable_compilation_cache", False)  # a dir set in the environment too
        return
    if jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", compile_cache_dir())


def initialize_distributed() -> None:
    """Joins the job's other processes before anything touches a device: jax.distributed.initialize()
    finds the coordinator, process count and rank in the cluster's variables (SLURM's SLURM_NTASKS,
    SLURM_PROCID, SLURM_STEP_NODELIST, ...; Open MPI's; or JAX_COORDINATOR_ADDRESS and its arguments)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes all-reduce over TCP
    try:
        jax.distributed.initialize()
    except (ValueError, RuntimeError) as error:  # no cluster's variables, or a coordinator that never answered
        reason = one_line(error)
        raise ConfigError(
            f"training.distributed: no job to join ({reason}); start one process per host under srun or mpirun, "
            "or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID"
        ) from None


def is_primary() -> bool:
    """Whether this process writes: the only one, or process 0 of a multi-host job."""
    return jax.process_index() == 0


def agree(value: int) -> int:
    """Process 0's `value`, on every process: its decision (train, or stop) reaches the others."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def same_on_every_process(text: str) -> bool:
    """Whether every process holds this `text` (all learn the answer, so all stop together)."""
    if jax.process_count() == 1:
        return True
    from jax.experimental import multihost_utils

    digest = np.int32(zlib.crc32(text.encode()) & 0x7FFFFFFF)
    return bool((multihost_utils.process_allgather(digest) == digest).all())


def replicate(tree, mesh: Mesh):
    """`tree` (the same on every process) as arrays replicated over the mesh's devices, all processes' too."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, sharding, lambda i: np.asarray(x)[i]), tree)


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
