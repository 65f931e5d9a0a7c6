"""The run's typed config: one dataclass per YAML section, each field documented once, in configs/.

`from_dictconfig` turns Hydra's config into a `RunConfig` and refuses a bad value before anything
compiles, with a one-line ConfigError naming the key. Every other module imports its section from
here, so no module imports another only for its config.

Why not Hydra structured configs (ConfigStore dataclasses)? They check types while Hydra composes,
before `main` runs, so a bad value ends in Hydra's multi-line error report rather than one line
naming the key; and they cannot check what spans keys (n_embd divisible by n_head, sequence length
within n_positions). The checks below read the same dataclasses' type hints instead.
"""

import dataclasses
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("icl_lr")

SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("fp32", "bf16")
BIN_SCHEMES = ("uniform", "gaussian_quantiles")
WANDB_MODES = ("auto", "online", "offline", "disabled")
SEED_LIMIT = 2**32  # PRNGKey keeps a seed's low 32 bits: larger seeds repeat smaller ones


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


@dataclass(frozen=True)
class CurriculumConfig:
    enabled: bool = False
    dims_start: int = 5
    dims_increment: int = 1
    points_start: int = 11
    points_increment: int = 2
    interval: int = 2000


@dataclass(frozen=True)
class DataConfig:
    n_dims: int = 5
    n_points: int = 11
    prior_scale: float = 1.0
    noise_std: float = 0.0
    noise_std_choices: tuple[float, ...] | None = None
    task_pool_size: int | None = None
    train_size: int | None = None
    encoding: str = "continuous"
    vocab_size: int = 64
    bin_scheme: str = "uniform"
    bin_range: float = 3.0
    ce_weight: float = 1.0
    mean_loss_weight: float = 0.0
    token_slot_embedding: bool = False
    token_value_embedding: bool = False
    token_point_embedding: bool = False
    token_short_conv: bool = False
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)

    @property
    def noise_stds(self) -> tuple:
        """The support of the noise prior: one value, or the hierarchical prior's list."""
        return tuple(self.noise_std_choices) if self.noise_std_choices else (self.noise_std,)

    @property
    def y_scale(self) -> float:
        """Marginal std of y (largest noise), used to standardise y before binning into tokens."""
        return float((self.prior_scale**2 * self.n_dims + max(self.noise_stds) ** 2) ** 0.5)


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 6
    n_embd: int = 64
    n_head: int = 2
    n_positions: int = 256
    dropout: float = 0.0
    embedding_std: float = 0.2


@dataclass(frozen=True)
class TrainingConfig:
    steps: int = 12000
    num_epochs: int | None = None
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 2000
    schedule: str = "cosine"
    decay_steps: int | None = None
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    precision: str = "fp32"
    distributed: bool = False
    cpu_devices: str = "auto"
    steps_per_dispatch: int = 50
    log_every: int = 500
    eval_every: int = 2000
    checkpoint_every: int = 2000
    max_to_keep: int = 3

    @property
    def horizon(self) -> int:
        """The step at which the decay reaches its floor: decay_steps, or the run's length when unset."""
        return self.steps if self.decay_steps is None else self.decay_steps


@dataclass(frozen=True)
class EvalConfig:
    n_prompts: int = 1280
    batch_size: int = 256
    seed: int = 12345
    ood: bool = True
    ood_every_eval: bool = False


@dataclass(frozen=True)
class WandbConfig:
    mode: str = "auto"
    project: str = "icl-lr"
    entity: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    job_type: str = "train"
    name: str | None = None
    log_checkpoints: bool = True
    init_timeout: float = 30.0


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    seed: int = 0
    init_from: str | None = None


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _coerce(hint, value, key: str):
    """`value` as the type hint `hint` says, or a ConfigError naming `key`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[X]
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return None if value is None else _coerce(inner, value, key)
    if dataclasses.is_dataclass(hint):
        _check(value is None or isinstance(value, dict), f"{key} must be a mapping of keys, got {value!r}")
        return _build(hint, value, key)
    if typing.get_origin(hint) is tuple:  # tuple[X, ...]
        _check(isinstance(value, (list, tuple)), f"{key} must be a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float:
        _check(_is_number(value), f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is int:
        _check(isinstance(value, int) and not isinstance(value, bool), f"{key} must be an integer, got {value!r}")
        return value
    if hint is bool:
        _check(isinstance(value, bool), f"{key} must be true or false, got {value!r}")
        return value
    if hint is str:  # Hydra reads an all-digit group or name as a number: keep its text
        _check(isinstance(value, str) or _is_number(value), f"{key} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"no coercion for {hint} ({key})")


def _build(cls, values: Any, prefix: str):
    """cls(**values) with every value coerced to its field's type; unknown keys refused."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    full_key = lambda name: f"{prefix}.{name}" if prefix else name
    for name in values:
        _check(name in hints, f"unknown key {full_key(name)}")
    return cls(**{name: _coerce(hints[name], value, full_key(name)) for name, value in values.items()})


def _validate(cfg: RunConfig) -> None:
    from icl_lr.encoding import ENCODINGS, encoding_of  # the encodings import this module (their DataConfig)

    d, m, t, e, w = cfg.data, cfg.model, cfg.training, cfg.eval, cfg.wandb
    _check(d.encoding in ENCODINGS, f"data.encoding must be one of {tuple(ENCODINGS)}, got {d.encoding!r}")
    _check(d.n_dims >= 1, f"data.n_dims must be >= 1, got {d.n_dims}")
    _check(d.n_points >= 1, f"data.n_points must be >= 1, got {d.n_points}")
    _check(d.prior_scale > 0, f"data.prior_scale must be > 0, got {d.prior_scale}")
    _check(d.noise_std >= 0, f"data.noise_std must be >= 0, got {d.noise_std}")
    if d.noise_std_choices is not None:
        choices = list(d.noise_std_choices)
        _check(len(choices) >= 1, "data.noise_std_choices must be null or a non-empty list")
        floor_ok = all(s > 0 for s in choices) if len(choices) > 1 else choices[0] >= 0
        _check(floor_ok, f"data.noise_std_choices must be > 0 when several are given, got {choices}")
    for key in ("task_pool_size", "train_size"):  # drawn by index as int32
        value = getattr(d, key)
        _check(value is None or 1 <= value < 2**31, f"data.{key} must be null or in [1, 2**31), got {value}")
    _check(d.vocab_size >= 2, f"data.vocab_size must be >= 2, got {d.vocab_size}")
    _check(d.bin_range > 0, f"data.bin_range must be > 0, got {d.bin_range}")
    _check(d.bin_scheme in BIN_SCHEMES, f"data.bin_scheme must be one of {BIN_SCHEMES}, got {d.bin_scheme!r}")
    for key in ("ce_weight", "mean_loss_weight"):
        _check(getattr(d, key) >= 0, f"data.{key} must be >= 0, got {getattr(d, key)}")
    _check(d.ce_weight + d.mean_loss_weight > 0, "data.ce_weight and data.mean_loss_weight cannot both be 0")
    for key in ("token_slot_embedding", "token_point_embedding", "token_value_embedding", "token_short_conv"):
        _check(
            not getattr(d, key) or d.encoding == "tokens",
            f"data.{key} applies to the tokens encoding only (data.encoding={d.encoding})",
        )
    c = d.curriculum
    if c.enabled:
        _check(
            1 <= c.dims_start <= d.n_dims, f"data.curriculum.dims_start must be in [1, {d.n_dims}], got {c.dims_start}"
        )
        _check(
            1 <= c.points_start <= d.n_points,
            f"data.curriculum.points_start must be in [1, {d.n_points}], got {c.points_start}",
        )
    for key in ("dims_increment", "points_increment"):  # checked even while the curriculum is off
        _check(getattr(c, key) >= 0, f"data.curriculum.{key} must be >= 0, got {getattr(c, key)}")
    _check(c.interval >= 1, f"data.curriculum.interval must be >= 1, got {c.interval}")
    for key in ("n_layer", "n_embd", "n_head", "n_positions"):
        _check(getattr(m, key) >= 1, f"model.{key} must be >= 1, got {getattr(m, key)}")
    _check(m.n_embd % m.n_head == 0, f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})")
    _check(0 <= m.dropout < 1, f"model.dropout must be in [0, 1), got {m.dropout}")
    _check(m.embedding_std > 0, f"model.embedding_std must be > 0, got {m.embedding_std}")
    sequence_length = encoding_of(d).sequence_length
    _check(
        sequence_length <= m.n_positions,
        f"model.n_positions ({m.n_positions}) is too small: data.n_dims={d.n_dims} and data.n_points={d.n_points} "
        f"with the {d.encoding} encoding need {sequence_length} positions",
    )
    _check(t.schedule in SCHEDULES, f"training.schedule must be one of {SCHEDULES}, got {t.schedule!r}")
    _check(t.precision in PRECISIONS, f"training.precision must be one of {PRECISIONS}, got {t.precision!r}")
    _check(
        t.cpu_devices == "auto" or (t.cpu_devices.isdigit() and int(t.cpu_devices) >= 1),
        f"training.cpu_devices must be auto or an integer >= 1, got {t.cpu_devices!r}",
    )
    for key in ("steps", "batch_size", "steps_per_dispatch", "max_to_keep"):
        _check(getattr(t, key) >= 1, f"training.{key} must be >= 1, got {getattr(t, key)}")
    if t.num_epochs is not None:
        _check(t.num_epochs >= 1, f"training.num_epochs must be null or >= 1, got {t.num_epochs}")
        _check(
            d.train_size is not None or t.num_epochs <= t.steps,
            f"training.num_epochs ({t.num_epochs}) without data.train_size splits training.steps ({t.steps}) "
            "into epochs: it must not exceed it",
        )
    _check(t.learning_rate > 0, f"training.learning_rate must be > 0, got {t.learning_rate}")
    _check(t.warmup_steps >= 0, f"training.warmup_steps must be >= 0, got {t.warmup_steps}")
    _check(
        t.decay_steps is None or t.decay_steps >= 1, f"training.decay_steps must be null or >= 1, got {t.decay_steps}"
    )
    _check(0 <= t.min_lr_ratio <= 1, f"training.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}")
    _check(t.grad_clip > 0, f"training.grad_clip must be > 0, got {t.grad_clip}")
    _check(t.weight_decay >= 0, f"training.weight_decay must be >= 0, got {t.weight_decay}")
    for key in ("log_every", "eval_every", "checkpoint_every"):
        value = getattr(t, key)
        _check(
            value >= 1 and value % t.steps_per_dispatch == 0,
            f"training.{key} ({value}) must be a positive multiple of "
            f"training.steps_per_dispatch ({t.steps_per_dispatch})",
        )
    for key, value in (("seed", cfg.seed), ("eval.seed", e.seed)):  # jax.random.PRNGKey(2**32) == PRNGKey(0)
        _check(0 <= value < SEED_LIMIT, f"{key} must be in [0, 2**32), got {value}")
    _check(e.n_prompts >= 1, f"eval.n_prompts must be >= 1, got {e.n_prompts}")
    _check(e.batch_size >= 1, f"eval.batch_size must be >= 1, got {e.batch_size}")
    _check(w.mode in WANDB_MODES, f"wandb.mode must be one of {WANDB_MODES}, got {w.mode!r}")
    _check(
        0 < w.init_timeout < math.inf,
        f"wandb.init_timeout must be a finite number of seconds > 0, got {w.init_timeout}",
    )


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested config as dotted keys ({'model': {'n_layer': 3}} -> {'model.n_layer': 3}), as Hydra
    overrides, sweeps and W&B's run table name its values."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def steps_per_epoch(cfg: RunConfig) -> int:
    """Steps of one pass over the finite training set: the last batch of an epoch may be partial."""
    return math.ceil(cfg.data.train_size / cfg.training.batch_size)


def _resolve_epochs(cfg: RunConfig) -> RunConfig:
    """With `training.num_epochs`, the run's length in steps and its finite training set.

    With data.train_size: num_epochs x ceil(train_size / batch_size) steps (training.steps ignored).
    Without it (the seed's `python train.py training.num_epochs=20`): the step budget is kept and
    split into the epochs, over a set of (training.steps // num_epochs) x batch_size prompts.
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
    run_cfg = _build(RunConfig, OmegaConf.to_container(cfg, resolve=True), "")
    _validate(run_cfg)
    run_cfg = _resolve_epochs(run_cfg)
    if run_cfg.training.warmup_steps > run_cfg.training.steps:
        log.warning(
            "training.warmup_steps (%d) is longer than the run (%d steps): the learning rate never reaches its peak",
            run_cfg.training.warmup_steps,
            run_cfg.training.steps,
        )
    return run_cfg
