import subprocess
import sys

import pytest

from conftest import ROOT, run_config
from icl_lr.config import ConfigError
from icl_lr.data import DataConfig
from icl_lr.evaluate import EvalConfig
from icl_lr.model import ModelConfig
from icl_lr.train import TrainingConfig


def test_defaults_and_presets_compose():
    cfg = run_config()
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head) == (3, 64, 2)
    assert (run_config("model=small").model.n_layer, run_config("model=standard").model.n_embd) == (6, 256)
    garg = run_config("experiment=garg2022")
    assert (garg.data.n_dims, garg.data.n_points, garg.model.n_layer, garg.training.learning_rate) == (20, 41, 12, 1e-4)
    assert garg.data.curriculum.enabled and garg.training.schedule == "constant"
    noisy = run_config("data.noise_std_choices=[0.1,0.5]", "training.learning_rate=3e-4")
    assert noisy.data.noise_stds == (0.1, 0.5) and noisy.training.learning_rate == 3e-4


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.n_head=3", "model.n_embd"),
        ("data.noise_std=-0.1", "data.noise_std"),
        ("data.encoding=words", "data.encoding"),
        ("data.n_points=200", "model.n_positions"),
        ("data.encoding=tokens data.n_dims=30", "model.n_positions"),
        ("data.noise_std_choices=[0,0.5]", "data.noise_std_choices"),
        ("training.log_every=33", "training.log_every"),
        ("training.schedule=linear", "training.schedule"),
        ("data.n_points=many", "data.n_points"),
        ("+data.colour=red", "data.colour"),
    ],
)
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_config(*override.split())


def test_cli_reports_bad_config_in_one_line_before_compiling(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "model.n_head=3", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "config error" in line]
    assert len(errors) == 1 and "model.n_embd (64) must be divisible by model.n_head (3)" in errors[0]
    assert not (tmp_path / "checkpoints").exists()


def test_dataclass_defaults_mirror_the_yaml():
    """Code that builds configs directly (the benchmark, tests) gets what `python train.py` gets."""
    cfg = run_config()
    assert (cfg.data, cfg.model, cfg.training, cfg.eval) == (DataConfig(), ModelConfig(), TrainingConfig(), EvalConfig())
