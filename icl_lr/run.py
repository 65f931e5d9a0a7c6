"""One training run: build, resume if a checkpoint exists, train, evaluate, checkpoint, report."""

import logging
import time
from pathlib import Path

import jax
import numpy as np

from icl_lr import evaluate
from icl_lr.checkpoint import Checkpoints
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


def run(cfg: RunConfig, run_dir: Path, trackers=()) -> dict:
    """Trains to cfg.training.steps, resuming from run_dir's checkpoints; returns the final summary."""
    run_dir = Path(run_dir)
    t = cfg.training
    model = build_model(cfg)
    tx = make_optimizer(t)
    state = init_state(model, tx, cfg.data, cfg.seed)
    n_params = sum(p.size for p in jax.tree.leaves(state.params))
    checkpoints = Checkpoints(run_dir / "checkpoints", t.max_to_keep)
    restored = checkpoints.restore_latest(state)
    state = restored if restored is not None else state
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
            scalars = evaluate.summarize(curves, cfg.data.n_dims)
            scalars["model/error_mean"] = float(curves["model"].mean())
            tracker.log(scalars, step)
            tracker.log_curves(curves, step)
            summary |= scalars | {"curves": {k: v.tolist() for k, v in curves.items()}}
            log.info("eval at step %d | %s | excess over Bayes (mean over k) %.4f", step, _headline(curves, cfg.data.n_dims), scalars["excess/mean"])
            if checkpoints.save_best(state, scalars["model/error_mean"]):
                tracker.log_checkpoint(checkpoints.best.directory, step, ["best"])
            timer += time.perf_counter() - eval_started  # eval time is not training throughput

        if step % t.checkpoint_every == 0 or step == t.steps:
            directory = checkpoints.save_latest(state)
            tracker.log_checkpoint(directory, step, ["latest", f"step-{step}"])

    checkpoints.close()
    summary |= {"step": step, "wall_seconds": time.perf_counter() - started}
    tracker.finish({k: v for k, v in summary.items() if k != "curves"})  # curves are in curves.jsonl
    log.info("done: %d steps in %s", step, _duration(summary["wall_seconds"]))
    return summary
