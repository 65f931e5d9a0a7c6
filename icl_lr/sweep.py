"""Run a W&B sweep YAML on this machine, without a W&B server.

    python -m icl_lr.sweep sweeps/noise_prior.yaml --count 4 [-- extra Hydra overrides]

Runs are proposed by the open-source W&B sweeps engine (`sweeps`, the one behind W&B's own
controller: grid, random, bayes), and each is started with the command the sweep's YAML names,
expanded by wandb's own agent code, so a run here is the run `wandb agent` would start. Runs go
one at a time and are recorded offline under outputs/sweep-<id>/<run id>/ (sync them later with
`wandb sync`); they share the W&B group <id>. Early termination needs concurrent runs and a
server, so it is ignored here.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import yaml
from wandb.sdk.launch.sweeps import utils as sweep_utils
from wandb.sdk.lib import runid

from icl_lr.tracking import read_jsonl

with warnings.catch_warnings():  # the engine's pydantic-1 style config warns on import under pydantic 2
    warnings.simplefilter("ignore")
    import sweeps

log = logging.getLogger("icl_lr.sweep")


def load_sweep(path: Path) -> dict:
    """The sweep config, refused with every schema violation the sweeps engine finds."""
    config = yaml.safe_load(Path(path).read_text())
    violations = sweeps.schema_violations_from_proposed_config(config)
    if violations:
        raise ValueError(f"{path}: invalid sweep config: " + "; ".join(violations))
    return config


def expand_command(sweep: dict, params: dict, environ: dict) -> list:
    """The argv `wandb agent` would run for these parameters (its macro expansion, step for step)."""
    saved = {k: os.environ.get(k) for k in environ}
    os.environ.update(environ)  # create_sweep_command fills ${envvar:...} from os.environ
    try:
        template = sweep_utils.create_sweep_command(list(sweep.get("command") or []))  # it edits in place
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    macros = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    macros |= {"env": ["/usr/bin/env"], "interpreter": [sys.executable], "program": [sweep["program"]]}
    argv = []
    for chunk in map(str, template):
        is_macro = chunk.startswith("${") and chunk.endswith("}")
        argv += (macros.get(chunk[2:-1]) or []) if is_macro else [chunk]
    return argv


def _plain(value):
    """numpy scalars from the engine as plain Python values."""
    return value.item() if hasattr(value, "item") else value


def _run_dir(argv: list) -> Path:
    for arg in argv:
        if arg.startswith("hydra.run.dir="):
            return Path(arg.split("=", 1)[1])
    raise ValueError("the sweep's command must set hydra.run.dir (see sweeps/*.yaml)")


def _record(run_dir: Path, name: str, config: dict, returncode: int):
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    history = read_jsonl(run_dir / "metrics.jsonl")
    state = sweeps.RunState.finished if returncode == 0 else sweeps.RunState.failed
    # by alias: under pydantic 2 the engine's models ignore the field names (summary_metrics, history)
    return sweeps.SweepRun(name=name, state=state, config=config, summaryMetrics=summary, sampledHistory=history)


def run_sweep(sweep_path: Path, count: int, overrides: list, sweep_id: str | None = None) -> list:
    """Proposes and runs up to `count` runs; returns one dict per run: id, params, metric, exit code."""
    sweep = load_sweep(sweep_path)
    sweep_id = sweep_id or f"local-{runid.generate_id()}"
    metric = sweep.get("metric", {}).get("name")
    done, results = [], []
    log.info("sweep %s (%s, %s): up to %d runs", sweep_id, sweep_path, sweep["method"], count)
    for index in range(count):
        with warnings.catch_warnings():  # the engine's scipy/sklearn deprecation noise
            warnings.simplefilter("ignore")
            proposal = sweeps.next_run(sweep, done)
        if proposal is None:
            log.info("the sweep's search space is exhausted after %d runs", index)
            break
        params = {key: _plain(spec["value"]) for key, spec in proposal.config.items()}
        run_id = runid.generate_id()
        argv = expand_command(sweep, params, {"WANDB_SWEEP_ID": sweep_id, "WANDB_RUN_ID": run_id})
        argv += [f"wandb.group={sweep_id}", *overrides]
        log.info("run %d/%d (%s): %s", index + 1, count, run_id, " ".join(f"{k}={v}" for k, v in params.items()))
        run_dir = _run_dir(argv)  # before the run: a command without it is refused untried
        returncode = subprocess.run(argv, env=os.environ | {"WANDB_RUN_ID": run_id}).returncode
        record = _record(run_dir, run_id, proposal.config, returncode)
        done.append(record)
        results.append(
            {"run_id": run_id, **params, metric: record.summary_metrics.get(metric), "exit_code": returncode}
        )
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a sweep YAML, e.g. sweeps/noise_prior.yaml")
    parser.add_argument("--count", type=int, default=4, help="number of runs to propose and run (default 4)")
    parser.add_argument("--sweep-id", help="name for the group and output folder (default: local-<random id>)")
    parser.epilog = "Hydra overrides after `--` are added to every run, e.g. `-- training.steps=2000`."
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][sweep] %(message)s")
    try:
        results = run_sweep(args.sweep, args.count, overrides, args.sweep_id)
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        return 2
    for result in results:
        print(json.dumps(result))
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
