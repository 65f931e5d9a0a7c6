"""A mixture of task classes, the `mixture` task (Bai et al. 2023, allenbai01/transformers-as-statisticians:
one model trained on several classes at once): each prompt's class uniform over data.task_mixture, its
function then from that class's prior. Its baselines are every class's, each class's Bayes as
`bayes_<class>` (Bayes that knew the class); where every class has an exact Bayes, the mixture's Bayes
(each class's Bayes weighed by the class's posterior from its evidence) is its reference, else least
squares. The evaluator adds one held-out set per class (`task_<class>`), scored by the same baselines.
"""

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from icl_lr.fields import check
from icl_lr.records.schema import BAYES
from icl_lr.task import baselines
from icl_lr.task.sampling import Prompts


@dataclass(frozen=True)
class TaskMixtureConfig:
    task_mixture: tuple[str, ...] | None = None

    def check(self) -> None:
        classes = list(self.task_mixture or ())
        check(
            len(classes) >= 2 and len(set(classes)) == len(classes) and "mixture" not in classes,
            f"data.task_mixture must list two or more distinct tasks other than mixture, got {self.task_mixture}",
        )
        prior = getattr(self, "w_prior", "gaussian")  # linear_regression's, where it is one of the classes
        check(
            prior == "gaussian", f"data.w_prior={prior} is a prior of linear_regression's w, not of data.task=mixture"
        )


@dataclass(frozen=True)
class TaskMixture(Prompts):
    Config = TaskMixtureConfig
    components: tuple = ()  # one task per name of data.task_mixture (registry.task_of builds them)

    @staticmethod
    def component_names(section: dict) -> tuple:
        """The classes whose keys join the mixture's section (data.task_mixture)."""
        return tuple(section.get("task_mixture") or ())

    @property
    def exact(self) -> bool:
        """Whether every class has an exact Bayes, and so the mixture."""
        return all(c.reference == BAYES for c in self.components)

    @property
    def reference(self) -> str:
        return BAYES if self.exact else "least_squares"

    def draw(self, key, batch_size: int) -> tuple:
        """(each prompt's class [B], every class's B functions): a prompt keeps its class's."""
        pick_key, key = jax.random.split(key)
        picked = jax.random.randint(pick_key, (batch_size,), 0, len(self.components))
        return picked, tuple(c.draw(jax.random.fold_in(key, i), batch_size) for i, c in enumerate(self.components))

    def label(self, functions, xs_BxNxD) -> jax.Array:
        picked_B, per_class = functions
        ys_CxBxN = jnp.stack([c.label(f, xs_BxNxD) for c, f in zip(self.components, per_class, strict=True)])
        return jnp.take_along_axis(ys_CxBxN, picked_B[None, :, None], axis=0)[0]

    def baselines(self, xs, ys, noise_stds: tuple, pool=None) -> dict:
        predictions = {}
        for name, component in zip(self.cfg.task_mixture, self.components, strict=True):
            theirs = component.baselines(xs, ys, noise_stds)
            if BAYES in theirs:
                theirs[f"{BAYES}_{name}"] = theirs.pop(BAYES)
            predictions |= theirs
        if self.exact:
            predictions[BAYES] = _mixture_bayes(self.components, xs, ys, noise_stds[0])
        return predictions


@partial(jax.jit, static_argnums=(0, 3))
def _mixture_bayes(components: tuple, xs, ys, noise_std: float):
    def one(xs_NxD, ys_N):
        per_class = [c.bayes_evidence(xs_NxD, ys_N, noise_std) for c in components]
        return baselines.posterior_mixture(*(jnp.stack(parts) for parts in zip(*per_class, strict=True)))[0]

    return jax.vmap(one)(xs, ys)
