"""Run a W&B sweep YAML on this machine, without a W&B server.

    python -m icl_lr.run.sweep sweeps/noise_prior.yaml --count 4 [-- extra Hydra overrides]
    python -m icl_lr.run.sweep sweeps/noise_prior.yaml --count 8 --resume local-abc123

Runs are proposed by the open-source W&B sweeps engine (`sweeps`, the one behind W&B's own
controller: grid, random, bayes), and each is started as `wandb agent` starts it: the command the
YAML names, expanded by wandb's own agent code, with the agent's environment (WANDB_PROJECT, WANDB_DIR,
WANDB_SWEEP_ID, WANDB_RUN_ID, WANDB_SWEEP_PARAM_PATH) and its parameter file, written by wandb's own code
(icl_lr/records/wandb_adapter.py).
Runs go one at a time (or `--workers N` at once: one GPU each, round robin, with JAX's memory share
set when several share one; on a CPU, a share of its cores each), offline, under
outputs/sweep-<id>/<run id>/ (its output in console.log there), grouped by the sweep id. The console gets a
line per run start and end (k/N, elapsed, ETA, best so far) and, at the end, the runs best first; each
run's result is appended to outputs/sweep-<id>/results.jsonl as soon as it ends.
Early termination needs concurrent runs and a server, so it is ignored here. `--agent` runs one run and
exits, as `wandb agent --count 1` does: many agents (a SLURM job array's tasks) share one sweep.
"""

import argparse
import logging
import sys
from pathlib import Path

from icl_lr.cli.errors import INTERRUPTED, PREEMPTED, exit_code
from icl_lr.run.sweep.agent import run_agent
from icl_lr.run.sweep.runner import pack_size, run_sweep
from icl_lr.run.sweep.spec import sweeps
from icl_lr.train.preemption import Preempted, StopRequest

log = logging.getLogger("icl_lr.run.sweep")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a sweep YAML, e.g. sweeps/noise_prior.yaml")
    parser.add_argument("--count", type=int, default=4, help="runs in the sweep, earlier ones of --resume included")
    parser.add_argument("--sweep-id", help="name for the group and output folder (default: local-<random id>)")
    parser.add_argument("--resume", metavar="SWEEP_ID", help="continue this local sweep (its results.jsonl)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs at once, each in its own process (one GPU each when there are GPUs)",
    )
    parser.add_argument(
        "--pack",
        default="1",
        help="up to this many runs of one shape trained as one program (a pack: each still its own run dir and W&B "
        "run), or auto: 16 on a GPU, 1 on a CPU (where packing does not pay; docs/benchmark.md)",
    )
    parser.add_argument(
        "--agent",
        action="store_true",
        help="one run, then exit, as `wandb agent --count 1`: agents sharing --sweep-id (a SLURM job array's "
        "tasks, scripts/slurm_agent.sbatch) never run a proposal twice; --count is the whole sweep's",
    )
    parser.epilog = "Hydra overrides after `--` are added to every run, e.g. `-- training.steps=2000`."
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][sweep] %(message)s")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # --pack's grouping starts JAX
    if sweeps is None:
        log.error("the local sweep runner needs the W&B sweeps engine: pip install 'icl-lr[sweep]'")
        return 2
    StopRequest().install()  # SIGTERM: the runs are sent one and the runner stops, saying how to go on
    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        pack = pack_size(args.pack)
        sweep_id = args.resume or args.sweep_id
        if args.agent:
            if not args.sweep_id or args.resume or args.workers != 1 or pack != 1:
                raise ValueError("--agent takes --sweep-id (the id its agents share), not --resume, --workers, --pack")
            results = run_agent(args.sweep, args.count, overrides, args.sweep_id)
        else:
            results = run_sweep(args.sweep, args.count, overrides, sweep_id, bool(args.resume), args.workers, pack)
    except (ValueError, FileNotFoundError) as error:  # the sweep file or the flags: the line says what is wrong
        log.error("%s", error)
        return 2
    except KeyboardInterrupt:  # the runner has said how to go on
        return INTERRUPTED
    except Preempted:
        return PREEMPTED
    except Exception as error:
        return exit_code(error)
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


def run_cli() -> None:
    """`python -m icl_lr.run.sweep` and `icl-lr-sweep`."""
    sys.exit(main())
