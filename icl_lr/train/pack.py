"""Packed runs: K runs of one shape trained as one jitted program, vmapped over a leading run axis.

The runs of a pack differ only in numbers their step computes with (the learning rate, the noise std,
the prior's scale, ...): the step rebuilds each run's components from the pack's first config with
those keys set to traced values, so one program serves all K. Keys each run uses outside the step
(its seed, eval and W&B sections) may differ freely; the loop's cadence is one for the pack.
"""

import contextlib
import contextvars
import json
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from icl_lr.fields import ConfigError, is_number, replace_keys
from icl_lr.records.run_dir import config_record
from icl_lr.train import parallel
from icl_lr.train.config import RunConfig
from icl_lr.train.optimizer import make_optimizer
from icl_lr.train.setup import build
from icl_lr.train.step import init_state, make_step
from icl_lr.train.step import make_dispatch as make_dispatch_one

# The loop's cadence and where it runs: one for the whole pack
LOOP_KEYS = ("training.steps", "training.num_epochs", "training.steps_per_dispatch", "training.log_every",
             "training.eval_every", "training.checkpoint_every", "training.max_to_keep", "training.trajectory",
             "training.distributed", "training.cpu_devices", "training.compile_cache",
             "training.decay_steps")  # fmt: skip
OWN_SECTIONS = ("seed", "init_from", "eval.", "wandb.")  # read by each run outside the step: free to differ

MEMBER = contextvars.ContextVar("pack_member", default=None)  # the run of the pack a log line is about


@contextlib.contextmanager
def as_member(index: int | None):
    """Log lines inside are about run `index` of the pack (icl_lr/cli/pack.py routes them to its train.log)."""
    token = MEMBER.set(index)
    try:
        yield
    finally:
        MEMBER.reset(token)


def differing(cfgs: list) -> list:
    """The keys in which the runs' configs differ."""
    records = [config_record(cfg) for cfg in cfgs]
    keys = sorted({k for r in records for k in r})
    return [k for k in keys if len({json.dumps(r.get(k)) for r in records}) > 1]


def traced_keys(cfgs: list) -> tuple:
    """The keys in which the pack's runs differ and that its step takes as inputs. Refuses (ConfigError, one
    line naming them) keys of the loop's cadence and keys that are not numbers in every run."""
    records, differ = [config_record(cfg) for cfg in cfgs], differing(cfgs)
    loop = [k for k in differ if k in LOOP_KEYS]
    if loop:
        raise ConfigError(f"training.pack: the runs differ in {', '.join(loop)}, the loop's cadence, which a pack's "
                          "runs share; pack runs that agree on it")  # fmt: skip
    traced = [k for k in differ if not k.startswith(OWN_SECTIONS)]
    fixed = [k for k in traced if not all(is_number(r.get(k)) for r in records)]
    if fixed:
        raise ConfigError(
            f"training.pack: the runs differ in {', '.join(fixed)}, which choose the program (not numbers in every "
            "run); a pack's runs may differ only in numbers the step computes with (seed, learning rate, noise, ...)"
        )
    return tuple(traced)


def values_of(cfgs: list, keys: tuple) -> dict:
    """{key: [K] array} of each run's value of the traced keys (integers as int32, others float32)."""
    records = [config_record(cfg) for cfg in cfgs]
    dtype = lambda k: jnp.int32 if all(isinstance(r[k], int) for r in records) else jnp.float32
    return {k: jnp.asarray([r[k] for r in records], dtype(k)) for k in keys}


def member_step(cfg: RunConfig, mesh: Mesh):
    """(state, values) -> (state, metrics): one run's step, its components built from `cfg` with the
    traced keys set to `values`."""

    def step(state, values):
        run_cfg = replace_keys(cfg, values)
        return make_step(build(run_cfg), make_optimizer(run_cfg.training), run_cfg, mesh)(state, None)

    return step


def make_dispatch(cfgs: list, keys: tuple, mesh: Mesh):
    """jitted (state [K, ...], n_steps) -> (state, metrics [n_steps, K]): the pack's n_steps steps in one
    lax.scan, each step vmapped over its runs (`check` has refused keys the step cannot take as inputs)."""
    values, step = values_of(cfgs, keys), member_step(cfgs[0], mesh)
    packed_step = lambda state, _: jax.vmap(step)(state, values)

    @partial(jax.jit, static_argnums=1, donate_argnums=0, out_shardings=parallel.replicated(mesh))
    def dispatch(state, n_steps: int):
        return jax.lax.scan(packed_step, state, length=n_steps)

    return dispatch


def check(cfgs: list, mesh: Mesh) -> tuple:
    """The traced keys of a pack of runs of `cfgs`. Refuses (ConfigError, one line naming the keys) runs that
    cannot share one program: those that differ in the loop's cadence, in what is not a number, or in a number
    that sets a shape (of the state or inside the step) or a branch. Abstract: nothing is computed."""
    keys, records = traced_keys(cfgs), [config_record(cfg) for cfg in cfgs]
    if not keys:
        return keys
    state_of = lambda cfg: jax.eval_shape(lambda: init_state(build(cfg), make_optimizer(cfg.training), cfg.seed))
    state = state_of(cfgs[0])
    packed = jax.eval_shape(stack, [state] * len(cfgs))
    refused = []
    for key in keys:
        try:
            if any(state_of(replace_keys(cfgs[0], {key: r[key]})) != state for r in records[1:]):
                raise ValueError("a shape of the state")
            jax.eval_shape(jax.vmap(member_step(cfgs[0], mesh)), packed, values_of(cfgs, (key,)))
        except (jax.errors.JAXTypeError, TypeError, ValueError):
            refused.append(key)
    if refused:
        raise ConfigError(f"training.pack: the runs differ in {', '.join(refused)}, which set a shape or a branch of "
                          f"the program; pack runs that agree on {'it' if len(refused) == 1 else 'them'}")  # fmt: skip
    return keys


class Runs:
    """The runs of one program: one run, or K >= 2 stacked on a leading run axis (a pack). The loop is written
    once over them: their states stacked and unstacked, each one's metrics, its log lines' run index, and the
    program that trains them. One run is the program a run alone compiles (a vmap over one run would move its
    numbers in their last digits); what a run whose loss is no longer finite does is the loop's, for any K."""

    def __init__(self, cfgs: list, mesh: Mesh, keys: tuple | None = None):
        """`keys`: the traced keys where the runs were checked before (`check`, once: it is the costly part);
        then only what a start can still change (a resumed run's horizon) is checked against them."""
        self.cfgs, self.k, self.mesh = list(cfgs), len(cfgs), mesh
        if self.k == 1:
            self.keys = ()
        elif keys is None:
            self.keys = check(self.cfgs, mesh)
        else:
            unchecked = sorted(set(traced_keys(self.cfgs)) - set(keys))
            if unchecked:
                raise ConfigError(f"training.pack: the runs differ in {', '.join(unchecked)} since the pack was "
                                  "checked (a resumed run's record); resume them alone")  # fmt: skip
            self.keys = tuple(keys)

    def stack(self, states: list):
        return states[0] if self.k == 1 else stack(states)

    def unstack(self, state) -> list:
        return [state] if self.k == 1 else unstack(state, self.k)

    def metrics_of(self, metrics: dict, i: int) -> dict:
        """Run i's metrics [n_steps] of a dispatch's."""
        return metrics if self.k == 1 else {key: value[:, i] for key, value in metrics.items()}

    def dispatch(self, setup, tx):
        """jitted (state, n_steps) -> (state, metrics) of the runs' n_steps steps."""
        if self.k == 1:
            return make_dispatch_one(setup, tx, self.cfgs[0], self.mesh)
        return make_dispatch(self.cfgs, self.keys, self.mesh)

    def describe(self) -> str:
        return f"{self.k} runs in one program, differing in {', '.join(differing(self.cfgs)) or 'nothing'}"


def log_names(k: int) -> list:
    """Each of k runs' index for its log lines (`as_member`): None for a run alone, whose lines carry no name."""
    return list(range(k)) if k > 1 else [None]


def stack(trees: list):
    """One pytree of K runs' trees, stacked along a new leading axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree, k: int) -> list:
    """The K runs' trees of a stacked pytree."""
    return [jax.tree.map(lambda leaf, i=i: leaf[i], tree) for i in range(k)]


def groups(cfgs: list, size: int, mesh: Mesh) -> list:
    """(indices of `cfgs`, their traced keys) of packs of up to `size` runs that can each share one program: a run
    joins the first pack whose first run differs from it only in numbers the step computes with (`check`); a
    pack's keys are those its runs differ in from its first, each so checked."""
    packs = []
    for i, cfg in enumerate(cfgs):
        for members, keys in packs:
            if len(members) < size:
                try:
                    keys |= set(check([cfgs[members[0]], cfg], mesh))
                except ConfigError:
                    continue
                members.append(i)
                break
        else:
            packs.append(([i], set()))
    return [(members, tuple(sorted(keys))) for members, keys in packs]
