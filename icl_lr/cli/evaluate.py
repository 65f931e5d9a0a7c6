"""Score a trained model on any prompts: `python eval.py SOURCE [key=value ...]` (or `icl-lr-eval`).

SOURCE: a run dir (its best checkpoint, else its latest), a checkpoint step dir (checkpoints/best/<step>),
a W&B model artifact (entity/project/model-<id>:best; needs the network), or with --from-garg the folder of
one of Garg et al.'s released runs (state.pt and config.yaml). The overrides say what it is scored on, as
train.py's do: data.task=sparse_linear, data.x_cov=skewed, data.noise_std=0.5, data.n_points=22 (a
longer context than trained), eval.prompts=my_prompts.npz, eval.ood=true, eval.algorithms=true, ... A key
of the model (model.*, data.n_dims, data.encoding) that differs from the trained one is refused.

Writes an eval dir of its own, never the run's files: --out, new or empty and outside every run and eval
dir (refused in one line otherwise), or by default outputs/eval/<date>/<time>, new for each process:
eval_config.json (the config it scored on), model.json (the model by path, step and content hash, and
the context it was trained on), metrics.jsonl, curves.jsonl, summary.json, eval.log and
error_vs_context.png (every set's error vs k, a line where the trained context ends); and a W&B run of
job_type eval (offline without a key, as training's), which uses the model artifact when it read one.
"""

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from icl_lr.cli.errors import exit_code
from icl_lr.fields import check
from icl_lr.records import schema
from icl_lr.records.eval_dir import EvalDir
from icl_lr.records.run_dir import config_record, new_run_id, write_atomic
from icl_lr.run.evaluation import eval_config, find_model, load_params

log = logging.getLogger("icl_lr")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="icl-lr-eval", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )  # fmt: skip
    parser.add_argument(
        "source", help="a run dir, a checkpoint step dir, a W&B model artifact, or Garg et al.'s run folder"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="what to score the model on")
    parser.add_argument(
        "--out",
        type=Path,
        help="the eval dir: new or empty, outside every run and eval dir (default: outputs/eval/<date>/<time>)",
    )
    parser.add_argument(
        "--from-garg",
        action="store_true",
        help="SOURCE is Garg et al.'s run folder (its state.pt) or one of its model_<step>.pt (that step); the "
        "task, its kwargs, n_dims and the trained context (curriculum points end) come from its config.yaml",
    )
    return parser.parse_intermixed_args(argv)  # overrides before and after the flags


def _check_shapes(params, template) -> None:
    """An imported model's params have the shapes icl-lr's model of its config has, leaf by leaf."""
    import jax

    got = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    want = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_flatten_with_path(template)[0]}
    check(set(got) == set(want), f"the imported params differ from the model's: {sorted(set(got) ^ set(want))[:4]}")
    wrong = [f"{k} {got[k]} (the model's: {want[k]})" for k in want if got[k] != want[k]]
    check(not wrong, f"the imported params do not fit the model: {'; '.join(wrong[:3])}")


def evaluate(model, cfg, out: Path) -> dict:
    """Scores `model` under `cfg` into the eval dir `out`; returns its summary."""
    from icl_lr.records.tracking import LocalFiles, Trackers, WandbRun, flat_config, resolve_mode
    from icl_lr.train import parallel
    from icl_lr.train.evaluate import Evaluator
    from icl_lr.train.optimizer import make_optimizer
    from icl_lr.train.setup import build
    from icl_lr.train.step import init_state

    started = time.perf_counter()
    mode = resolve_mode(cfg.wandb.mode)
    parallel.use_cpu_devices(cfg)
    parallel.use_compile_cache(cfg)
    setup = build(cfg)
    state = init_state(setup, make_optimizer(cfg.training), cfg.seed)  # its run key: the training run's
    if model.params is not None:
        _check_shapes(model.params, state.params)
    model, params = load_params(model, state)
    mesh = parallel.data_mesh()
    params = parallel.replicate(params, mesh)
    trained_points = model.record.get("data.n_points")
    used = model.describe() | {"trained_n_points": trained_points}
    for name, record in ((schema.EVAL_CONFIG_FILE, config_record(cfg)), (schema.EVAL_MODEL_FILE, used)):
        write_atomic(out / name, json.dumps(record, indent=2) + "\n")
    local = LocalFiles(out)
    trackers, wandb_run = [local], None
    if mode != "disabled":
        facts = {f"evaluated_{k}": v for k, v in model.describe().items()}
        config = flat_config(config_record(cfg), {}) | facts | {"trained_n_points": trained_points}
        wandb_run = WandbRun(cfg.wandb, mode, config, out, new_run_id())
        if model.step_dir is not None and ":" in model.source and not Path(model.source).exists():
            if wandb_run.mode == "online":
                wandb_run.run.use_artifact(model.source, type="model")  # lineage: this eval used that model
        trackers.append(wandb_run)
    tracker = Trackers(trackers)
    log.info("scoring %s (step %d) on %d prompts of %d points (trained on %s)", model.source, model.step,
             cfg.eval.n_prompts, cfg.data.n_points, trained_points)  # fmt: skip
    evaluator = Evaluator(setup, cfg, state.rng, mesh)
    scalars = evaluator(params, tracker, model.step, final=True)
    summary = scalars | {
        "step": model.step,
        **evaluator.references,
        "trained_n_points": trained_points,
        "wall_seconds": time.perf_counter() - started,
    }
    tracker.finish(summary)
    from icl_lr.analysis.plots import plot_evaluation
    from icl_lr.records.tracking import read_jsonl

    last = {
        r["set"]: {k: v for k, v in r.items() if k not in ("step", "set")} for r in read_jsonl(out / "curves.jsonl")
    }
    plot_evaluation(last, trained_points, out / "error_vs_context.png", f"step {model.step}")
    return summary


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        eval_dir = EvalDir(args.out)
        model = find_model(args.source, args.from_garg)
        cfg = eval_config(model.record, args.overrides)
        cfg = dataclasses.replace(cfg, wandb=dataclasses.replace(cfg.wandb, job_type="eval"))
        with eval_dir as out:
            handler = logging.FileHandler(out / "eval.log")
            handler.setFormatter(logging.getLogger().handlers[0].formatter)
            logging.getLogger().addHandler(handler)
            summary = evaluate(model, cfg, out)
    except (Exception, KeyboardInterrupt) as error:
        return exit_code(error)
    log.info("eval dir %s: excess over %s (mean over k) %.4f", out, summary[schema.REFERENCE], summary[schema.EXCESS])
    return 0


def run_cli() -> None:
    """`python eval.py` and `icl-lr-eval`."""
    sys.exit(main())


if __name__ == "__main__":
    run_cli()
