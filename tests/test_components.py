"""icl_lr/components.py: components named by a built-in name, an installed package's entry point or an
import path, refused in one line before anything compiles; and examples/plugin/, a researcher's own task
and family installed from their own package, run end to end (slow)."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from helpers import FAST, ROOT, RunFile, held_out_curves, no_key_env, output, run_config, train_cli
from icl_lr.fields import ConfigError
from icl_lr.model.icl_model import FAMILIES
from icl_lr.records.code import changed, code_record, describe, icl_lr_version
from icl_lr.records.run_dir import RunDirError
from icl_lr.run.config import origins
from icl_lr.run.start import code_of

PLUGIN = ROOT / "examples" / "plugin"


@pytest.mark.unit
def test_a_component_is_refused_in_one_line_naming_what_it_lacks(tmp_path, monkeypatch):
    """A plugin by import path: a file beside the command, a module without the attribute, one that fails to
    import, one without part of the interface: each refused before anything compiles."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "partial.py").write_text("class Half:\n    Config = None\n    def sample_batch(self): ...\n")
    cases = {
        "data.task=broken:Task": "data.task='broken:Task': cannot import broken (RuntimeError: boom)",
        "data.task=partial:Nothing": "data.task='partial:Nothing': module partial has no Nothing",
        "data.task=partial:Half": (
            "data.task=partial:Half: <class 'partial.Half'> lacks sample_xs, sample_noise, training_batch,"
        ),
        "model.family=nowhere": f"model.family must be one of {FAMILIES.names()}, an entry point of icl_lr.families",
        "data.encoding=missing.py:X": "data.encoding='missing.py:X': no file",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError) as error:
            run_config(override)
        assert str(error.value).startswith(message) and "\n" not in str(error.value), (override, str(error.value))


@pytest.mark.unit
def test_a_key_of_another_component_is_refused_naming_its_owner():
    """Typed on the command line; listed in a YAML for another component, it is dropped (model=lstm over the
    default gpt2 preset's n_head)."""
    cases = {
        (
            "model=lstm",
            "model.n_head=4",
        ): "model.n_head is a key of model.family=gpt2|gla|hybrid|encoder|looped, not of model.family=lstm",
        ("model.family=lstm", "model.dropout=0.1"): "model.dropout is a key of model.family=gpt2|looped, not of",
        ("data.sparsity=2",): "data.sparsity is a key of data.task=sparse_linear, not of data.task=linear_regression "
        "and data.encoding=continuous",
        ("data.vocab_size=8",): "data.vocab_size is a key of data.encoding=tokens|binned_y, not of",
        ("data.no_such_key=1",): "unknown key data.no_such_key",
    }
    for overrides, message in cases.items():
        with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
            run_config(*overrides)
    lstm = run_config("model=lstm")
    assert not hasattr(lstm.model, "n_head") and lstm.model.n_layer == 2


@pytest.mark.unit
def test_plugins_by_file_path_and_by_entry_point(tmp_path, monkeypatch):
    """The example's task by `file.py:Class`; its family by an entry point of an installed distribution
    (a dist-info on sys.path, as pip writes one), with the keys each owns validated by its own check."""
    monkeypatch.syspath_prepend(str(PLUGIN))
    dist = tmp_path / "my_families-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-families\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[icl_lr.families]\nmy_deepset = icl_lr_fourier.deepset:DeepSet\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    task = f"data.task={PLUGIN / 'icl_lr_fourier' / 'fourier.py'}:FourierSeries"
    cfg = run_config(task, "data.n_dims=1", "data.max_frequency=5", "model.family=my_deepset", "model.mlp_ratio=2")
    # n_layer: the default preset's (gpt2_narrow: 6), a key the family owns too; n_head, n_positions dropped
    assert (cfg.data.max_frequency, cfg.model.mlp_ratio, cfg.model.n_layer) == (5, 2, 6)
    assert not hasattr(cfg.model, "n_head")
    with pytest.raises(ConfigError, match="data.n_dims must be 1, got 5"):
        run_config(task)
    with pytest.raises(ConfigError, match="model.mlp_ratio must be >= 1, got 0"):
        run_config("model.family=my_deepset", "model.mlp_ratio=0")


@pytest.mark.unit
def test_a_resume_on_another_icl_lr_goes_on_and_a_plugin_upgrade_is_refused(tmp_path):
    """Built-ins are icl-lr's code: another version of it is said and recorded, not refused (old run dirs
    resume after an upgrade); a record cut short is refused in one line; an entry point's distribution at
    another version is named with both versions."""
    cfg = run_config()
    (tmp_path / "checkpoints" / "latest" / "20").mkdir(parents=True)
    older = code_record(origins(cfg)) | {"icl_lr": "0.0.1"}
    (tmp_path / "components.json").write_text(json.dumps(older))
    record, lines = code_of(tmp_path, cfg, resumed=True)
    assert record["changes"] == [{"step": 20, "key": "icl_lr", "from": "0.0.1", "to": icl_lr_version()}]
    assert lines == (f"icl-lr 0.0.1 -> {icl_lr_version()} since the run last trained",)
    (tmp_path / "components.json").write_text('{"icl_lr": ')  # cut short
    with pytest.raises(RunDirError, match="components.json cannot be read .*: the code the run trained with"):
        code_of(tmp_path, cfg, resumed=True)

    family = {"name": "my_deepset", "source": "entry_point", "distribution": "my-families"}
    stored = {"icl_lr": "1", "components": {"model.family": family | {"version": "0.1"}}}
    current = {"icl_lr": "1", "components": {"model.family": family | {"version": "0.2"}}}
    ((key, (old, new)),) = changed(stored, current).items()
    assert describe(key, old, new) == (
        "model.family: my_deepset (distribution my-families) changed since the run started (version 0.1 -> 0.2)"
    )


def test_a_resume_on_a_changed_plugin_file_is_refused_unless_allowed(tmp_path):
    """A file plugin's sha256 is recorded (components.json, W&B's config); a resume on the same file goes on,
    one on the file edited is refused in one line naming it, and with training.allow_code_change trains on,
    the change recorded with the step it began at."""
    plugin = tmp_path / "plug" / "four.py"
    plugin.parent.mkdir()
    plugin.write_text("from icl_lr.task.linear import LinearRegression\n\n\nclass Mine(LinearRegression):\n    pass\n")
    sha = lambda: hashlib.sha256(plugin.read_bytes()).hexdigest()
    first, run_dir = sha(), tmp_path / "run"
    start = lambda *o: subprocess.run([sys.executable, str(ROOT / "train.py"), *FAST, "data.task=plug/four.py:Mine",
                                       *o, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=no_key_env(),
                                      capture_output=True, text=True, timeout=300)  # fmt: skip
    record = lambda: json.loads((run_dir / "components.json").read_text())

    train_cli(run_dir, "data.task=plug/four.py:Mine", "training.steps=20", cwd=tmp_path, wandb=True)  # W&B offline
    task = {"name": "plug/four.py:Mine", "source": "file", "file": str(plugin.resolve()), "sha256": first}
    assert record()["components"]["data.task"] == task and record()["changes"] == []
    assert record()["components"]["model.family"] == {"name": "gpt2", "source": "builtin"}
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert RunFile.load(offline).config_value("components.data.task") == f"file sha256:{first}"

    assert start("training.steps=40", "wandb.mode=disabled").returncode == 0  # the same file: resumed
    plugin.write_text(plugin.read_text() + "# edited\n")
    refused = start("training.steps=60", "wandb.mode=disabled")
    errors = [line for line in output(refused).splitlines() if "][ERROR] - " in line]
    assert refused.returncode == 2 and "Traceback" not in output(refused), output(refused)[-3000:]
    assert errors == [
        f"{errors[0].split('] - ')[0]}] - config error: data.task: plug/four.py changed since the run started "
        f"(sha256 {first[:8]}.. -> {sha()[:8]}..); resume with training.allow_code_change=true to train on with the "
        "new code (recorded)"
    ], errors
    assert record()["components"]["data.task"]["sha256"] == first  # a refused start records nothing

    allowed = start("training.steps=60", "wandb.mode=disabled", "training.allow_code_change=true")
    assert allowed.returncode == 0 and "data.task: plug/four.py changed" in output(allowed), output(allowed)[-3000:]
    assert record()["components"]["data.task"]["sha256"] == sha()
    assert record()["changes"] == [{"step": 40, "key": "data.task", "from": task, "to": task | {"sha256": sha()}}]
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 60


def _fresh_venv(tmp_path) -> Path:
    """A new venv whose dependencies are this one's (a .pth line), with icl-lr and examples/plugin installed
    from copies, not editable."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    Path(site, "icl_lr_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    plugin = shutil.copytree(PLUGIN, tmp_path / "plugin", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    for source in (ROOT, plugin):
        install = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", str(source)]
        subprocess.run(install, check=True, capture_output=True, timeout=600, cwd=tmp_path)
    return venv


@pytest.mark.slow
def test_an_installed_plugin_trains_resumes_sweeps_and_is_analyzed(tmp_path):
    """examples/plugin installed beside icl-lr: a run of its task and family from another folder, killed
    and resumed to the curves of a run never killed; a local sweep over the task's own key; analyze --html
    with the task's own baseline; the W&B offline files read back by W&B's reader. icl_lr/ is not touched."""
    venv = _fresh_venv(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = no_key_env()
    env.pop("PYTHONPATH", None)
    plugin = ["hydra.searchpath=[pkg://icl_lr_fourier.conf]", "data=fourier_series", "model=deepset"]
    small = [*plugin, *FAST[4:], "data.n_points=12", "model.n_embd=32", "training.steps=200"]
    train = lambda run_dir, *o: [str(venv / "bin" / "icl-lr-train"), *small, *o, f"hydra.run.dir={run_dir}"]
    run = lambda argv: subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)

    straight = run(train("straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    process = subprocess.Popen(train("killed", "training.checkpoint_every=20"), cwd=work, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    latest, deadline = work / "killed" / "checkpoints" / "latest", time.time() + 300
    while not any(p.name.isdigit() for p in latest.glob("*")) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    saved = sorted(int(p.name) for p in latest.glob("*") if p.name.isdigit())
    assert saved and saved[-1] < 200, saved
    resumed = run(train("killed"))
    assert f"resumed at step {saved[-1]} of 200" in resumed.stdout + resumed.stderr, resumed.stderr[-3000:]
    curves = [held_out_curves(work / d) for d in ("straight", "killed")]
    assert curves[0] == curves[1] and curves[0]["step"] == 200 and "fourier_least_squares" in curves[0]
    assert json.loads((work / "killed" / "summary.json").read_text())["excess_over"] == "bayes"

    (work / "sweep.yaml").write_text(
        "program: train.py\nmethod: grid\nparameters:\n  data.max_frequency:\n    values: [1, 2]\n"
        "command:\n  - ${env}\n  - ${interpreter}\n  - ${program}\n  - ${args_no_hyphens}\n"
        "  - hydra.run.dir=sweep/${envvar:WANDB_RUN_ID}\n"
    )
    sweep = run([str(venv / "bin" / "icl-lr-sweep"), "sweep.yaml", "--count", "2", "--", *small, "training.steps=40"])
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    swept = sorted(json.loads((d / "run_config.json").read_text())["data.max_frequency"] for d in work.glob("sweep/*"))
    assert swept == [1, 2]

    analyzed = run([str(venv / "bin" / "icl-lr-analyze"), "straight", "sweep", "--html"])
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    report = (work / "analysis" / "report.html").read_text()
    assert "fourier_least_squares" in report and (work / "analysis" / "error_vs_context.png").exists()
    (offline,) = (work / "straight" / "wandb").glob("offline-run-*")
    recorded = RunFile.load(offline)
    assert recorded.config_value("data.task") == "fourier_series" and recorded.config_value("model.mlp_ratio") == 4
    assert any("eval/fourier_least_squares/error_k1" in row for row in recorded.history)
