"""What an evaluation scores and on what: a trained model found from where it lives (a run dir, one of its
checkpoint step dirs, a W&B model artifact, Garg et al.'s released run folder) with the config it was
trained under, and the eval config: that config with the command line's changes to the prompts it is scored
on (task, prior, noise, x's, points, eval sets). What would change the model itself is refused in one line.
"""

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from icl_lr.fields import ConfigError, check, flatten, one_line, unflatten
from icl_lr.records.run_dir import RunDirLock, UnreadableRecord, config_record, read_config_record, step_dirs
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


def _newest_checkpoint(run_dir: Path, source: str) -> Path:
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
    step_dir = path if pinned else _newest_checkpoint(run_dir, source)
    return TrainedModel(source, record, int(step_dir.name), "", step_dir=step_dir, run_dir=None if pinned else run_dir)


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
        model = dataclasses.replace(model, step_dir=_newest_checkpoint(model.run_dir, model.source))
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


def garg_model(folder: str) -> TrainedModel:
    """Garg et al.'s run folder: its state.pt (`model_state_dict`) and the config.yaml beside it."""
    from icl_lr.model import garg

    state_file, config_file = Path(folder) / "state.pt", Path(folder) / "config.yaml"
    check(state_file.is_file() and config_file.is_file(), f"--from-garg {folder}: needs state.pt and config.yaml there")
    try:
        import torch
    except ImportError:
        raise ConfigError("--from-garg reads PyTorch's state.pt: pip install torch") from None
    model_keys, n_dims = garg.model_keys(yaml.safe_load(config_file.read_text()))
    saved = torch.load(state_file, map_location="cpu", weights_only=True)
    state = {k: v.numpy() for k, v in saved.get("model_state_dict", saved).items()}
    params = garg.params_from_state_dict(state, model_keys["n_layer"], n_dims)
    points = model_keys["n_positions"] // 2
    record = {f"model.{k}": v for k, v in model_keys.items()} | {"data.n_dims": n_dims, "data.n_points": points}
    return TrainedModel(folder, record, int(saved.get("train_step", 0)), content_hash(state_file), params=params)


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
