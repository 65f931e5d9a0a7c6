"""Packed runs against runs one at a time, side by side in one run (docs/benchmark.md).

    python bench/pack.py                                   # gpt2_tiny, gpt2_narrow at K = 1, 4, 16; an 8-run sweep
    python bench/pack.py --presets gpt2_tiny --packs 1 4 --sweep-steps 0   # no sweep

1. Run-steps per second of the jitted train step (sampling, forward, backward, AdamW) of K runs packed into
   one program (icl_lr/train/pack.py; seeds and noise levels apart) against one run alone on the same
   devices (a CPU split as training.cpu_devices=auto splits it): a pack's rate counts the steps of each of its
   K runs, so K times one run's rate (1.00 in the last column) is perfect packing, and 1/K what running the K
   runs one after another gives.
2. A whole 8-run sweep (a grid of 4 seeds by 2 noise levels, `python -m icl_lr.run.sweep`, W&B disabled), from
   the runner's start to its end: `--pack 8` against `--workers W` (W: the GPUs, or 2 processes on a CPU).
The default recipe (`python train.py model=<preset>`: d = 5, 11 points, batch 64). A benchmark, not a test.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import yaml
from hydra import compose, initialize_config_dir

from icl_lr.run.config import from_dictconfig
from icl_lr.run.sweep.devices import gpu_indices
from icl_lr.train import pack, parallel
from icl_lr.train.optimizer import make_optimizer
from icl_lr.train.setup import build
from icl_lr.train.step import init_state, make_dispatch

ROOT = Path(__file__).resolve().parents[1]
DISPATCH = 10  # steps per timed call


def run_config(preset: str, seed: int, noise_std: float):
    overrides = [f"model={preset}", f"seed={seed}", f"data.noise_std={noise_std}"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return from_dictconfig(compose("config", overrides=overrides))


def timed(dispatch, state, calls: int) -> float:
    """Steps per second of `calls` dispatches of DISPATCH steps, after one that compiles."""
    state, metrics = dispatch(state, DISPATCH)
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    for _ in range(calls):
        state, metrics = dispatch(state, DISPATCH)
    jax.block_until_ready(metrics)
    return calls * DISPATCH / (time.perf_counter() - started)


def run_steps_per_second(preset: str, k: int, calls: int) -> float:
    """Each run's steps per second times the runs: of one run alone (k = 1), else of a pack of k."""
    mesh = parallel.data_mesh()
    cfgs = [run_config(preset, seed, 0.5 * (seed % 2)) for seed in range(k)]
    states = [init_state(build(cfg), make_optimizer(cfg.training), cfg.seed) for cfg in cfgs]
    if k == 1:
        setup = build(cfgs[0])
        dispatch = make_dispatch(setup, make_optimizer(cfgs[0].training), cfgs[0], mesh)
        return timed(dispatch, parallel.replicate(states[0], mesh), calls)
    keys = pack.check(cfgs, mesh)
    return k * timed(pack.make_dispatch(cfgs, keys, mesh), parallel.replicate(pack.stack(states), mesh), calls)


def sweep_seconds(steps: int, preset: str, flags: list) -> float:
    """Wall time of the 8-run sweep with the runner's `flags`, in a fresh folder."""
    folder = Path(tempfile.mkdtemp(prefix="bench-pack-"))
    command = ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
    command += ["hydra.run.dir=outputs/sweep-${envvar:WANDB_SWEEP_ID}/${envvar:WANDB_RUN_ID}"]
    grid = {"seed": {"values": [0, 1, 2, 3]}, "data.noise_std": {"values": [0.0, 0.5]}}
    sweep = {"program": str(ROOT / "train.py"), "method": "grid", "command": command, "parameters": grid}
    (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    argv = [sys.executable, "-m", "icl_lr.run.sweep", "sweep.yaml", "--count", "8", "--sweep-id", "bench", *flags]
    argv += ["--", f"model={preset}", f"training.steps={steps}", "wandb.mode=disabled"]
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=folder, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(flags)}: the sweep failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["gpt2_tiny", "gpt2_narrow"])
    parser.add_argument("--packs", nargs="+", type=int, default=[1, 4, 16], help="K, runs per pack (1: alone)")
    parser.add_argument("--calls", type=int, default=5, help="timed dispatches of 10 steps per measurement")
    parser.add_argument("--sweep-steps", type=int, default=2000, help="steps of each sweep run (0: no sweep)")
    parser.add_argument("--sweep-preset", default="gpt2_tiny")
    args = parser.parse_args()
    parallel.use_cpu_devices(run_config(args.presets[0], 0, 0.0))  # as train.py splits a CPU, before JAX starts
    devices = jax.devices()
    print(f"devices: {len(devices)} x {devices[0].device_kind} ({devices[0].platform}); jax {jax.__version__}")
    print(f"\n{'preset':<12} {'K':>3} {'run-steps/s':>12} {'x one run':>10} {'of K x one run':>15}")
    for preset in args.presets:
        alone = None
        for k in args.packs:
            rate = run_steps_per_second(preset, k, args.calls)
            alone = rate if k == 1 else alone
            ratio = f"{rate / alone:10.2f}" if alone else f"{'':>10}"
            per_run = f"{rate / k / alone:15.2f}" if alone else f"{'':>15}"
            print(f"{preset:<12} {k:>3} {rate:12.1f} {ratio} {per_run}", flush=True)
    if args.sweep_steps:
        workers = len(gpu_indices()) or min(2, os.cpu_count() or 1)
        print(f"\n8-run sweep ({args.sweep_preset}, {args.sweep_steps} steps each, W&B disabled):")
        for flags in (["--workers", str(workers)], ["--pack", "8"]):
            print(f"  {' '.join(flags):<12} {sweep_seconds(args.sweep_steps, args.sweep_preset, flags):7.1f} s",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
