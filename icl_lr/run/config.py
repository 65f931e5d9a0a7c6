"""The run's config, composed: Hydra's config -> a validated RunConfig (icl_lr/train/config.py), refused
before anything compiles with a one-line ConfigError naming the key.

Each section checks its own keys (its `check`, beside its fields); what spans sections is checked here,
where the run is composed: the model family's and the encoding's names, the sequence length the encoding
needs against the model's positions, the task's name, epochs against the finite training set.

Why not Hydra structured configs (ConfigStore dataclasses)? They check types while Hydra composes, before
`main` runs, so a bad value ends in Hydra's multi-line error report rather than one line naming the key;
and they cannot check what spans keys.
"""

import dataclasses
import importlib.util
import logging

from omegaconf import DictConfig, OmegaConf

from icl_lr.fields import build, check, check_sections
from icl_lr.train.config import RunConfig, steps_per_epoch

log = logging.getLogger("icl_lr")


def check_across(cfg: RunConfig) -> None:
    """The checks that span sections (the registries imported here: `--help` and `--cfg` need no JAX)."""
    from icl_lr.model.encoding import ENCODINGS, encoding_of
    from icl_lr.model.icl_model import FAMILIES
    from icl_lr.task.registry import LINEAR, TASKS

    d, m, t = cfg.data, cfg.model, cfg.training
    check(m.family in FAMILIES, f"model.family must be one of {tuple(FAMILIES)}, got {m.family!r}")
    check(d.task in TASKS, f"data.task must be one of {tuple(TASKS)}, got {d.task!r}")
    for name in d.task_mixture or ():
        check(name in TASKS, f"data.task_mixture's classes must be among {tuple(TASKS)}, got {name!r}")
    for key in ("probes", "algorithms"):
        check(
            not getattr(cfg.eval, key) or d.task in LINEAR,
            f"eval.{key} reads a task's one weight vector: data.task must be one of {LINEAR}, got {d.task}",
        )
        check(
            not getattr(cfg.eval, key) or d.n_points >= 2,
            f"eval.{key} scores predictions from a context: data.n_points must be >= 2, got {d.n_points}",
        )
    missing = [m for m in ("sklearn", "xgboost") if importlib.util.find_spec(m) is None]
    check(
        "decision_tree" not in (d.task, *(d.task_mixture or ())) or not missing,
        f"data.task=decision_tree's baselines need {' and '.join(missing)}: pip install 'icl-lr[trees]'",
    )
    check(d.encoding in ENCODINGS, f"data.encoding must be one of {tuple(ENCODINGS)}, got {d.encoding!r}")
    check(
        (m.family == "lsa") == (d.encoding == "paired"),
        f"model.family=lsa and data.encoding=paired go together (one token per point), got model.family={m.family} "
        f"and data.encoding={d.encoding}: use experiment=lsa",
    )
    check(
        m.init != "gd" or m.n_embd >= d.n_dims + 1,
        f"model.init=gd needs model.n_embd >= data.n_dims + 1 ({d.n_dims + 1}) for its identity read-in: {m.n_embd}",
    )
    sequence_length = encoding_of(d).sequence_length
    check(
        sequence_length <= m.n_positions,
        f"model.n_positions ({m.n_positions}) is too small: data.n_dims={d.n_dims} and data.n_points={d.n_points} "
        f"with the {d.encoding} encoding need {sequence_length} positions",
    )
    check(
        t.num_epochs is None or d.train_size is not None or t.num_epochs <= t.steps,
        f"training.num_epochs ({t.num_epochs}) without data.train_size splits training.steps ({t.steps}) "
        "into epochs: it must not exceed it",
    )


def _resolve_epochs(cfg: RunConfig) -> RunConfig:
    """With `training.num_epochs`, the run's length in steps and its finite training set.

    With data.train_size: num_epochs x ceil(train_size / batch_size) steps (training.steps ignored).
    Without it (`python train.py training.num_epochs=20`): the step budget is kept and split into the
    epochs, over a set of (training.steps // num_epochs) x batch_size prompts.
    """
    d, t = cfg.data, cfg.training
    if t.num_epochs is None:
        return cfg
    if d.train_size is None:
        d = dataclasses.replace(d, train_size=t.steps // t.num_epochs * t.batch_size)
        cfg = dataclasses.replace(cfg, data=d)
    steps = t.num_epochs * steps_per_epoch(cfg)
    return dataclasses.replace(cfg, training=dataclasses.replace(t, steps=steps))


def from_dictconfig(cfg: DictConfig) -> RunConfig:
    """Validated dataclasses from a (Hydra) config; raises ConfigError naming the bad key."""
    run_cfg = build(RunConfig, OmegaConf.to_container(cfg, resolve=True))
    check_sections(run_cfg)
    check_across(run_cfg)
    run_cfg = _resolve_epochs(run_cfg)
    if run_cfg.training.warmup_steps > run_cfg.training.steps:
        log.warning(
            "training.warmup_steps (%d) is longer than the run (%d steps): the learning rate never reaches its peak",
            run_cfg.training.warmup_steps,
            run_cfg.training.steps,
        )
    return run_cfg
