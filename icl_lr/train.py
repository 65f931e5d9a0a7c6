"""The optimiser and the jitted train step: sampling, forward, backward and update in one program."""

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import struct

from icl_lr import data
from icl_lr.model import ICLModel

SCHEDULES = ("constant", "cosine")
POOL_STREAM = 2**31 - 1  # fold_in index of the run's task-pool key; steps never reach it


@dataclass(frozen=True)
class TrainingConfig:
    """Mirrors configs/training/default.yaml, where each field is documented."""

    steps: int = 12000
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 500
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    steps_per_dispatch: int = 50
    log_every: int = 500
    eval_every: int = 2000
    checkpoint_every: int = 2000
    max_to_keep: int = 3


class TrainState(struct.PyTreeNode):
    """Everything a resumed run needs. Step keys are fold_in(rng, step), so rng never changes."""

    step: jax.Array
    params: dict
    opt_state: optax.OptState
    rng: jax.Array


def learning_rate_schedule(cfg: TrainingConfig) -> optax.Schedule:
    """Linear warmup from 0, then constant or cosine decay to min_lr_ratio * learning_rate."""
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.learning_rate)
    else:
        decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
        after = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps, alpha=cfg.min_lr_ratio)
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def make_optimizer(cfg: TrainingConfig) -> optax.GradientTransformation:
    """AdamW after global-norm clipping; weight decay on matrices only (not biases, LayerNorms)."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(learning_rate_schedule(cfg), weight_decay=cfg.weight_decay, mask=decay_mask),
    )


def model_inputs_example(data_cfg: data.DataConfig) -> jax.Array:
    batch = data.sample_batch(jax.random.PRNGKey(0), data_cfg, 1)
    return data.encode(data_cfg, batch.xs, batch.ys)


def init_state(model: ICLModel, tx: optax.GradientTransformation, data_cfg: data.DataConfig, seed: int) -> TrainState:
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    params = jax.jit(model.init)(init_key, model_inputs_example(data_cfg))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=run_key)


def loss_fn(params, model: ICLModel, data_cfg: data.DataConfig, batch: data.Batch, dropout_key) -> jax.Array:
    """MSE on y predictions (continuous) or cross-entropy on the y tokens (tokens).

    Only the y positions are scored: the x's are i.i.d. noise whose prediction teaches nothing
    about in-context regression. Points beyond the curriculum's current length are masked out.
    """
    inputs = data.encode(data_cfg, batch.xs, batch.ys)
    outputs = model.apply({"params": params}, inputs, train=True, rngs={"dropout": dropout_key})
    if data_cfg.encoding == "continuous":
        per_point = (data.decode_predictions(data_cfg, outputs) - batch.ys) ** 2
    else:
        logits = data.prediction_outputs(data_cfg, outputs)
        per_point = optax.softmax_cross_entropy_with_integer_labels(logits, data.y_target_tokens(data_cfg, batch.ys))
    return jnp.sum(per_point * batch.point_mask) / (per_point.shape[0] * jnp.sum(batch.point_mask))


def make_train_chunk(model: ICLModel, tx, data_cfg: data.DataConfig, cfg: TrainingConfig):
    """jitted state -> (state, metrics): `steps_per_dispatch` steps in one lax.scan, state donated."""
    schedule = learning_rate_schedule(cfg)

    def one_step(state: TrainState, _):
        data_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
        pool_key = jax.random.fold_in(state.rng, POOL_STREAM)
        batch = data.sample_batch(data_key, data_cfg, cfg.batch_size, state.step, pool_key)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, model, data_cfg, batch, dropout_key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    @partial(jax.jit, donate_argnums=0)
    def train_chunk(state: TrainState):
        return jax.lax.scan(one_step, state, length=cfg.steps_per_dispatch)

    return train_chunk
