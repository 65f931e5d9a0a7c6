"""The task interface: what training, evaluation and the encodings ask of a task (a family of prompts
(x_i, y_i) with a prior over the function that labels them). Adding a task is one module with a class
that has these methods (icl_lr/task/sampling.py's Prompts gives the sampling ones from a prior and a
labelling function) and its `Config` (the keys it owns), its keys in the data YAML and one TASKS line
(icl_lr/task/registry.py), or an entry point of one's own package (docs/extending.md).
"""

from typing import NamedTuple, Protocol

import jax

# fold_in indices of the run key's fixed streams; step keys are fold_in(run key, step) and never reach them
POOL_STREAM = 2**31 - 1  # the finite task pool
TRAIN_SET_STREAM = 2**31 - 2  # the finite training set

PER_PROMPT = ("xs", "ys", "example_mask", "targets")  # the Batch fields with a prompt axis first (split across devices)


class Batch(NamedTuple):
    xs: jax.Array  # [B, N, D]
    ys: jax.Array  # [B, N], the labels the model sees
    point_mask: jax.Array  # [N] 1 for points inside the current curriculum length
    example_mask: jax.Array  # [B] 1 for prompts that count (0 pads the last, partial batch of an epoch)
    targets: jax.Array | None = None  # [B, N] what each y's prediction is scored against, where the model sees
    # other labels (data.outlier_fraction: the clean ones); None: ys

    @property
    def scored(self) -> jax.Array:
        """The labels predictions are scored against."""
        return self.ys if self.targets is None else self.targets


def pool_key(run_key) -> jax.Array:
    """The key of the run's task pool."""
    return jax.random.fold_in(run_key, POOL_STREAM)


class Task(Protocol):
    """Prompts as pure functions of PRNG keys (so the train step samples inside jit and a resumed run sees
    the data it would have seen), the task's baselines, and its out-of-distribution prompts."""

    reference: str  # the predictor the model's excess is measured against: schema.BAYES where it is exact

    def sample_xs(self, key, batch_size: int) -> jax.Array:
        """The inputs [B, N, D] of fresh prompts, from the task's input distribution (data.x_dist, data.x_ar,
        data.x_cov for Prompts'): the hook a plugin overrides for x's of its own."""

    def sample_noise(self, key, shape: tuple) -> jax.Array:
        """The labels' noise of mean 0 and variance 1 (data.noise_dist for Prompts'), before its std."""

    def sample_batch(self, key, batch_size: int, step=None, pool_key=None) -> Batch:
        """Fresh prompts; `step` selects the curriculum stage (None: the full task); `pool_key` draws the
        tasks from the run's finite pool (None: from the prior)."""

    def training_batch(self, run_key, step_key, batch_size: int, step, steps_per_epoch: int = 0) -> Batch:
        """The batch of `step`, a pure function of (run key, step)."""

    def training_set_prompts(self, run_key, ids, step=None) -> Batch:
        """Prompts `ids` of the run's finite training set."""

    def eval_pool(self, run_key):
        """The run's whole task pool, for the baselines that need it (dMMSE), or None."""

    def baselines(self, xs, ys, noise_stds: tuple, pool=None) -> dict:
        """{baseline name: predictions [B, N]} of each y_k from the points before it, the task's `reference`
        among them (schema.BAYES, the Bayes-optimal predictor under the training prior, where it is exact)."""

    def metrics(self, preds_BxN, ys_BxN) -> dict:
        """{metric: [B, N]} per point beside squared error / d (classification's accuracy), for the model
        and every baseline (curves `<metric>/<predictor>`)."""

    def ood_conditions(self, key, n_prompts: int) -> dict:
        """{condition: ([(xs, ys), ...], per_k)}: the task's out-of-distribution prompt sets."""


class LinearTask(Task, Protocol):
    """A task whose prompts each have one weight vector w (`is_linear`): what the
    iterative algorithms, the probes and the binned heads' Bayes predictive read."""

    def algorithms(self, steps: tuple) -> tuple[dict, dict]:
        """({algorithm name: predict(xs [N, D], ys [N]) -> [N]}, {name: learning rate}): iterative algorithms
        a model may run in context, at each number of `steps` where they iterate, their rates tuned on prompts
        of their own."""

    def bayes_predictive(self, xs, ys, noise_var: float) -> tuple:
        """Each y_k's posterior predictive (mean, variance) from the points before it, of one prompt, under
        Gaussian noise of variance `noise_var`."""

    def probe_set(self, key, n_prompts: int) -> tuple[Batch, dict]:
        """sample_batch(key, n_prompts)'s prompts and {target: [P, N, M]}: what a model may compute in context
        before it predicts each y_k, for the per-layer probes (icl_lr/train/analyses/probes.py)."""


LINEAR_INTERFACE = tuple(n for n in vars(LinearTask) if not n.startswith("_"))  # what probes and algorithms read


def is_linear(task) -> bool:
    """Whether a task (or its class) has one w per prompt: what probes and algorithms read."""
    return all(hasattr(task, name) for name in LINEAR_INTERFACE)
