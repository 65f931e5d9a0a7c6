"""What an evaluation scores and on what: a trained model found from where it lives (a run dir, one of its
checkpoint step dirs, a W&B model artifact, Garg et al.'s released run folder) with the config it was
trained under, and the eval config: that config with the command line's changes to the prompts it is scored
on (task, prior, noise, x's, points, eval sets). What would change the model itself is refused in one line.
"""

import dataclasses
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from icl_lr.fields import ConfigError, check, flatten, one_line, unflatten
from icl_lr.records.run_dir import RunDirLock, UnreadableRecord, config_record, read_config_record, step_dirs
from icl_lr.records.schema import TRAJECTORY
from icl_lr.run.config import check_across, from_values, sections, typed_keys
from icl_lr.train.config import RunConfig

log = logging.getLogger("icl_lr")
RELISTS = 5  # a live run's checkpoints listed again at most this often while one is read
FIXED = ("model.", "data.n_dims", "data.encoding", "training.precision")  # the model: an evaluation keeps them


@dataclass(frozen=True)
class TrainedModel:
    """A model to score: `record` its training config (run_config.json's dotted keys), `step_dir` its orbax
    step dir (or `params`, already icl-lr's, for an imported model), `step` its training step, `sha256` the
    content hash of the files its parameters came from."""

    source: str
    record: dict
    step: int
    sha256: str
    step_dir: Path | None = None
    params: dict | None = None
    run_dir: Path | None = None  # the run dir whose newest checkpoint this is (None: a step dir named, or imported)

    def describe(self) -> dict:
        return {"source": self.source, "step_dir": str(self.step_dir or ""), "step": self.step, "sha256": self.sha256}


def content_hash(path: Path) -> str:
    """sha256 over a file, or over a directory's files (their relative paths and bytes, in sorted order)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path if path.is_dir() else path.parent)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _checkpoint_to_score(run_dir: Path, source: str) -> Path:
    """A run dir's best checkpoint, else its latest; one line where it has none (and whether it is being written)."""
    found = step_dirs(run_dir / "checkpoints" / "best") or step_dirs(run_dir / "checkpoints" / "latest")
    if not found:
        lock = RunDirLock(run_dir)
        writing = f" (it is being written by process {lock.holder()[0]}: try again after its first checkpoint)"
        raise ConfigError(f"{source}: no checkpoint under {run_dir / 'checkpoints'}{writing if lock.is_held() else ''}")
    return found[-1]


def local_model(source: str) -> TrainedModel:
    """A run dir (its best checkpoint, else its latest) or one of its step dirs (checkpoints/<kind>/<step>)."""
    path = Path(source)
    check(
        path.exists(),
        f"{source}: no such run dir or checkpoint step dir (nor a W&B artifact entity/project/name:alias)",
    )
    pinned = path.name.isdigit() and path.parent.parent.name == "checkpoints"
    run_dir = path.parents[2] if pinned else path
    try:
        record = read_config_record(run_dir)
    except UnreadableRecord as error:
        raise ConfigError(str(error)) from None
    check(record is not None, f"{source}: {run_dir} has no config record (run_config.json) to rebuild its model from")
    step_dir = path if pinned else _checkpoint_to_score(run_dir, source)
    return TrainedModel(source, record, int(step_dir.name), "", step_dir=step_dir, run_dir=None if pinned else run_dir)


def trajectory_models(model: TrainedModel) -> list:
    """A run dir's every kept checkpoint by step, as models to score: its trajectory's (training.trajectory), its
    latest and its best (a step kept twice is read from the trajectory's)."""
    check(model.run_dir is not None, f"--trajectory scores a run dir's checkpoints: {model.source} is not a run dir")
    folders = [model.run_dir / "checkpoints" / kind for kind in (TRAJECTORY, "latest", "best")]
    by_step = {}
    for step_dir in (d for folder in folders for d in step_dirs(folder)):
        by_step.setdefault(int(step_dir.name), step_dir)
    return [dataclasses.replace(model, step=step, step_dir=by_step[step], run_dir=None) for step in sorted(by_step)]


def load_params(model: TrainedModel, template) -> tuple:
    """(the model as read, its params shaped like `template`'s): an imported model's arrays, or its checkpoint's,
    hashed as read. A run dir's checkpoint that a live run removes while it is read (a rotation, a new best) gives
    way to the run's newest one then; an unreadable checkpoint is one line (ConfigError)."""
    import jax
    import jax.numpy as jnp

    from icl_lr.records.checkpoint import CheckpointMismatch, UnreadableCheckpoint, restore_params

    if model.params is not None:
        return model, jax.tree.map(jnp.asarray, model.params)
    for _ in range(RELISTS):
        step_dir = model.step_dir
        try:
            sha256 = content_hash(step_dir)
            params = restore_params(step_dir, template)
            return dataclasses.replace(model, step=int(step_dir.name), sha256=sha256), params
        except CheckpointMismatch:
            raise
        except Exception as error:
            if step_dir.exists() or model.run_dir is None:
                reason = str(error) if isinstance(error, UnreadableCheckpoint) else one_line(error)
                raise ConfigError(f"checkpoint {reason}") from None
        model = dataclasses.replace(model, step_dir=_checkpoint_to_score(model.run_dir, model.source))
        log.info("%s was removed while it was read (the run is being written): reading %s", step_dir, model.step_dir)
    raise ConfigError(f"{model.source}: its checkpoints kept changing while they were read; try again")


def artifact_model(reference: str) -> TrainedModel:
    """A W&B model artifact (entity/project/model-<id>:alias), downloaded, with the config of the run that
    logged it (needs the network and a key)."""
    import wandb

    try:
        artifact = wandb.Api().artifact(reference, type="model")
        step_dir = Path(artifact.download())
        producer = artifact.logged_by()
    except Exception as error:
        reason = one_line(error, 300)
        raise ConfigError(f"{reference}: cannot read the W&B artifact ({type(error).__name__}: {reason})") from None
    record = {k: v for k, v in producer.config.items() if "." in k or k in ("seed", "init_from")}
    return TrainedModel(reference, record, int(artifact.metadata.get("step", 0)), content_hash(step_dir), step_dir)


def garg_model(source: str) -> TrainedModel:
    """Garg et al.'s run folder (its state.pt: `model_state_dict`, `train_step`) or one of its model_<step>.pt
    (a plain state dict kept every keep_every_steps), with the config.yaml beside it; what cannot be read is a
    ConfigError naming the file."""
    from icl_lr.model import garg

    path = Path(source)
    kept = re.fullmatch(r"model_(\d+)\.pt", path.name) if path.is_file() else None
    check(kept is not None or not path.is_file(), f"--from-garg {source}: a file must be one of their model_<step>.pt")
    state_file, folder = (path, path.parent) if kept else (path / "state.pt", path)
    config_file = folder / "config.yaml"
    for file in (state_file, config_file):
        check(file.is_file(), f"{file}: no such file (--from-garg reads a state.pt or model_<step>.pt and config.yaml)")
    try:
        import torch
    except ImportError:
        raise ConfigError("--from-garg reads PyTorch's state.pt: pip install torch") from None
    try:
        config = yaml.safe_load(config_file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{config_file}: not YAML ({one_line(error)})") from None
    try:
        check(isinstance(config, dict), "not a mapping")
        record = garg.run_record(config)
    except ConfigError as error:
        raise ConfigError(f"{config_file}: {error}") from None
    try:
        saved = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several kinds for a file it cannot read
        raise ConfigError(f"{state_file}: not a PyTorch file ({type(error).__name__}: {one_line(error)})") from None
    try:
        if kept:
            state, step = saved, int(kept.group(1))
        else:
            check(isinstance(saved, dict), "not a dict")
            missing = [k for k in ("model_state_dict", "train_step") if k not in saved]
            check(not missing, f"lacks {' and '.join(missing)}")
            state, step = saved["model_state_dict"], int(saved["train_step"])
        check(isinstance(state, dict), "its state dict is not a dict")
        check(all(isinstance(v, torch.Tensor) for v in state.values()), "its state dict holds non-tensors")
        params = garg.params_from_state_dict(
            {k: v.numpy() for k, v in state.items()}, record["model.n_layer"], record["data.n_dims"]
        )
    except ConfigError as error:
        raise ConfigError(f"{state_file}: {error}") from None
    return TrainedModel(source, record, step, content_hash(state_file), params=params)


def find_model(source: str, from_garg: bool = False) -> TrainedModel:
    if from_garg:
        return garg_model(source)
    if not Path(source).exists() and source.count("/") == 2 and ":" in source:
        return artifact_model(source)
    return local_model(source)


def eval_config(record: dict, overrides=()) -> RunConfig:
    """The model's training config (its record) with `overrides` (key=value) to what it is scored on;
    ConfigError (one line) for a key that would change the model, or a value that does not fit it."""
    # where the records go is the evaluation's own (wandb.*: its defaults and the command line's)
    nested = unflatten({k: v for k, v in record.items() if not k.startswith("wandb.")})
    typed = typed_keys(overrides)
    for override in overrides:
        check("=" in override, f"{override!r}: an override is key=value")
        key, text = override.lstrip("+").split("=", 1)
        value = yaml.safe_load(text)
        if key.startswith(FIXED) and value != record.get(key):
            raise ConfigError(
                f"{key}={value} does not fit the model: it was trained with {key}={record.get(key)} (an evaluation "
                "scores the trained model, it cannot change it)"
            )
        nested = unflatten(flatten(nested) | {key: value})
    classes = sections(nested, typed)  # drops the keys of components not chosen (refuses a typed one)
    known = config_record(RunConfig(**{section: cls() for section, cls in classes.items()}))
    flat = {k: v for k, v in flatten(nested).items() if k in known or k in typed}  # an older record's keys go
    cfg = from_values(unflatten(flat), typed)
    check_across(cfg)
    return cfg
