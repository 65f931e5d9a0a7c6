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
from icl_lr.fields import ConfigError, check
from icl_lr.records import schema
from icl_lr.records.eval_dir import EvalDir
from icl_lr.records.run_dir import config_record, new_run_id, write_atomic
from icl_lr.run.evaluation import eval_config, find_model, load_params, trajectory_models

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
        "--trajectory",
        action="store_true",
        help="SOURCE is a run dir: score every checkpoint it keeps (training.trajectory's, its latest and its best) "
        "by step into one eval dir; --out an earlier trajectory eval's dir goes on where it stopped",
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


def evaluate(models: list, cfg, out: Path, trajectory: bool = False) -> dict:
    """Scores `models` (one, or with `trajectory` a run's checkpoints by step) under `cfg` into the eval dir `out`,
    after the steps its records hold already (a trajectory eval stopped midway goes on); returns its summary."""
    from icl_lr.records.tracking import LocalFiles, read_jsonl, resolve_mode
    from icl_lr.train import parallel, phases
    from icl_lr.train.evaluate import Evaluator
    from icl_lr.train.loop import summary_of
    from icl_lr.train.optimizer import make_optimizer
    from icl_lr.train.setup import build
    from icl_lr.train.step import init_state

    started = time.perf_counter()
    mode = resolve_mode(cfg.wandb.mode)
    parallel.use_cpu_devices(cfg)
    parallel.use_compile_cache(cfg)
    setup = build(cfg)
    state = init_state(setup, make_optimizer(cfg.training), cfg.seed)  # its run key: the training run's
    if models[0].params is not None:
        _check_shapes(models[0].params, state.params)
    mesh = parallel.data_mesh()
    trained_points = models[0].record.get("data.n_points")
    done = [r["step"] for r in read_jsonl(out / schema.METRICS_FILE) if schema.EXCESS in r]
    _record_start(out, cfg, models, trained_points, done, trajectory)
    local = LocalFiles(out, resume_step=done[-1] if done else -1)  # a step cut short is scored again
    evaluator, tracker = Evaluator(setup, cfg, state.rng, mesh), None
    todo = [m for m in models if not done or m.step > done[-1]]
    read = []
    for n, model in enumerate(todo, len(models) - len(todo) + 1):
        try:
            model, params = load_params(model, state)
        except ConfigError:
            if not trajectory or model.step_dir.exists():
                raise
            log.warning("%s was removed before it was read (the run is being written): step %d left out",
                        model.step_dir, model.step)  # fmt: skip
            continue
        tracker = tracker or _trackers(local, out, cfg, mode, model, trained_points)
        log.info("scoring %s (step %d%s) on %d prompts of %d points (trained on %s)", model.source, model.step,
                 f", {n} of {len(models)}" if len(models) > 1 else "", cfg.eval.n_prompts, cfg.data.n_points,
                 trained_points)  # fmt: skip
        evaluator(parallel.replicate(params, mesh), tracker, model.step, final=n == len(models))
        read.append(model)
    last = read[-1] if read else models[-1]
    tracker = tracker or _trackers(local, out, cfg, mode, last, trained_points)
    _record_read(out, read)
    summary = summary_of(read_jsonl(out / schema.METRICS_FILE)) | {
        "step": last.step,
        **evaluator.references,
        "trained_n_points": trained_points,
        "wall_seconds": time.perf_counter() - started,
    }
    if trajectory:  # its checkpoints' phases, as a run with a trajectory ends with them
        summary |= phases.recorded(phases.held_out_by_step(out), tracker, last.step)
    tracker.finish(summary)
    from icl_lr.analysis.plots import plot_evaluation

    curves = {
        r["set"]: {k: v for k, v in r.items() if k not in ("step", "set")} for r in read_jsonl(out / schema.CURVES_FILE)
    }
    plot_evaluation(curves, trained_points, out / "error_vs_context.png", f"step {last.step}")
    return summary


def _trackers(local, out: Path, cfg, mode: str, model, trained_points):
    """The eval's trackers: its dir's files and, unless disabled, its W&B run (job_type eval), whose config names
    the model read (`model`, as read: its content hash included)."""
    from icl_lr.records.tracking import Trackers, WandbRun, flat_config

    if mode == "disabled":
        return Trackers([local])
    facts = {f"evaluated_{k}": v for k, v in model.describe().items()}
    config = flat_config(config_record(cfg), {}) | facts | {"trained_n_points": trained_points}
    wandb_run = WandbRun(cfg.wandb, mode, config, out, _run_id(out))
    if model.step_dir is not None and ":" in model.source and not Path(model.source).exists():
        if wandb_run.mode == "online":
            wandb_run.run.use_artifact(model.source, type="model")  # lineage: this eval used that model
    return Trackers([local, wandb_run])


def _record_start(out: Path, cfg, models: list, trained_points, done: list, trajectory: bool) -> None:
    """eval_config.json and model.json: what is scored on and what is read (`trajectory`: each step's checkpoint,
    their hashes filled in as they are read). A trajectory eval that goes on must score the same run on the same
    config (ConfigError, one line) and keeps its records of what it read."""
    record = config_record(cfg)
    if done:
        before = json.loads((out / schema.EVAL_CONFIG_FILE).read_text())
        differ = sorted(k for k in set(before) | set(record) if before.get(k) != record.get(k) and "wandb" not in k)
        was = json.loads((out / schema.EVAL_MODEL_FILE).read_text())["source"]
        check(not differ, f"--out {out} holds a trajectory eval on another config (differs in {', '.join(differ[:4])})")
        same = Path(was).resolve() == Path(models[0].source).resolve()
        check(same, f"--out {out} holds a trajectory eval of {was}, not of {models[0].source}")
        log.info("going on with the trajectory eval in %s after step %d", out, done[-1])
        return
    used = {"source": models[0].source, "trajectory": [m.describe() for m in models]} if trajectory else {}
    used = (used or models[0].describe()) | {"trained_n_points": trained_points}
    for name, value in ((schema.EVAL_CONFIG_FILE, record), (schema.EVAL_MODEL_FILE, used)):
        write_atomic(out / name, json.dumps(value, indent=2) + "\n")


def _record_read(out: Path, read: list) -> None:
    """model.json with what each scored step read, its content hash included (earlier attempts' steps kept)."""
    used = json.loads((out / schema.EVAL_MODEL_FILE).read_text())
    by_step = {model.step: model.describe() for model in read}
    if "trajectory" in used:
        used["trajectory"] = [by_step.get(entry["step"], entry) for entry in used["trajectory"]]
    elif read:
        used |= by_step[read[-1].step]
    write_atomic(out / schema.EVAL_MODEL_FILE, json.dumps(used, indent=2) + "\n")


def _run_id(out: Path) -> str:
    """The eval's W&B run id, kept in its dir so a trajectory eval that goes on continues its W&B run."""
    path = out / schema.IDENTITY_FILE
    if path.exists():
        return json.loads(path.read_text())["wandb_run_id"]
    run_id = new_run_id()
    write_atomic(path, json.dumps({"wandb_run_id": run_id}) + "\n")
    return run_id


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        eval_dir = EvalDir(args.out, resume=args.trajectory)
        model = find_model(args.source, args.from_garg)
        models = trajectory_models(model) if args.trajectory else [model]
        cfg = eval_config(model.record, args.overrides)
        cfg = dataclasses.replace(cfg, wandb=dataclasses.replace(cfg.wandb, job_type="eval"))
        with eval_dir as out:
            handler = logging.FileHandler(out / "eval.log")
            handler.setFormatter(logging.getLogger().handlers[0].formatter)
            logging.getLogger().addHandler(handler)
            summary = evaluate(models, cfg, out, args.trajectory)
    except (Exception, KeyboardInterrupt) as error:
        return exit_code(error, again="start it again (a --trajectory eval goes on in its --out)")
    log.info("eval dir %s: excess over %s (mean over k) %.4f", out, summary[schema.REFERENCE], summary[schema.EXCESS])
    return 0


def run_cli() -> None:
    """`python eval.py` and `icl-lr-eval`."""
    sys.exit(main())


if __name__ == "__main__":
    run_cli()
