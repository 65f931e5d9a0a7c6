"""Where a sweep's workers run: this machine's GPUs, a worker's GPU (and JAX's memory share) or its share of
the CPU cores, and processes started on given cores."""

import contextlib
import os
import subprocess


def gpu_indices() -> list:
    """This machine's NVIDIA GPUs, by index, as nvidia-smi lists them (none without it). Not through JAX:
    its first use would take most of each GPU's memory in this process."""
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True)
    except FileNotFoundError:
        return []
    return listed.stdout.decode().split() if listed.returncode == 0 else []


def worker_environment(slot: int, workers: int, gpus: list) -> dict:
    """Worker `slot`'s devices: GPU slot mod #GPUs (CUDA_VISIBLE_DEVICES), with JAX's memory share set when
    several workers share one GPU; nothing on a CPU-only machine (see `worker_cores`)."""
    if not gpus:
        return {}
    sharing = -(-workers // len(gpus))  # workers per GPU, at most
    environ = {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]}
    if sharing > 1:
        environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / sharing:.2f}"
    return environ


def worker_cores(slot: int, workers: int, cores: list) -> list:
    """Worker `slot`'s CPU cores when the runs share a CPU: a disjoint share while there are enough
    (each run's training.cpu_devices=auto then splits its own share, not every core), else one core."""
    if workers >= len(cores):
        return [cores[slot % len(cores)]]
    return cores[slot::workers]


@contextlib.contextmanager
def on_cores(cores: list | None):
    """Processes started inside run on `cores` (None: on this one's): they inherit this thread's CPU
    affinity, set for the while and restored (no preexec_fn, which forks unsafely beside threads)."""
    if cores is None:
        yield
        return
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, own)
