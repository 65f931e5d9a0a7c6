"""The run's config, composed: Hydra's config -> a validated RunConfig (icl_lr/train/config.py), refused
before anything compiles with a one-line ConfigError naming the key.

The `data:` section is the keys every task shares and those its task and encoding own (each one's
`Config`); `model:` those every family shares and its family's. A key another component owns is dropped
where a YAML listed it for that component, refused (naming its owner) where the command line set it.
Each section checks its own keys (its `check`, beside its fields); what spans sections is checked here
through the components' own `check_run`, `encodings`/`families` and `length_key`.

Why not Hydra structured configs (ConfigStore dataclasses)? They check types while Hydra composes, before
`main` runs, so a bad value ends in Hydra's multi-line error report rather than one line naming the key;
and they cannot check what spans keys.
"""

import dataclasses
import logging
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from icl_lr.fields import ConfigError, build, check, check_sections, one_line, section_class
from icl_lr.model.config import ModelConfig
from icl_lr.task.config import DataConfig
from icl_lr.train.config import RunConfig, steps_per_epoch

log = logging.getLogger("icl_lr")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # icl_lr/configs: the repo's configs/


def section_overrides(overrides) -> list:
    """The command line's `data.<key>=...` and `model.<key>=...` as Hydra's add-or-set (`++`): which keys a
    section has depends on its components, so a key is refused here (one line naming the component that
    owns it, or an unknown key), not by Hydra's composition."""
    return [f"++{o}" if re.match(r"(data|model)\.[\w.]+=", o) else o for o in overrides]


def typed_keys(overrides) -> frozenset:
    """The dotted keys a command line sets (Hydra's overrides: key=value, +key=..., ++key=...)."""
    return frozenset(o.lstrip("+~").split("=", 1)[0] for o in overrides if "=" in o)


def components(values: dict) -> dict:
    """{section: (its shared base, {key: (registry, name)} of the components chosen)} of a run's values; a
    mixture's classes under data.task_mixture[i]."""
    from icl_lr.model.encoding import ENCODINGS
    from icl_lr.model.icl_model import FAMILIES
    from icl_lr.task.registry import TASKS

    data, model = values.get("data") or {}, values.get("model") or {}
    task_name = str(data.get("task", DataConfig.task))
    task = TASKS.resolve(task_name)
    classes = task.component_names(data) if hasattr(task, "component_names") else ()
    for name in classes:
        TASKS.resolve(str(name), "data.task_mixture")
    chosen_data = {"data.task": (TASKS, task_name)}
    chosen_data |= {f"data.task_mixture[{i}]": (TASKS, str(name)) for i, name in enumerate(classes)}
    chosen_data["data.encoding"] = (ENCODINGS, str(data.get("encoding", DataConfig.encoding)))
    return {
        "data": (DataConfig, chosen_data),
        "model": (ModelConfig, {"model.family": (FAMILIES, str(model.get("family", ModelConfig.family)))}),
    }


def origins(cfg: RunConfig) -> dict:
    """{key: {"name", and its origin (icl_lr/components.py)}} of every component `cfg` runs."""
    chosen = [component for _, keyed in components(dataclasses.asdict(cfg)).values() for component in keyed.items()]
    return {key: {"name": name, **registry.origin(name)} for key, (registry, name) in chosen}


def sections(values: dict, typed: frozenset = frozenset()) -> dict:
    """{section: its class for the components `values` names}; drops from `values` (in place) the keys of
    components not chosen, or refuses one the command line set, naming the component that owns it."""
    classes = {}
    for section, (base, keyed) in components(values).items():
        chosen = list(keyed.values())
        cls = classes[section] = section_class(base, tuple(registry.resolve(name).Config for registry, name in chosen))
        own = {f.name for f in dataclasses.fields(cls)}
        section_values = values.get(section) or {}
        for key in [k for k in section_values if k not in own]:
            owners = [(r.key, r.owners_of(key)) for r in dict.fromkeys(r for r, _ in chosen)]
            owners = [f"{name}={'|'.join(names)}" for name, names in owners if names]
            if not owners:
                continue  # no component's: refused as an unknown key
            these = " and ".join(f"{registry.key}={name}" for registry, name in chosen)
            check(f"{section}.{key}" not in typed, f"{section}.{key} is a key of {owners[0]}, not of {these}")
            del section_values[key]
    return classes


def check_across(cfg: RunConfig) -> None:
    """The checks that span sections: each component's own (`check_run`), which encodings a family takes
    and the sequence it can hold, what the analyses of the held-out prompts need, epochs against the finite set."""
    from icl_lr.model.encoding import ENCODINGS
    from icl_lr.model.icl_model import FAMILIES
    from icl_lr.task.registry import TASKS
    from icl_lr.train import analyses

    d, m, t = cfg.data, cfg.model, cfg.training
    task, encoding, family = TASKS.resolve(d.task), ENCODINGS.resolve(d.encoding), FAMILIES.resolve(m.family)
    for component in (task, encoding, family):
        if hasattr(component, "check_run"):
            component.check_run(cfg)
    takes = getattr(family, "encodings", None)
    check(
        (takes is None or d.encoding in takes) and (encoding.families is None or m.family in encoding.families),
        f"model.family={m.family} and data.encoding={d.encoding} do not go together: the family takes "
        f"{takes or 'any'}, the encoding is for {encoding.families or 'any family'}",
    )
    check(
        d.noise_std_choices is None or getattr(task, "hierarchical_noise", False),
        f"data.noise_std_choices (a hierarchical noise prior) is for a task whose baselines take one "
        f"(hierarchical_noise), not data.task={d.task}",
    )
    check(
        d.noise_dist == "gaussian" or getattr(task, "non_gaussian_noise", False),
        f"data.noise_dist={d.noise_dist} is for a task whose reference is named for it (non_gaussian_noise), not "
        f"data.task={d.task}",
    )
    analyses.check_run(cfg, task, family)
    length_key = getattr(family, "length_key", None)
    length_key = length_key(m) if callable(length_key) else length_key
    if length_key:
        length, limit = encoding.sequence_length_of(d), getattr(m, length_key)
        check(
            length <= limit,
            f"model.{length_key} ({limit}) is too small: data.n_dims={d.n_dims} and data.n_points={d.n_points} "
            f"with the {d.encoding} encoding need {length} positions",
        )
    if cfg.eval.prompts:
        check_prompts_file(cfg)
    check(
        t.num_epochs is None or d.train_size is not None or t.num_epochs <= t.steps,
        f"training.num_epochs ({t.num_epochs}) without data.train_size splits training.steps ({t.steps}) "
        "into epochs: it must not exceed it",
    )


def check_prompts_file(cfg: RunConfig) -> None:
    """eval.prompts holds xs [B, N, D] and ys [B, N] of the run's D = data.n_dims and N = data.n_points."""
    import numpy as np

    d = cfg.data
    try:
        with np.load(cfg.eval.prompts) as prompts:
            shapes = {name: prompts[name].shape for name in ("xs", "ys")}
    except Exception as error:
        reason = f"{type(error).__name__}: {one_line(error)}"
        raise ConfigError(f"eval.prompts={cfg.eval.prompts}: cannot read xs and ys ({reason})") from None
    (b, n, dims), ys = shapes["xs"] if len(shapes["xs"]) == 3 else (0, 0, 0), shapes["ys"]
    check(
        dims == d.n_dims and n == d.n_points and ys == (b, n) and b >= 1,
        f"eval.prompts={cfg.eval.prompts}: xs {shapes['xs']} and ys {ys} must be [B, N, D] and [B, N] with "
        f"D = data.n_dims ({d.n_dims}) and N = data.n_points ({d.n_points})",
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


def from_values(values: dict, typed: frozenset = frozenset()) -> RunConfig:
    """A RunConfig of nested values (its sections' classes chosen by the components they name), checked
    section by section; `typed`: the keys the command line set."""
    classes = sections(values, typed)
    values = {**{section: {} for section in classes}, **values}  # a section left out gets its defaults
    run_cfg = build(RunConfig, values, sections=classes)
    check_sections(run_cfg)
    return run_cfg


def from_dictconfig(cfg: DictConfig, overrides=()) -> RunConfig:
    """Validated dataclasses from a (Hydra) config and the command line's `overrides`; raises ConfigError
    naming the bad key."""
    run_cfg = from_values(OmegaConf.to_container(cfg, resolve=True), typed_keys(overrides))
    check_across(run_cfg)
    run_cfg = _resolve_epochs(run_cfg)
    if run_cfg.training.warmup_steps > run_cfg.training.steps:
        log.warning(
            "training.warmup_steps (%d) is longer than the run (%d steps): the learning rate never reaches its peak",
            run_cfg.training.warmup_steps,
            run_cfg.training.steps,
        )
    return run_cfg


HYDRA_FLAGS = ("--cfg", "--info", "--config", "--multirun", "--hydra-help", "--help", "--run", "--shell", "--package")
HYDRA_FLAGS += ("--resolve", "--experimental")


def overrides_from_agent(argv: list) -> list:
    """`wandb agent` resuming a preempted sweep run passes `--key=value` even where the sweep's command
    says ${args_no_hyphens} (wandb issue #9143); Hydra takes `key=value`. Hydra's own flags stay."""
    strip = lambda arg: arg[2:] if arg.startswith("--") and "=" in arg and not arg.startswith(HYDRA_FLAGS) else arg
    return [argv[0], *map(strip, argv[1:])]


def composed(overrides: list):
    """The config, Hydra's node included, that `python train.py <overrides>` composes."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=section_overrides(overrides), return_hydra_config=True)


def run_config_of(overrides: list):
    """The RunConfig of `python train.py <overrides>`."""
    full = composed(overrides)
    return from_dictconfig(OmegaConf.masked_copy(full, [k for k in full if k != "hydra"]), overrides)
