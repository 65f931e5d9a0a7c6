"""One training run: build, resume if a checkpoint exists, train, evaluate, checkpoint, report."""

import logging
import time
from pathlib import Path

import jax
import numpy as np

from icl_lr import evaluate
from icl_lr.checkpoint import Checkpoints, restore_params
from icl_lr.config import RunConfig
from icl_lr.model import ICLModel
from icl_lr.tracking import LocalFiles, Tracker, Trackers
from icl_lr.train import init_state, make_optimizer, make_train_chunk

log = logging.getLogger("icl_lr")


def build_model(cfg: RunConfig) -> ICLModel:
    return ICLModel(cfg.model, vocab_size=None if cfg.data.encoding == "continuous" else cfg.data.vocab_size)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _headline(curves: dict, n_dims: int) -> str:
    """Errors at k = 2d (or the last k): the model beside the Bayes-optimal and least squares."""
    k = min(2 * n_dims, len(curves["model"]) - 1)
    parts = [f"{name} {curves[name][k]:.4f}" for name in ("model", evaluate.BAYES, "least_squares")]
    return f"error@k={k}: " + ", ".join(parts) + f" (k=0: {curves['model'][0]:.4f})"


def _initial_params(init_from: str, template):
    """Params from a local step directory, or from a W&B model artifact (downloaded)."""
    path = Path(init_from)
    if not path.exists():
        import wandb

        path = Path(wandb.Api().artifact(init_from, type="model").download())
    return restore_params(path, template)


def run(cfg: RunConfig, run_dir: Path, trackers=(), init_from: str | None = None) -> dict:
    """Trains to cfg.training.steps, resuming from run_dir's checkpoints; returns the final summary.

    `init_from` (a checkpoint step directory or W&B artifact reference) sets the initial params of
    a new run; a run dir with checkpoints of its own always resumes from those instead.
    """
    run_dir = Path(run_dir)
    t = cfg.training
    model = build_model(cfg)
    tx = make_optimizer(t)
    state = init_state(model, tx, cfg.data, cfg.seed)
    n_params = sum(p.size for p in jax.tree.leaves(state.params))
    checkpoints = Checkpoints(run_dir / "checkpoints", t.max_to_keep)
    restored = checkpoints.restore_latest(state)
    if restored is not None:
        state = restored
    elif init_from:
        state = state.replace(params=_initial_params(init_from, state))
        log.info("initial params from %s", init_from)
    step = int(state.step)
    log.info("%s at step %d of %d; model %d parameters; run dir %s", "resumed" if restored else "starting", step, t.steps, n_params, run_dir)
    tracker: Tracker = Trackers([LocalFiles(run_dir, resume_step=step), *trackers])

    started = time.perf_counter()
    eval_set = evaluate.make_eval_set(cfg.data, cfg.eval)
    model_curve = evaluate.make_model_curve_fn(model, cfg.data, cfg.eval)
    train_chunk = make_train_chunk(model, tx, cfg.data, t)
    log.info("eval set of %d prompts and its baselines ready in %.1fs", cfg.eval.n_prompts, time.perf_counter() - started)

    summary = {"n_params": n_params}
    window = []  # metrics of the chunks since the last log line
    timer, timed_steps, compiled = time.perf_counter(), 0, False
    while step < t.steps:
        best_dir = None  # set when this step's eval saves a new best checkpoint
        state, metrics = train_chunk(state)
        window.append(jax.device_get(metrics))
        step += t.steps_per_dispatch
        if not compiled:  # the first call compiles: its time is not throughput
            compiled = True
            summary["compile_seconds"] = time.perf_counter() - timer
            log.info("train step compiled and first %d steps run in %.1fs", t.steps_per_dispatch, summary["compile_seconds"])
            timer = time.perf_counter()
        else:
            timed_steps += t.steps_per_dispatch

        if step % t.log_every == 0:
            chunks = {k: np.concatenate([w[k] for w in window]) for k in window[0]}
            record = {
                "train/loss": float(chunks["loss"].mean()),
                "train/grad_norm": float(chunks["grad_norm"].mean()),
                "train/lr": float(chunks["lr"][-1]),
            }
            line = f"step {step}/{t.steps} | loss {record['train/loss']:.4f} | grad norm {record['train/grad_norm']:.3f} | lr {record['train/lr']:.2e}"
            if timed_steps:
                elapsed = time.perf_counter() - timer
                record["train/steps_per_second"] = timed_steps / elapsed
                record["train/examples_per_second"] = timed_steps * t.batch_size / elapsed
                eta = _duration((t.steps - step) / record["train/steps_per_second"])
                line += f" | {record['train/steps_per_second']:.0f} steps/s | ETA {eta}"
            tracker.log(record, step)
            log.info(line)
            window, timer, timed_steps = [], time.perf_counter(), 0

        if step % t.eval_every == 0 or step == t.steps:
            eval_started = time.perf_counter()
            curves = {"model": np.asarray(model_curve(state.params, eval_set.inputs, eval_set.ys)), **eval_set.baseline_curves}
            scalars = {f"eval/{k}": v for k, v in evaluate.summarize(curves, cfg.data.n_dims).items()}
            tracker.log(scalars, step)
            tracker.log_curves(curves, step)
            summary |= scalars | {"curves": {k: v.tolist() for k, v in curves.items()}}
            log.info("eval at step %d | %s | excess over Bayes (mean over k) %.4f", step, _headline(curves, cfg.data.n_dims), scalars["eval/excess/mean"])
            best_dir = checkpoints.save_best(state, scalars["eval/model/error_mean"])
            timer += time.perf_counter() - eval_started  # eval time is not training throughput

        is_checkpoint_step = step % t.checkpoint_every == 0 or step == t.steps
        if is_checkpoint_step:  # one artifact version for both, when the best is also the latest
            aliases = ["latest", f"step-{step}"] + (["best"] if best_dir else [])
            tracker.log_checkpoint(checkpoints.save_latest(state), step, aliases)
        elif best_dir:
            tracker.log_checkpoint(best_dir, step, ["best"])

    checkpoints.close()
    summary |= {"step": step, "wall_seconds": time.perf_counter() - started}
    tracker.finish({k: v for k, v in summary.items() if k != "curves"})  # curves are in curves.jsonl
    log.info("done: %d steps in %s", step, _duration(summary["wall_seconds"]))
    return summary
