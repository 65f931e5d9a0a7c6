"""What a start of `train.py` may do with a run dir, decided before anything compiles or W&B starts:
`plan_start` reads only and refuses (one line) a start that would relabel or corrupt the records;
`RunStart.commit` writes the start's record (identity, run_config.json, components.json, .hydra/). A
refused start so changes nothing in the dir but its own entry under `.hydra/attempts/`.
"""

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from icl_lr.fields import ConfigError, check, free_keys
from icl_lr.records.code import changed, code_record, describe, read_code_record, with_changes
from icl_lr.records.run_dir import (
    CONFIG_FILE,
    SUMMARY_FILE,
    RunDirError,
    UnreadableRecord,
    claim_identity,
    config_record,
    has_checkpoints,
    read_config_record,
    read_summary,
    step_dirs,
    write_atomic,
)
from icl_lr.records.schema import CODE_FILE, CURVES_FILE, METRICS_FILE
from icl_lr.records.tracking import read_jsonl
from icl_lr.run.config import origins
from icl_lr.train.config import RunConfig

log = logging.getLogger("icl_lr")


def differing_keys(stored: dict, cfg: RunConfig) -> list:
    """The keys of `cfg` whose change from the stored record would alter the training trajectory of a
    resumed run (those its fields mark FREE may change; training.steps only grows). A key the record
    lacks (added to the code after the run started) counts as its default: a new key's default keeps the
    old behaviour, or the key is free. A key the record has and `cfg` does not was another component's
    (a record written before each component owned its keys): it never acted on this run."""
    current, free = config_record(cfg), free_keys(cfg)
    defaults = config_record(RunConfig(data=type(cfg.data)(), model=type(cfg.model)()))
    return [k for k in sorted(current) if k not in free and stored.get(k, defaults[k]) != current[k]]


def with_horizon(cfg: RunConfig, stored: dict | None) -> RunConfig:
    """cfg with training.decay_steps set: as given, else the stored run's, else this run's length."""
    t = cfg.training
    if t.decay_steps is not None:
        return cfg
    horizon = stored["training.decay_steps"] if stored else t.steps
    return dataclasses.replace(cfg, training=dataclasses.replace(t, decay_steps=horizon))


@dataclass(frozen=True)
class RunStart:
    """What a start on a run dir does: `finished` (the summary of a run with nothing left to do), else
    trains `cfg` (training.decay_steps resolved), resuming its checkpoints when `resumed`."""

    run_dir: Path
    cfg: RunConfig
    finished: dict | None
    resumed: bool
    stored: dict | None  # the config record of the run's previous start
    code: dict  # the record of the code it trains with (icl_lr/records/code.py), this start's changes in it
    code_changes: tuple = ()  # what changed in it since the run started, a line each

    def commit(self, attempt_dir: Path | None) -> str:
        """Writes the start's record (identity, run_config.json, components.json, .hydra/) and returns its W&B
        run id; says which code changed since the run started."""
        t, run_id = self.cfg.training, claim_identity(self.run_dir, fresh=not self.resumed)
        write_atomic(self.run_dir / CONFIG_FILE, json.dumps(config_record(self.cfg), indent=2) + "\n")
        write_atomic(self.run_dir / CODE_FILE, json.dumps(self.code, indent=2) + "\n")
        for change in self.code_changes:
            log.warning("%s; training on with this code (recorded in %s)", change, CODE_FILE)
        if attempt_dir is not None:  # .hydra/ holds the latest start's Hydra config; each start's own stays
            for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
                if (attempt_dir / name).exists():
                    shutil.copyfile(attempt_dir / name, self.run_dir / ".hydra" / name)
        if self.resumed and t.steps > self.stored["training.steps"]:
            log.info(
                "extending the run from %d to %d steps; %s", self.stored["training.steps"], t.steps, self._extension()
            )
        return run_id

    def _extension(self) -> str:
        """What an extension does to the learning-rate schedule."""
        t = self.cfg.training
        if t.schedule == "constant" or t.horizon >= t.steps:
            return f"the {t.schedule} schedule goes on as it was (horizon {t.horizon} steps)"
        floor = t.min_lr_ratio * t.learning_rate
        return (
            f"the {t.schedule} schedule keeps its horizon (training.decay_steps={t.horizon}): the learning rate "
            f"stays at its floor {floor:.2e} from step {t.horizon} on"
        )


def plan_start(run_dir: Path, cfg: RunConfig) -> RunStart:
    """Every check of a start, reading only; the caller holds the RunDirLock. Raises RunDirError or
    ConfigError (one line) for a start that would change or relabel what the run dir records."""
    run_dir = Path(run_dir)
    resumed = has_checkpoints(run_dir)
    if cfg.init_from and not resumed:
        check_init_from(cfg.init_from)
    has_results = (run_dir / SUMMARY_FILE).exists()
    try:
        stored = read_config_record(run_dir)
    except UnreadableRecord as error:
        stored, unreadable = None, str(error)
    else:
        unreadable = f"{run_dir / CONFIG_FILE} is missing"
    if (resumed or has_results) and stored is None:
        raise RunDirError(
            f"run dir {run_dir} holds {'checkpoints' if resumed else 'results'} but {unreadable}: the config it was "
            f"trained with cannot be checked against this start's; put that file back (W&B keeps a copy of the "
            f"config in wandb/*/files/config.yaml) or start a new run dir"
        )
    trained = resumed or has_results  # then `stored` is the record of what trained
    cfg = with_horizon(cfg, stored if trained else None)
    current = config_record(cfg)
    changed = differing_keys(stored, cfg) if trained else []
    details = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in changed)
    if resumed and changed:
        raise RunDirError(f"run dir {run_dir} was trained with another config ({details}); start a new run dir")
    if resumed and cfg.training.steps < stored["training.steps"]:
        raise RunDirError(
            f"training.steps ({cfg.training.steps}) is below the run's {stored['training.steps']}: "
            "a resume may only extend a run"
        )
    if not resumed and has_results and (changed or cfg.training.steps != stored["training.steps"]):
        differs = details or f"training.steps: {stored['training.steps']!r} -> {cfg.training.steps}"
        raise RunDirError(
            f"run dir {run_dir} holds the results of a run ({differs}) but no checkpoints to continue it from; "
            "start a new run dir"
        )
    for name in (METRICS_FILE, CURVES_FILE):  # read as the resume will, before W&B starts a run for it
        try:
            read_jsonl(run_dir / name)
        except ValueError as error:
            raise RunDirError(f"{error}: move the file aside to start this run dir again, or start a new one") from None
    summary = read_summary(run_dir)
    finished = summary if summary and summary.get("step") == cfg.training.steps else None
    code, code_changes = code_of(run_dir, cfg, resumed and not finished)
    return RunStart(run_dir, cfg, finished, resumed, stored, code, code_changes)


def code_of(run_dir: Path, cfg: RunConfig, resumed: bool) -> tuple[dict, tuple]:
    """(the record of the code this start trains with, its changes since the run started, a line each). A
    resume on a component's other code (a file's or module's content, a plugin's version) is refused in one
    line unless training.allow_code_change; one on another icl-lr version goes on, said. A run dir from before
    the record has nothing to compare."""
    current = code_record(origins(cfg))
    stored = read_code_record(run_dir) if resumed else None
    if stored is None:
        return current, ()
    differing = changed(stored, current)
    check(
        not differing or cfg.training.allow_code_change,
        f"{', '.join(describe(key, *pair) for key, pair in differing.items())}; resume with "
        "training.allow_code_change=true to train on with the new code (recorded)",
    )
    record = with_changes(stored, current, step=int(step_dirs(run_dir / "checkpoints" / "latest")[-1].name))
    new = record["changes"][len(stored.get("changes", [])) :]
    return record, tuple(describe(change["key"], change["from"], change["to"]) for change in new)


def check_init_from(init_from: str) -> None:
    """A local checkpoint must exist; a W&B reference (with ':alias') is looked up when the run starts."""
    if ":" in init_from:
        return
    path = Path(init_from)
    if not (path / "default").is_dir():
        raise ConfigError(
            f"init_from: no checkpoint step directory at {path} (expected <run dir>/checkpoints/latest/<step>, "
            "or a W&B artifact entity/project/model-<id>:<alias>)"
        )
