"""eval.llc: the local learning coefficient (LLC) of the model at each eval, the effective dimension of its
training loss around its parameters w* (Lau et al. 2023), estimated as devinterp does: SGLD localised at w*
(devinterp's src/devinterp/optim/sgld.py), each chain's loss averaged over its draws after a burn-in, and
llc = nbeta (mean loss over the draws - loss at w*) (src/devinterp/slt/llc.py, LLCEstimator; default nbeta
n / log n, n the batch size: src/devinterp/utils.py, default_nbeta; the sampling loop:
src/devinterp/backends/default/slt/sampler.py).

The loss is the run's training loss (train/step.loss_fn) on batches drawn as training draws them: fresh prompts
from the run's prior or task pool at the checkpoint's curriculum stage, or prompts of its finite training set
(data.train_size) at random; not the held-out prompts. Every draw derives from eval.seed's stream 6, so an
estimate is a function of the parameters and the config, the same noise at every eval.
"""

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

from icl_lr.components import NoKeys
from icl_lr.fields import check
from icl_lr.train.analyses import Result
from icl_lr.train.config import EVAL_LIMIT
from icl_lr.train.eval_sets import EvalSet, set_key
from icl_lr.train.step import loss_fn, run_keys

log = logging.getLogger("icl_lr")

LLC_STREAM = 6  # eval.seed's stream of the SGLD's batches and noise (eval_sets.set_key)
CHAINS_AT_ONCE = 16  # chains vmapped side by side (memory: this many parameter copies); more run in turn


def sgld_llc(loss, noise, params, *, step_size, localization, nbeta, chains, draws, burn_in):
    """SGLD from w* = `params`, `chains` chains (CHAINS_AT_ONCE side by side, vmapped), each of burn_in + draws
    steps (lax.scan) w <- w - eps/2 (nbeta grad L_ct(w) + gamma (w - w*)) + sqrt(eps) xi_ct, where
    L_ct = loss(w, c, t) is chain c's batch at step t and xi_ct = noise(c, t) a standard normal tree like w.

    Returns (llc per chain [C], losses [C, burn_in + draws]): each step's L_ct(w_t) before its update, so
    losses[:, 0] is the loss at w* on each chain's first batch (devinterp's init loss, one batch a chain) and
    llc_c = nbeta (mean of the draws' losses - losses[c, 0]). Memory: min(C, CHAINS_AT_ONCE) parameter copies and
    the losses."""

    def chain(c):
        def step(w, t):
            value, grad = jax.value_and_grad(loss)(w, c, t)
            drift = lambda g, x, x0: nbeta * g + localization * (x - x0)
            move = lambda x, g, x0, xi: x - step_size / 2 * drift(g, x, x0) + math.sqrt(step_size) * xi
            return jax.tree.map(move, w, grad, params, noise(c, t)), value

        return jax.lax.scan(step, params, jnp.arange(burn_in + draws))[1]

    losses = jax.lax.map(chain, jnp.arange(chains), batch_size=min(chains, CHAINS_AT_ONCE))
    return nbeta * (losses[:, burn_in:].mean(1) - losses[:, 0]), losses


def gaussian_noise(key, params):
    """noise(c, t) for sgld_llc: a standard normal tree like `params`, from fold_in(key, c, t)."""
    leaves, tree = jax.tree.flatten(params)

    def noise(c, t):
        keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, c), t), len(leaves))
        return tree.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)])

    return noise


def default_nbeta(batch_size: int) -> float:
    """devinterp's default inverse temperature, n / log n with n the prompts of a batch."""
    return batch_size / math.log(batch_size)


class LLC:
    """The scalars llc/mean and llc/std_err (the standard error of the chains' mean; with two chains or more),
    and the chains' losses after their burn-in (`trace` [chains, draws], with `init_loss` [chains], the loss at
    w*, and `llc` [chains]) in llc/step_<n>.npz: the trace levelling off says the chains mixed."""

    Config = NoKeys

    @staticmethod
    def wanted(eval_cfg) -> bool:
        return eval_cfg.llc

    @staticmethod
    def check(cfg, task, family) -> None:
        e, batch = cfg.eval, cfg.eval.llc_batch_size or cfg.training.batch_size
        check(
            e.llc_beta > 0 or batch >= 2,
            f"eval.llc_beta=0 (n / log n) needs batches of 2 prompts or more: eval.llc_batch_size (or "
            f"training.batch_size) is {batch}",
        )
        check(
            e.llc_chains * batch <= EVAL_LIMIT,
            f"eval.llc_chains x eval.llc_batch_size (or training.batch_size) must be at most {EVAL_LIMIT:,} prompts "
            f"(every chain's SGLD step draws its own), got {e.llc_chains} x {batch}",
        )

    def __init__(self, setup, cfg, mesh):
        e, d, task, model = cfg.eval, cfg.data, setup.task, setup.model
        batch_size = e.llc_batch_size or cfg.training.batch_size
        self.nbeta, self.burn_in = e.llc_beta or default_nbeta(batch_size), e.llc_burn_in
        run_key, (key, noise_key) = run_keys(cfg.seed)[1], jax.random.split(set_key(e, LLC_STREAM))
        last_only = cfg.training.loss_points == "last"

        def estimate(params, step):
            def loss(w, c, t):
                batch_key, dropout_key = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, c), t))
                if d.train_size is None:  # fresh prompts, as training_batch draws them
                    batch = task.training_batch(run_key, batch_key, batch_size, step)
                else:  # the finite training set's prompts, at random
                    ids = jax.random.randint(batch_key, (batch_size,), 0, d.train_size)
                    batch = task.training_set_prompts(run_key, ids, step)
                return loss_fn(w, model, batch, dropout_key, last_only)

            noise = gaussian_noise(noise_key, params)
            knobs = dict(step_size=e.llc_step_size, localization=e.llc_localization, nbeta=self.nbeta)
            return sgld_llc(loss, noise, params, **knobs, chains=e.llc_chains, draws=e.llc_draws, burn_in=e.llc_burn_in)

        self.estimate = jax.jit(estimate)

    def __call__(self, params, held_out: EvalSet, step: int) -> Result:
        llc, losses = (np.asarray(a, np.float64) for a in self.estimate(params, jnp.int32(step)))
        scalars = {"llc/mean": float(llc.mean())}
        if len(llc) > 1:
            scalars["llc/std_err"] = float(llc.std(ddof=1) / math.sqrt(len(llc)))
        if not np.isfinite(llc).all():
            log.warning(
                "eval.llc at step %d: SGLD diverged (a loss not finite); try a smaller eval.llc_step_size", step
            )
        arrays = {"trace": losses[:, self.burn_in :], "init_loss": losses[:, 0], "llc": llc}
        return Result(scalars=scalars, arrays=arrays)
