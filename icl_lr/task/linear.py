"""In-context linear regression, the `linear_regression` task: y_i = w^T x_i + eps_i.

Each sequence has its own w ~ N(0, prior_scale^2 I_d) (data.w_prior=gaussian) or from Panwar et al.
2024's Gaussian mixture (gaussian_mixture: data.w_components components of covariance prior_scale^2 I
about means +-w_centre e_1, +-w_centre e_2, ...), or one of the run's finite pool; x's and noise as
every task's (icl_lr/task/sampling.py). Under Laplace or Student's t noise (data.noise_dist) Bayes has no
closed form: the reference of the excess is the posterior mean computed by importance sampling
(`posterior_mean_mc`, baselines.posterior_mean_mc), and beside it ridge at the noise's variance, no longer Bayes
but still the best linear predictor (the linear MMSE one, which needs only second moments), named LMMSE.
"""

import logging
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from icl_lr.fields import check
from icl_lr.records.schema import BAYES
from icl_lr.task import algorithms, baselines, ood
from icl_lr.task.base import Batch, pool_key
from icl_lr.task.sampling import Prompts, noise_log_density

log = logging.getLogger("icl_lr")
W_PRIORS = ("gaussian", "gaussian_mixture")
OUTLIER_KINDS = ("scaled", "flipped")  # an outlier label: y times data.outlier_scale, or -y
OUTLIER_STREAM = 2**31 - 4  # fold_in index of which labels are outliers: apart from the prompt's own keys
HUBER = "huber"  # the reference under outliers: Gaussian noise's Bayes is not Bayes there
LMMSE = "lmmse_ridge"  # ridge as the best linear predictor under non-Gaussian noise, not Bayes there
POSTERIOR_MEAN = "posterior_mean_mc"  # the reference under non-Gaussian noise: Bayes, by importance sampling
MC_PROMPTS_AT_ONCE = 16  # prompts whose importance samples are held at once (memory)
TUNING_SEED = 2**31 - 1  # the algorithms' tuning prompts: a key no run's data or eval set uses


def component_means(n_dims: int, n_components: int, centre: float) -> jax.Array:
    """The Gaussian mixture's means [C, D]: +-centre along e_1, then e_2, ... (component c: sign (-1)^c, axis
    (c // 2) mod d); two components are Panwar et al.'s +-e_1 pair."""
    c = jnp.arange(n_components)
    return centre * jnp.where(c % 2 == 0, 1.0, -1.0)[:, None] * jax.nn.one_hot((c // 2) % n_dims, n_dims)


def probe_targets(xs_PxNxD, ys_PxN, ws_PxD) -> dict:
    """{target: [P, N, M]}: what a model may hold while it predicts y_k (Akyurek et al. 2022's probes): the
    task's w, X^T y of the points before k, least squares' w on them, and two predictions of y_k, one GD
    step's from w = 0 (x_k^T X^T y: its rate only scales it) and least squares'."""
    xy_PxNxD = jnp.cumsum(ys_PxN[..., None] * xs_PxNxD, axis=1) - ys_PxN[..., None] * xs_PxNxD
    ls_w_PxNxD = jax.vmap(baselines.least_squares_weights)(xs_PxNxD, ys_PxN)
    along = lambda w_PxNxD: jnp.sum(xs_PxNxD * w_PxNxD, axis=-1, keepdims=True)
    return {
        "w": jnp.broadcast_to(ws_PxD[:, None], xs_PxNxD.shape),
        "xty": xy_PxNxD,
        "ls_w": ls_w_PxNxD,
        "gd_prediction": along(xy_PxNxD),
        "ls_prediction": along(ls_w_PxNxD),
    }


@dataclass(frozen=True)
class LinearRegressionConfig:
    """linear_regression's keys (configs/data/linear_regression.yaml documents them)."""

    w_prior: str = "gaussian"
    w_components: int = 2
    w_centre: float = 2.0
    outlier_fraction: float = 0.0
    outlier_kind: str = "scaled"
    outlier_scale: float = 10.0

    def check(self) -> None:
        check(self.w_prior in W_PRIORS, f"data.w_prior must be one of {W_PRIORS}, got {self.w_prior!r}")
        check(1 <= self.w_components <= 64, f"data.w_components must be in [1, 64], got {self.w_components}")
        check(self.w_centre >= 0, f"data.w_centre must be >= 0, got {self.w_centre}")
        check(
            0 <= self.outlier_fraction < 0.5, f"data.outlier_fraction must be in [0, 0.5), got {self.outlier_fraction}"
        )
        check(
            self.outlier_kind in OUTLIER_KINDS,
            f"data.outlier_kind must be one of {OUTLIER_KINDS}, got {self.outlier_kind!r}",
        )
        check(self.outlier_scale > 0, f"data.outlier_scale must be > 0, got {self.outlier_scale}")
        check(
            not self.outlier_fraction or (self.task == "linear_regression" and self.w_prior == "gaussian"),
            f"data.outlier_fraction is linear_regression's under w_prior=gaussian (its Huber baseline), not "
            f"data.task={self.task} with data.w_prior={self.w_prior}",
        )
        check(
            self.noise_dist == "gaussian" or self.w_prior == "gaussian",
            f"data.noise_dist={self.noise_dist} takes data.w_prior=gaussian (where ridge is the best linear "
            f"predictor, its reference), not {self.w_prior}",
        )


def check_gaussian_prior(section) -> None:
    """A task built on linear regression's prompts whose prior is its own: w_prior stays gaussian."""
    check(
        section.w_prior == "gaussian",
        f"data.w_prior={section.w_prior} is a prior of linear_regression's w, not of data.task={section.task}",
    )


@dataclass(frozen=True)
class LinearRegression(Prompts):
    """The task interface (icl_lr/task/base.py) of in-context linear regression."""

    Config = LinearRegressionConfig
    hierarchical_noise = True  # its baselines take data.noise_std_choices
    non_gaussian_noise = True  # its reference is named for data.noise_dist (the sampled posterior mean)

    def draw(self, key, batch_size: int) -> jax.Array:
        """w [B, D] from data.w_prior."""
        cfg = self.cfg
        if cfg.w_prior == "gaussian":
            return cfg.prior_scale * jax.random.normal(key, (batch_size, cfg.n_dims))
        pick_key, w_key = jax.random.split(key)
        means = component_means(cfg.n_dims, cfg.w_components, cfg.w_centre)
        picked = jax.random.randint(pick_key, (batch_size,), 0, cfg.w_components)
        return means[picked] + cfg.prior_scale * jax.random.normal(w_key, (batch_size, cfg.n_dims))

    @property
    def reference(self) -> str:
        if self.cfg.outlier_fraction:
            return HUBER
        return BAYES if self.cfg.gaussian_noise else POSTERIOR_MEAN

    @staticmethod
    def check_run(cfg) -> None:
        check(
            not cfg.data.outlier_fraction or cfg.data.encoding == "continuous",
            f"data.outlier_fraction scores the model against the clean labels: data.encoding=continuous, not "
            f"{cfg.data.encoding}",
        )

    def label(self, ws_BxD, xs_BxNxD) -> jax.Array:
        return jnp.einsum("bnd,bd->bn", xs_BxNxD, ws_BxD)

    def sample_prompts(self, key, batch_size: int, step=None, pool_key=None) -> tuple:
        """Prompts as every task's; with data.outlier_fraction, each label replaced by an outlier (scaled by
        data.outlier_scale, or flipped) with that probability, the clean labels kept as the batch's targets."""
        batch, ws = super().sample_prompts(key, batch_size, step, pool_key)
        cfg = self.cfg
        if not cfg.outlier_fraction:
            return batch, ws
        hit = jax.random.bernoulli(jax.random.fold_in(key, OUTLIER_STREAM), cfg.outlier_fraction, batch.ys.shape)
        outliers = -batch.ys if cfg.outlier_kind == "flipped" else cfg.outlier_scale * batch.ys
        return batch._replace(ys=jnp.where(hit, outliers, batch.ys), targets=batch.ys), ws

    def probe_set(self, key, n_prompts: int) -> tuple[Batch, dict]:
        batch, ws = self.sample_prompts(key, n_prompts)
        return batch, probe_targets(batch.xs, batch.ys, ws)

    def eval_pool(self, run_key):
        """The pool's tasks [M, D] for dMMSE, up to its memory bound (past it, none: a log line)."""
        size = self.cfg.task_pool_size
        if size and size > baselines.DMMSE_MAX_POOL:
            log.info("dMMSE left out: a pool of %d tasks is past its bound of %d", size, baselines.DMMSE_MAX_POOL)
        if not size or size > baselines.DMMSE_MAX_POOL:
            return None
        return self.pool_functions(pool_key(run_key), jnp.arange(size))

    def baselines(self, xs, ys, noise_stds: tuple, pool=None) -> dict:
        return _baselines(self.cfg, xs, ys, noise_stds, pool)

    def bayes_evidence(self, xs_NxD, ys_N, noise_std: float) -> tuple:
        """One prompt's Bayes prediction [N] and log evidence [N] by prefix, what a mixture of tasks weighs (a
        noiseless prompt at ridge_and_evidence's noise floor)."""
        cfg = self.cfg
        if cfg.w_prior == "gaussian_mixture":
            means = component_means(cfg.n_dims, cfg.w_components, cfg.w_centre)
            return baselines.mixture_bayes(xs_NxD, ys_N, means, cfg.prior_scale, noise_std)
        return baselines.ridge_and_evidence(xs_NxD, ys_N, cfg.prior_scale, noise_std)

    def algorithms(self, steps: tuple) -> tuple[dict, dict]:
        tuning = self.sample_batch(jax.random.PRNGKey(TUNING_SEED), algorithms.TUNING_PROMPTS)
        rates = algorithms.tuned_rates(steps, (tuning.xs, tuning.ys))
        return algorithms.predictors(steps, rates), rates

    def bayes_predictive(self, xs, ys, noise_var: float) -> tuple:
        return baselines.bayes_predictive(xs, ys, self.cfg.prior_scale, noise_var)

    def ood_conditions(self, key, n_prompts: int) -> dict:
        return ood.conditions(key, self, n_prompts)


def lmmse_ridge(xs_NxD, ys_N, noise_stds: tuple, weight_scale: float):
    """The best linear predictor under any noise law of the noise prior's mean variance E sigma^2: ridge with
    lambda = E sigma^2 / weight_scale^2 (w's coordinates of std weight_scale)."""
    return baselines.ridge(xs_NxD, ys_N, sum(s**2 for s in noise_stds) / len(noise_stds) / weight_scale**2)


@partial(jax.jit, static_argnums=(0, 3))
def _baselines(cfg, xs, ys, noise_stds: tuple, pool) -> dict:
    """all_predictions's baselines; under the Gaussian-mixture prior, Bayes is the mixture's posterior mean;
    under non-Gaussian noise, in place of Gaussian noise's Bayes, the posterior mean by importance sampling and
    LMMSE: ridge at the noise prior's mean variance E sigma^2 (y's second moments given X are those of Gaussian
    noise of that variance)."""
    predictions = baselines.all_predictions(xs, ys, cfg.prior_scale, noise_stds, pool)
    if cfg.outlier_fraction:  # Gaussian noise's posterior mean is ridge here, not Bayes; Huber beside it
        predictions["gaussian_ridge"] = predictions.pop(BAYES)
        sigma = max(max(noise_stds), baselines.HUBER_MIN_STD * cfg.prior_scale)
        huber = lambda x, y: baselines.huber(x, y, baselines.HUBER_DELTA * sigma, (sigma / cfg.prior_scale) ** 2)
        predictions[HUBER] = jax.vmap(huber)(xs, ys)
    elif not cfg.gaussian_noise:
        del predictions[BAYES]
        predictions[LMMSE] = jax.vmap(lambda x, y: lmmse_ridge(x, y, noise_stds, cfg.prior_scale))(xs, ys)
        log_noise = lambda r, sigma: noise_log_density(cfg, r, sigma)
        mean = lambda xy: baselines.posterior_mean_mc(*xy, log_noise, noise_stds, cfg.prior_scale)
        predictions[POSTERIOR_MEAN] = jax.lax.map(mean, (xs, ys), batch_size=MC_PROMPTS_AT_ONCE)
    if cfg.w_prior == "gaussian_mixture":
        means = component_means(cfg.n_dims, cfg.w_components, cfg.w_centre)
        bayes = lambda x, y: baselines.mixture_bayes(x, y, means, cfg.prior_scale, noise_stds[0])[0]
        predictions[BAYES] = jax.vmap(bayes)(xs, ys)
    return predictions
