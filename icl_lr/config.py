"""Typed, validated view of the Hydra config. The YAML under configs/ documents every knob.

A bad value fails here, before anything compiles, with a one-line ConfigError naming the key.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from icl_lr.data import CurriculumConfig, DataConfig
from icl_lr.evaluate import EvalConfig
from icl_lr.model import ModelConfig
from icl_lr.train import SCHEDULES, TrainingConfig

ENCODINGS = ("continuous", "tokens")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig
    eval: EvalConfig
    seed: int


def _type_ok(expected, value) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return not isinstance(expected, type) or isinstance(value, expected)


def _build(cls, values: Any, prefix: str):
    """cls(**values), refusing unknown keys and values of the wrong scalar type."""
    values = dict(values or {})
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    for key, value in values.items():
        _check(key in fields, f"unknown key {prefix}.{key}")
        _check(_type_ok(fields[key], value), f"{prefix}.{key} must be of type {getattr(fields[key], '__name__', fields[key])}, got {value!r}")
    return cls(**{k: float(v) if fields[k] is float else v for k, v in values.items()})


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _validate(cfg: RunConfig) -> None:
    d, m, t, e = cfg.data, cfg.model, cfg.training, cfg.eval
    _check(d.encoding in ENCODINGS, f"data.encoding must be one of {ENCODINGS}, got {d.encoding!r}")
    _check(d.n_dims >= 1, f"data.n_dims must be >= 1, got {d.n_dims}")
    _check(d.n_points >= 1, f"data.n_points must be >= 1, got {d.n_points}")
    _check(d.prior_scale > 0, f"data.prior_scale must be > 0, got {d.prior_scale}")
    _check(d.noise_std >= 0, f"data.noise_std must be >= 0, got {d.noise_std}")
    if d.noise_std_choices is not None:
        _check(len(d.noise_std_choices) >= 1, "data.noise_std_choices must be null or a non-empty list")
        floor_ok = all(s > 0 for s in d.noise_std_choices) if len(d.noise_std_choices) > 1 else d.noise_std_choices[0] >= 0
        _check(floor_ok, f"data.noise_std_choices must be > 0 when several are given, got {list(d.noise_std_choices)}")
    _check(d.task_pool_size is None or d.task_pool_size >= 1, f"data.task_pool_size must be null or >= 1, got {d.task_pool_size}")
    _check(d.vocab_size >= 2, f"data.vocab_size must be >= 2, got {d.vocab_size}")
    _check(d.bin_range > 0, f"data.bin_range must be > 0, got {d.bin_range}")
    c = d.curriculum
    if c.enabled:
        _check(1 <= c.dims_start <= d.n_dims, f"data.curriculum.dims_start must be in [1, data.n_dims={d.n_dims}], got {c.dims_start}")
        _check(1 <= c.points_start <= d.n_points, f"data.curriculum.points_start must be in [1, data.n_points={d.n_points}], got {c.points_start}")
        _check(c.interval >= 1, f"data.curriculum.interval must be >= 1, got {c.interval}")
    _check(m.n_layer >= 1, f"model.n_layer must be >= 1, got {m.n_layer}")
    _check(m.n_head >= 1 and m.n_embd % m.n_head == 0, f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})")
    _check(0 <= m.dropout < 1, f"model.dropout must be in [0, 1), got {m.dropout}")
    _check(
        d.sequence_length <= m.n_positions,
        f"model.n_positions ({m.n_positions}) is too small: data.n_dims={d.n_dims} and data.n_points={d.n_points} "
        f"with the {d.encoding} encoding need {d.sequence_length} positions",
    )
    _check(t.schedule in SCHEDULES, f"training.schedule must be one of {SCHEDULES}, got {t.schedule!r}")
    for key in ("steps", "batch_size", "steps_per_dispatch", "max_to_keep"):
        _check(getattr(t, key) >= 1, f"training.{key} must be >= 1, got {getattr(t, key)}")
    _check(t.learning_rate > 0, f"training.learning_rate must be > 0, got {t.learning_rate}")
    _check(t.warmup_steps >= 0, f"training.warmup_steps must be >= 0, got {t.warmup_steps}")
    _check(t.grad_clip > 0, f"training.grad_clip must be > 0, got {t.grad_clip}")
    _check(t.weight_decay >= 0, f"training.weight_decay must be >= 0, got {t.weight_decay}")
    for key in ("steps", "log_every", "eval_every", "checkpoint_every"):
        value = getattr(t, key)
        _check(
            value >= 1 and value % t.steps_per_dispatch == 0,
            f"training.{key} ({value}) must be a positive multiple of training.steps_per_dispatch ({t.steps_per_dispatch})",
        )
    _check(e.n_prompts >= 1 and e.batch_size >= 1, f"eval.n_prompts and eval.batch_size must be >= 1, got {e.n_prompts}, {e.batch_size}")


def from_dictconfig(cfg: DictConfig) -> RunConfig:
    """Validated dataclasses from a (Hydra) config; raises ConfigError naming the bad key."""
    raw = OmegaConf.to_container(cfg, resolve=True)
    data_values = dict(raw.get("data") or {})
    curriculum = _build(CurriculumConfig, data_values.pop("curriculum", None), "data.curriculum")
    if data_values.get("noise_std_choices") is not None:
        data_values["noise_std_choices"] = tuple(data_values["noise_std_choices"])
    run_cfg = RunConfig(
        data=_build(DataConfig, {**data_values, "curriculum": curriculum}, "data"),
        model=_build(ModelConfig, raw.get("model"), "model"),
        training=_build(TrainingConfig, raw.get("training"), "training"),
        eval=_build(EvalConfig, raw.get("eval"), "eval"),
        seed=int(raw.get("seed", 0)),
    )
    _validate(run_cfg)
    return run_cfg
