"""The training step: the TrainState and the jitted step, a pure function of the state.

Its batch comes from fold_in(state.rng, state.step), so a run resumed from a checkpoint sees exactly
the data it would have seen. `steps_per_dispatch` steps run in one `lax.scan` per call (a dispatch), to
keep Python out of the hot loop.
"""

from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from icl_lr.model.icl_model import ICLModel
from icl_lr.task.base import PER_PROMPT, Batch
from icl_lr.train import parallel
from icl_lr.train.config import RunConfig, steps_per_epoch
from icl_lr.train.optimizer import learning_rate_schedule
from icl_lr.train.setup import Setup


class TrainState(struct.PyTreeNode):
    """Everything a resumed run needs. Step keys are fold_in(rng, step), so rng never changes."""

    step: jax.Array
    params: dict
    opt_state: optax.OptState
    rng: jax.Array


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(init key, run key) of a run's seed: the parameters' init, and state.rng, which every batch derives from."""
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    return init_key, run_key


def init_state(setup: Setup, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Step 0 of a run; the parameters and optimiser state from one jitted program (run eagerly, each of
    its ops compiles on its own)."""
    init_key, run_key = run_keys(seed)

    def init(init_key):
        example = setup.task.sample_batch(jax.random.PRNGKey(0), 1)
        params = setup.model.init(init_key, setup.encoding.encode(example.xs, example.ys))["params"]
        return params, tx.init(params)

    params, opt_state = jax.jit(init)(init_key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rng=run_key)


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


def make_step(setup: Setup, tx, cfg: RunConfig, mesh: Mesh):
    """(state, _) -> (state, metrics): one training step, its batch split across `mesh`'s devices."""
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

    return one_step


def make_dispatch(setup: Setup, tx, cfg: RunConfig, mesh: Mesh):
    """jitted (state, n_steps) -> (state, metrics of each step): n_steps steps in one lax.scan, state donated
    and replicated over `mesh`, each batch split across its devices."""
    one_step = make_step(setup, tx, cfg, mesh)

    @partial(jax.jit, static_argnums=1, donate_argnums=0, out_shardings=parallel.replicated(mesh))
    def dispatch(state: TrainState, n_steps: int):
        return jax.lax.scan(one_step, state, length=n_steps)

    return dispatch
