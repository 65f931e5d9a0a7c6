import subprocess
import sys

import pytest

from helpers import ROOT, compose_config, run_config
from icl_lr.fields import ConfigError
from icl_lr.records.run_dir import config_record
from icl_lr.run.config import from_dictconfig, from_values
from icl_lr.train.config import RunConfig


@pytest.mark.unit
def test_defaults_and_presets_compose():
    cfg = run_config()
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head, cfg.training.batch_size) == (6, 64, 2, 64)
    assert run_config("model=gpt2_tiny").model.n_layer == 3
    assert (run_config("model=gpt2_small").model.n_layer, run_config("model=gpt2_standard").model.n_embd) == (6, 256)
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
        ("training.schedule=step", "training.schedule"),
        ("training.precision=fp16", "training.precision"),
        ("training.cpu_devices=0", "training.cpu_devices"),
        ("training.cpu_devices=many", "training.cpu_devices"),
        ("data.n_points=many", "data.n_points"),
        ("+data.colour=red", "data.colour"),
        ("training.num_epochs=20000", "training.num_epochs"),
        ("training.num_epochs=0", "training.num_epochs"),
        ("data.train_size=0", "data.train_size"),
        ("model.embedding_std=0", "model.embedding_std"),
        ("data.encoding=binned_y data.ce_weight=0", "data.ce_weight and data.mean_loss_weight"),
        ("data.ce_weight=0", "data.ce_weight is a key of data.encoding=tokens|binned_y, not of data.task=linear"),
        ("model.n_layr=3", "unknown key model.n_layr"),
        ("data.encoding=tokens data.mean_loss_weight=-1", "data.mean_loss_weight"),
        ("data.encoding=tokens data.bin_scheme=log", "data.bin_scheme must be"),
        ("data.token_value_embedding=true", "data.token_value_embedding"),
        ("data.token_short_conv=true", "data.token_short_conv"),
        ("data.encoding=binned_y data.token_slot_embedding=true", "data.token_slot_embedding"),
        ("training.loss_points=first", "training.loss_points"),
        ("eval.algorithm_steps=[]", "eval.algorithm_steps"),
        ("eval.algorithm_steps=[0,3]", "eval.algorithm_steps"),
        (
            "model=lstm model.dropout=0.1",
            "model.dropout is a key of model.family=gpt2|looped, not of model.family=lstm",
        ),
        ("model=lsa data.encoding=paired model.init=fancy", "model.init must be"),
        ("model=mamba model.scan=parallel", "model.scan must be one of"),
        ("model=mamba model.norm=batchnorm", "model.norm must be one of"),
        ("model=mamba_park model.init=gd", "model.init must be one of"),
        ("model.init=gd", "model.init is a key of model.family=lsa"),
        ("data.encoding=paired", "model.family=gpt2 and data.encoding=paired do not go together"),
        ("model=lsa", "model.family=lsa and data.encoding=continuous do not go together"),
        ("experiment=lsa model.init=gd model.n_embd=5", "model.init=gd needs model.n_embd"),
    ],
)
@pytest.mark.unit
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_config(*override.split())


def test_cli_reports_bad_config_in_one_line_before_compiling(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "model.n_head=3", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "config error" in line]
    assert len(errors) == 1 and "model.n_embd (64) must be divisible by model.n_head (3)" in errors[0]
    assert not (tmp_path / "checkpoints").exists()


def test_help_says_what_it_does_its_groups_and_common_commands():
    result = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "is powered by Hydra" not in result.stdout
    for text in (
        "in-context linear regression",
        "model: encoder, gla, gpt2_narrow, gpt2_small",
        "experiment: decision_tree, garg",
    ):
        assert text in result.stdout
    assert result.stdout.count("python train.py") >= 6  # the usage line and five common commands


@pytest.mark.unit
def test_dataclass_defaults_mirror_the_yaml():
    """Code that builds configs directly (the benchmark, tests) gets what `python train.py` gets."""
    assert run_config() == from_values({})
    assert config_record(run_config()) == config_record(RunConfig()) | config_record(from_values({}))


@pytest.mark.unit
def test_the_seed_names_compose():
    """The original brief's `python train.py model=gpt2_small data=linear_regression training=default`."""
    cfg = run_config("model=gpt2_small", "data=linear_regression", "training=default")
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head) == (6, 128, 4)
    assert cfg.data == run_config().data and cfg.training == run_config().training


@pytest.mark.unit
def test_a_custom_top_level_config_composes_over_the_defaults():
    """`python train.py --config-name=my_custom_config`, the README's example file."""
    cfg = from_dictconfig(compose_config("training.steps=100", config_name="my_custom_config"))
    assert (cfg.model.n_layer, cfg.data.n_dims, cfg.data.noise_std, cfg.wandb.group) == (6, 8, 0.25, "my-experiment")
    assert cfg.training.steps == 100 and cfg.eval == run_config().eval  # the command line wins; the rest is default


@pytest.mark.unit
def test_epochs_over_a_finite_training_set_set_the_run_length():
    cfg = run_config("data.train_size=512", "training.batch_size=128", "training.num_epochs=2")
    assert cfg.training.steps == 8  # 2 x ceil(512 / 128), whatever steps_per_dispatch (50) is
    assert run_config("data.train_size=500", "training.batch_size=128", "training.num_epochs=3").training.steps == 12
    # the seed's `training.num_epochs=20` alone keeps the step budget and sizes the set to it
    seed = run_config("training.learning_rate=1e-3", "training.num_epochs=20")
    assert (seed.training.steps, seed.data.train_size, seed.training.learning_rate) == (12000, 600 * 64, 1e-3)
    assert run_config().data.train_size is None  # by default a fresh batch every step
