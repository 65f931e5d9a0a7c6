"""The code a run's components came from (components.json): icl-lr's version and each component's origin
(icl_lr/components.py: a built-in, an entry point's distribution and version, a module's or file's sha256).
A resume compares it with the code it would train on, so a run's records never mix two versions of a
plugin's code unsaid; a change let through (training.allow_code_change) is kept in the record's `changes`,
with the step from which the new code trained.
"""

import importlib.metadata
import json
from pathlib import Path

import icl_lr
from icl_lr.fields import one_line
from icl_lr.records.run_dir import RunDirError
from icl_lr.records.schema import CODE_FILE

WANDB_PREFIX = "components."  # the record's keys in W&B's config (provenance, not config: analysis drops them)
IDENTITY = ("source", "sha256", "distribution", "version")  # what tells one component's code from another's


def icl_lr_version() -> str:
    """icl-lr's version as installed, or the package's own where it is not (a source checkout on sys.path)."""
    try:
        return importlib.metadata.version("icl-lr")
    except importlib.metadata.PackageNotFoundError:
        return icl_lr.__version__


def code_record(origins: dict) -> dict:
    """The record of a start's code: {"icl_lr": version, "components": {key: origin}, "changes": []}."""
    return {"icl_lr": icl_lr_version(), "components": origins, "changes": []}


def read_code_record(run_dir: Path) -> dict | None:
    """components.json, or None for a run dir written before it existed; RunDirError when it cannot be read."""
    path = Path(run_dir) / CODE_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("components"), dict):
            raise ValueError("not a record of components")
    except (OSError, ValueError) as error:
        raise RunDirError(
            f"{path} cannot be read ({one_line(error, 80)}): the code the run trained with cannot be checked; move "
            "it aside to resume without the check (this start's code is recorded from then on)"
        ) from None
    return record


def changed(stored: dict, current: dict) -> dict:
    """{key: (recorded origin, current origin)} of the components whose code differs from the record's; a
    component the record lacks has nothing to compare."""
    recorded = stored["components"]
    identity = lambda origin: tuple(origin.get(name) for name in IDENTITY)
    return {
        key: (recorded[key], origin)
        for key, origin in current["components"].items()
        if key in recorded and identity(recorded[key]) != identity(origin)
    }


def describe(key: str, old, new) -> str:
    """One change, as the refusal and the warning name it: `data.task: plug/four.py changed ... (sha256 a.. -> b..)`;
    icl-lr's own (`key` icl_lr), its versions."""
    short = lambda digest: f"{digest[:8]}.." if digest else "none"
    if key == "icl_lr":
        return f"icl-lr {old} -> {new} since the run last trained"
    if old.get("source") != new.get("source"):
        return f"{key}: {new['name']} was a {old.get('source')} when the run started, now a {new['source']}"
    if new["source"] == "entry_point":
        what = f"{new['name']} (distribution {new['distribution']})"
        return f"{key}: {what} changed since the run started (version {old.get('version')} -> {new['version']})"
    file = new["name"].partition(":")[0] if new["source"] == "file" else new["file"]
    return f"{key}: {file} changed since the run started (sha256 {short(old.get('sha256'))} -> {short(new['sha256'])})"


def with_changes(stored: dict, current: dict, step: int) -> dict:
    """The record a resume at `step` writes: the current code, the record's earlier changes and this start's
    (icl-lr's version and each changed component, from and to)."""
    changes = [*stored.get("changes", [])]
    if stored.get("icl_lr") != current["icl_lr"]:
        changes.append({"step": step, "key": "icl_lr", "from": stored.get("icl_lr"), "to": current["icl_lr"]})
    for key, (old, new) in changed(stored, current).items():
        changes.append({"step": step, "key": key, "from": old, "to": new})
    return current | {"changes": changes}


def code_config(record: dict) -> dict:
    """The record in W&B's config, light: `components.icl_lr` and per component its source and what tells its
    code (`components.data.task: file sha256:<hex>`)."""
    config = {f"{WANDB_PREFIX}icl_lr": record["icl_lr"]}
    for key, origin in record["components"].items():
        if origin["source"] == "entry_point":
            config[f"{WANDB_PREFIX}{key}"] = f"entry_point {origin['distribution']}=={origin['version']}"
        elif origin["source"] == "builtin":
            config[f"{WANDB_PREFIX}{key}"] = "builtin"
        else:
            config[f"{WANDB_PREFIX}{key}"] = f"{origin['source']} sha256:{origin['sha256']}"
    return config
