"""One training run: the TrainState, the jitted train step, and the loop in named phases.

The step is a pure function of the state: its batch comes from fold_in(state.rng, state.step), so
a run resumed from a checkpoint sees exactly the data it would have seen. `steps_per_dispatch`
steps run in one `lax.scan` per call (a dispatch), to keep Python out of the hot loop.
"""

import logging
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from icl_lr.fields import ConfigError, one_line
from icl_lr.model.icl_model import ICLModel
from icl_lr.records.checkpoint import Checkpoints, restore_params
from icl_lr.records.schema import (
    CURVES_FILE,
    HELD_OUT,
    METRICS_FILE,
    MODEL_ERROR,
    REFERENCE,
    set_of,
)
from icl_lr.records.tracking import LocalFiles, Tracker, Trackers, read_jsonl
from icl_lr.task.base import PER_PROMPT, Batch
from icl_lr.train import evaluate, parallel
from icl_lr.train.config import RunConfig, steps_per_epoch
from icl_lr.train.optimizer import learning_rate_schedule, make_optimizer
from icl_lr.train.preemption import StopRequest
from icl_lr.train.progress import LiveBar, duration
from icl_lr.train.setup import Setup, build

log = logging.getLogger("icl_lr")


class NonFiniteLoss(RuntimeError):
    """Training diverged: the message names the step and the learning rate."""


class TrainState(struct.PyTreeNode):
    """Everything a resumed run needs. Step keys are fold_in(rng, step), so rng never changes."""

    step: jax.Array
    params: dict
    opt_state: optax.OptState
    rng: jax.Array


def init_state(setup: Setup, tx: optax.GradientTransformation, seed: int) -> TrainState:
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    example = setup.task.sample_batch(jax.random.PRNGKey(0), 1)
    params = jax.jit(setup.model.init)(init_key, setup.encoding.encode(example.xs, example.ys))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=run_key)


def loss_fn(params, model: ICLModel, batch: Batch, dropout_key, last_only: bool = False) -> jax.Array:
    """Mean loss over the y predictions of the prompts that count (`last_only`: the final query's alone,
    training.loss_points=last).

    A family that trains on several outputs (ICLModel.trains_on_stack) is scored on their mean. Only the y
    positions are scored: the x's are i.i.d. noise whose prediction teaches nothing
    about in-context regression. Points beyond the curriculum's current length are masked out.
    """
    inputs = model.encoding.encode(batch.xs, batch.ys)
    outputs = model.apply({"params": params}, inputs, train=True, rngs={"dropout": dropout_key})
    scored_N = batch.point_mask
    if last_only:  # the final query of the prompt (the curriculum's current length)
        scored_N = (jnp.arange(len(scored_N)) == jnp.sum(scored_N) - 1).astype(scored_N.dtype)
    if model.trains_on_stack:  # outputs [S, B, T, O]
        per_point_BxN = jax.vmap(model.encoding.point_losses, (0, None))(outputs, batch.scored).mean(0) * scored_N
    else:
        per_point_BxN = model.encoding.point_losses(outputs, batch.scored) * scored_N
    return jnp.sum(per_point_BxN * batch.example_mask[:, None]) / (jnp.sum(batch.example_mask) * jnp.sum(scored_N))


def make_dispatch(setup: Setup, tx, cfg: RunConfig, mesh: Mesh):
    """jitted (state, n_steps) -> (state, metrics of each step): n_steps steps in one lax.scan, state donated
    and replicated over `mesh`, each batch split across its devices."""
    schedule = learning_rate_schedule(cfg.training)
    epoch_steps = steps_per_epoch(cfg) if cfg.data.train_size else 0
    task, model = setup.task, setup.model

    def one_step(state: TrainState, _):
        step_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
        batch = task.training_batch(state.rng, step_key, cfg.training.batch_size, state.step, epoch_steps)
        batch = batch._replace(**parallel.constrain_rows(mesh, {k: getattr(batch, k) for k in PER_PROMPT}))
        last_only = cfg.training.loss_points == "last"
        loss, grads = jax.value_and_grad(loss_fn)(state.params, model, batch, dropout_key, last_only)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    @partial(jax.jit, static_argnums=1, donate_argnums=0, out_shardings=parallel.replicated(mesh))
    def dispatch(state: TrainState, n_steps: int):
        return jax.lax.scan(one_step, state, length=n_steps)

    return dispatch


class Throughput:
    """Training steps per second over the dispatches since the last `reset`.

    Dispatches that compile (the first of each length) are left out, and so is everything between
    dispatches (eval, checkpoints, logging).
    """

    def __init__(self):
        self.compiled_lengths, self.steps, self.seconds = set(), 0, 0.0

    def record(self, n_steps: int, seconds: float) -> bool:
        """Counts one dispatch; returns True when it was a compile (not counted)."""
        if n_steps not in self.compiled_lengths:
            self.compiled_lengths.add(n_steps)
            return True
        self.steps, self.seconds = self.steps + n_steps, self.seconds + seconds
        return False

    def steps_per_second(self) -> float | None:
        return self.steps / self.seconds if self.steps else None

    def reset(self) -> None:
        self.steps, self.seconds = 0, 0.0


def _initial_params(init_from: str, template, tracker: Tracker):
    """Params from a local step directory, or from a W&B model artifact (downloaded through the run)."""
    try:
        path = Path(init_from) if Path(init_from).exists() else tracker.download_checkpoint(init_from)
        return restore_params(path, template)
    except Exception as error:  # a bad reference, no network, or shapes that do not fit the config
        reason = one_line(error, 300)
        raise ConfigError(f"init_from: cannot start from {init_from} ({type(error).__name__}: {reason})") from error


def _log_phase(tracker: Tracker, window: list, step: int, cfg: RunConfig, throughput: Throughput) -> None:
    """Mean train metrics over the dispatches since the last log line, and one progress line."""
    metrics = {k: np.concatenate([w[k] for w in window]) for k in window[0]}
    record = {
        "train/loss": float(metrics["loss"].mean()),
        "train/grad_norm": float(metrics["grad_norm"].mean()),
        "train/lr": float(metrics["lr"][-1]),
    }
    total = cfg.training.steps
    line = f"step {step}/{total} | loss {record['train/loss']:.4f} | grad norm {record['train/grad_norm']:.3f}"
    line += f" | lr {record['train/lr']:.2e}"
    rate = throughput.steps_per_second()
    if rate:
        record["train/steps_per_second"] = rate
        record["train/examples_per_second"] = rate * cfg.training.batch_size
        line += f" | {rate:.0f} steps/s | ETA {duration((total - step) / rate)}"
    tracker.log(record, step)
    log.info(line)
    throughput.reset()


def _start_state(cfg: RunConfig, setup: Setup, tx, checkpoints: Checkpoints, tracker) -> tuple[TrainState, bool]:
    """The run dir's last checkpoint, else fresh params (or init_from's); and whether it resumed."""
    state = init_state(setup, tx, cfg.seed)
    restored = checkpoints.restore_latest(state)
    if restored is not None:
        return restored, True
    if cfg.init_from:
        log.info("initial params from %s", cfg.init_from)
        return state.replace(params=_initial_params(cfg.init_from, state, tracker)), False
    return state, False


BEST_OF = ("train/loss", MODEL_ERROR)  # the summary keeps each one's minimum as best/<key>


def summary_of(records: list) -> dict:
    """The summary's metrics, derived from the run's records (metrics.jsonl): each key's last value, and
    best/<key> the minimum of each BEST_OF key. A lost or damaged summary.json is so rebuilt whole."""
    summary = {}
    for record in records:
        summary |= {k: v for k, v in record.items() if k != "step"}
        for key in BEST_OF:
            if key in record:
                summary[f"best/{key}"] = min(record[key], summary.get(f"best/{key}", np.inf))
    return summary


def _check_finite(metrics: dict, first_step: int) -> None:
    """Stops a run whose loss is no longer finite, rather than training on NaN."""
    finite = np.isfinite(metrics["loss"])
    if not finite.all():
        i = int(np.argmin(finite))
        raise NonFiniteLoss(
            f"the training loss is {metrics['loss'][i]} at step {first_step + i + 1} (lr {metrics['lr'][i]:.2e}): "
            "training diverged; lower training.learning_rate or raise training.warmup_steps"
        )


def train(cfg: RunConfig, run_dir: Path, trackers=(), stop: StopRequest | None = None) -> dict:
    """Trains to cfg.training.steps, resuming from run_dir's checkpoints; returns the final summary and
    the last held-out curves ("curves").

    `cfg.init_from` (a checkpoint step directory or W&B artifact reference) sets the initial params
    of a new run; a run dir with checkpoints of its own always resumes from those instead. `stop`: a
    SIGTERM or Ctrl-C, answered between dispatches by a checkpoint and `Preempted` or KeyboardInterrupt.
    """
    run_dir, t = Path(run_dir), cfg.training
    stop = stop or StopRequest()
    parallel.check_split(cfg)
    mesh = parallel.data_mesh()
    setup, tx = build(cfg), make_optimizer(t)  # the run's components, built once
    checkpoints = Checkpoints(run_dir / "checkpoints", t.max_to_keep)
    state, resumed = _start_state(cfg, setup, tx, checkpoints, Trackers(trackers))
    state = parallel.replicate(state, mesh)  # a checkpoint from any device count fits
    step, n_params = int(state.step), sum(p.size for p in jax.tree.leaves(state.params))
    epochs = f" ({t.num_epochs} epochs over {cfg.data.train_size} prompts)" if t.num_epochs else ""
    log.info(
        "%s at step %d of %d%s; model %d parameters; on %d %s device%s%s; run dir %s",
        "resumed" if resumed else "starting",
        step,
        t.steps,
        epochs,
        n_params,
        mesh.size,
        jax.devices()[0].platform.upper(),
        "s" * (mesh.size > 1),
        f" in {jax.process_count()} processes" if jax.process_count() > 1 else "",
        run_dir,
    )
    writers = [LocalFiles(run_dir, resume_step=step), *trackers] if parallel.is_primary() else []
    tracker: Tracker = Trackers(writers)
    started = time.perf_counter()
    evaluator = evaluate.Evaluator(setup, cfg, state.rng, mesh)
    dispatch = make_dispatch(setup, tx, cfg, mesh)
    facts = {"n_params": n_params, "n_devices": mesh.size, REFERENCE: evaluator.reference}  # what excess means
    window, throughput = [], Throughput()
    stop.watched = True  # from here on, a stop signal is answered at the end of a dispatch

    with LiveBar(log, enabled=parallel.is_primary()) as bar:  # on a terminal only
        rate = None
        while step < t.steps:
            # train: one dispatch, up to the next multiple of steps_per_dispatch (a preempted run realigns)
            n_steps = min(t.steps_per_dispatch - step % t.steps_per_dispatch, t.steps - step)
            dispatch_started = time.perf_counter()
            state, metrics = dispatch(state, n_steps)
            window.append(jax.device_get(metrics))
            _check_finite(window[-1], step)
            step += n_steps
            if throughput.record(n_steps, time.perf_counter() - dispatch_started) and "compile_seconds" not in facts:
                facts["compile_seconds"] = time.perf_counter() - dispatch_started
                log.info("train step compiled and first %d steps run in %.1fs", n_steps, facts["compile_seconds"])
            is_last = step == t.steps

            rate = throughput.steps_per_second() or rate
            bar.draw(step, t.steps, rate, duration((t.steps - step) / rate) if rate else None)

            # log: train metrics and a progress line
            if step % t.log_every == 0 or is_last:
                _log_phase(tracker, window, step, cfg, throughput)
                window = []

            # eval: error curves, and the best checkpoint by held-out error
            best_dir = None
            if step % t.eval_every == 0 or is_last:
                scalars = evaluator(state.params, tracker, step, final=is_last)
                best_dir = checkpoints.save_best(state, scalars[MODEL_ERROR])

            # checkpoint: the latest state (one artifact version when it is also the best)
            saved = step % t.checkpoint_every == 0 or is_last
            if saved:
                aliases = ["latest", f"step-{step}"] + (["best"] if best_dir else [])
                tracker.log_checkpoint(checkpoints.save_latest(state), step, aliases)
            elif best_dir:
                tracker.log_checkpoint(best_dir, step, ["best"])

            # stop (SIGTERM, Ctrl-C): a checkpoint at this step, W&B told, then stop (the same command resumes here)
            if stop.requested and not is_last:
                if not saved:
                    tracker.log_checkpoint(checkpoints.save_latest(state), step, ["latest", f"step-{step}"])
                checkpoints.close()
                log.warning("%s at step %d: checkpoint saved; the same command resumes here",
                            "SIGTERM" if stop.preempted else "Ctrl-C", step)  # fmt: skip
                if stop.preempted:
                    tracker.preempting()
                stop.stop(f"at step {step}: checkpoint saved")

    checkpoints.close()
    facts |= {"step": step, "wall_seconds": time.perf_counter() - started, "ood_seconds": evaluator.ood_seconds}
    records = read_jsonl(run_dir / METRICS_FILE) if writers else []
    summary = summary_of(records) | facts
    tracker.finish(summary)
    log.info("done: %d steps in %s", step, duration(facts["wall_seconds"]))
    held_out = [r for r in read_jsonl(run_dir / CURVES_FILE) if set_of(r) == HELD_OUT] if writers else []
    return summary | {"curves": {k: v for k, v in held_out[-1].items() if k not in ("step", "set")} if held_out else {}}
