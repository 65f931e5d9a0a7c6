import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from helpers import FAST, ROOT, assert_trees_equal, final_state, kill_at_first_checkpoint
from icl_lr.records.checkpoint import Checkpoints
from icl_lr.records.tracking import Tracker, read_jsonl
from icl_lr.train import setup
from icl_lr.train.loop import train
from icl_lr.train.optimizer import learning_rate_schedule, make_optimizer
from icl_lr.train.step import init_state


def test_learning_rate_warmup_then_cosine(fast_config):
    cfg = fast_config(
        "training.steps=100", "training.warmup_steps=10", "training.schedule=cosine", "training.learning_rate=1.0"
    )
    lr = learning_rate_schedule(cfg.training)
    assert float(lr(0)) == 0.0 and float(lr(5)) == 0.5 and float(lr(10)) == 1.0
    assert abs(float(lr(55)) - 0.55) < 1e-6 and abs(float(lr(100)) - 0.1) < 1e-6  # halfway: 0.1 + 0.9 * 0.5


def test_learning_rate_triangle(fast_config):
    """Raventos et al.'s triangle: linear up over the warmup, linear down to 0 at the last step."""
    overrides = ["training.steps=100", "training.warmup_steps=50", "training.schedule=linear"]
    lr = learning_rate_schedule(fast_config(*overrides, "training.min_lr_ratio=0").training)
    assert [round(float(lr(s)), 6) for s in (0, 25, 50, 60, 75, 100)] == [0.0, 5e-4, 1e-3, 8e-4, 5e-4, 0.0]


def test_training_learns_in_context(fast_config, tmp_path):
    """A short run must beat predicting 0 for k >= d, i.e. use the context, not just the prior."""
    cfg = fast_config(
        "data.n_dims=3",
        "data.n_points=7",
        "model.n_layer=2",
        "model.n_embd=64",
        "training.batch_size=128",
        "training.steps=600",
        "training.steps_per_dispatch=50",
        "training.log_every=200",
        "training.eval_every=300",
        "training.checkpoint_every=600",
        "training.learning_rate=2e-3",
        "training.warmup_steps=60",
        "eval.n_prompts=512",
    )
    summary = train(cfg, tmp_path)
    curves = {k: np.asarray(v) for k, v in summary["curves"].items()}
    # k = 0: nothing to learn from, error is E[y^2]/d = 1; at k = 2d the model is far below it.
    assert abs(curves["bayes"][0] - 1) < 0.15
    assert curves["model"][6] < 0.35 * curves["model"][0]
    assert curves["model"][6] < curves["averaging"][6]  # better than the averaging estimator
    records = read_jsonl(tmp_path / "metrics.jsonl")
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses[-1] < 0.6 * losses[0]
    assert json.loads((tmp_path / "summary.json").read_text())["step"] == 600


@pytest.mark.slow  # the suite's cover: binned metrics (test_data.py), each family on each encoding (test_families.py)
@pytest.mark.parametrize("encoding", ["tokens", "binned_y"])
def test_binned_encodings_train_and_decode(fast_config, tmp_path, encoding):
    """The encodings with a y over bins, end to end: the y's cross-entropy falls and predictions decode."""
    cfg = fast_config(
        f"data.encoding={encoding}",
        "data.vocab_size=32",
        "model.n_layer=2",
        "model.n_embd=64",
        "training.batch_size=64",
        "training.steps=600",
        "training.log_every=50",
        "training.eval_every=600",
        "training.checkpoint_every=600",
        "training.learning_rate=3e-3",
        "eval.n_prompts=256",
    )
    summary = train(cfg, tmp_path)
    losses = [r["train/loss"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    # y / std(y) ~ N(0, 1) in 32 bins of width 6/32: predicting the marginal costs ~3.09 nats
    assert losses[0] > 2.95 and losses[-1] < losses[0] - 0.15  # measured: 3.05 -> 2.82
    model = np.asarray(summary["curves"]["model"])
    assert np.isfinite(model).all() and abs(model[0] - 1) < 0.2  # decoded prior mean ~0: error ~ E[y^2]/d = 1
    metrics = {"model_median", "ce/model", "ce/bayes", "ce/marginal", "coverage/50", "coverage/90"}
    assert metrics <= set(summary["curves"]) and "eval/excess/ce_k6" in summary
    assert ("bayes_on_bins" in summary["curves"]) == (encoding == "tokens")  # only tokens rounds its inputs


TOKENS_THAT_LEARN = [  # experiment=tokens's recipe
    "data.ce_weight=0.1",
    "data.mean_loss_weight=1",
    "data.token_slot_embedding=true",
    "data.token_value_embedding=true",
    "data.token_point_embedding=true",
    "data.token_short_conv=true",
]


@pytest.mark.slow
def test_tokens_learn_in_context_at_one_dimension(fast_config, tmp_path):
    """The seed's one-token-per-value format with experiment=tokens's embeddings and loss, at d = 1 (a
    point is [x, y]), learns in context within a minute; d = 3 takes experiment=tokens (slow test)."""
    cfg = fast_config(
        "data.encoding=tokens",
        "data.n_dims=1",
        "data.n_points=8",
        *TOKENS_THAT_LEARN,
        "model.n_layer=3",
        "model.n_embd=64",
        "training.batch_size=128",
        "training.steps=500",
        "training.log_every=250",
        "training.eval_every=500",
        "training.checkpoint_every=500",
        "eval.n_prompts=512",
    )
    curves = {k: np.asarray(v) for k, v in train(cfg, tmp_path)["curves"].items()}
    assert curves["model"][0] == pytest.approx(curves["bayes"][0], rel=0.05)  # k = 0: the prior's error
    assert curves["model"][2] < 0.3 * curves["model"][0]  # measured: 0.081 vs 0.944


def test_checkpoint_restores_the_saved_state(fast_config, tmp_path):
    cfg = fast_config()
    tx = make_optimizer(cfg.training)
    state = init_state(setup.build(cfg), tx, seed=3)
    state = state.replace(step=state.step + 7, params=jax.tree.map(lambda p: p + 1.5, state.params))
    checkpoints = Checkpoints(tmp_path, max_to_keep=2)
    checkpoints.save_latest(state)
    checkpoints.close()
    restored = Checkpoints(tmp_path, max_to_keep=2).restore_latest(init_state(setup.build(cfg), tx, seed=0))
    assert int(restored.step) == 7
    assert_trees_equal(restored, state)
    assert isinstance(restored.opt_state[1][0], optax.ScaleByAdamState)


class CrashAfterFirstCheckpoint(Tracker):
    """A tracker that fails once the first checkpoint is on disk, as a crashing process would."""

    def log_checkpoint(self, directory, step, aliases):
        raise RuntimeError(f"crash after the checkpoint of step {step}")


class StepRecorder(Tracker):
    def __init__(self):
        self.steps = []

    def log(self, metrics, step):
        self.steps.append(step)


def test_resumed_run_equals_uninterrupted_run(fast_config, tmp_path):
    cfg = fast_config()  # cosine schedule (the default): the resumed run must see the same learning rates
    train(cfg, tmp_path / "straight")
    with pytest.raises(RuntimeError, match="step 20"):
        train(cfg, tmp_path / "resumed", trackers=[CrashAfterFirstCheckpoint()])
    recorder = StepRecorder()
    train(cfg, tmp_path / "resumed", trackers=[recorder])
    assert recorder.steps[0] == 30  # it went on from step 20 rather than starting again
    assert_trees_equal(final_state(cfg, tmp_path / "resumed"), final_state(cfg, tmp_path / "straight"))
    records = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in records if "train/loss" in r] == [10, 20, 30, 40]  # none twice, none lost


@pytest.mark.slow  # the suite's cover: a pack SIGKILLed and SIGTERMed resumes bit for bit (test_pack.py; a run is a
# pack of one, through the same loop), a run's SIGTERM (test_records.py), an agent's SIGKILL (test_sweeps.py)
def test_sigkilled_run_resumes_to_the_same_params(fast_config, tmp_path):
    long = ["training.steps=600", "training.checkpoint_every=600", "training.eval_every=600", "training.log_every=600"]
    train(fast_config(*long), tmp_path / "straight")
    run_dir = tmp_path / "killed"
    command = [sys.executable, "train.py", *FAST, *long, f"hydra.run.dir={run_dir}"]
    saved = kill_at_first_checkpoint([*command, "training.checkpoint_every=20"], run_dir)  # cadences may change
    assert saved and saved[-1] < 600, f"the run was not killed mid-way: {saved}"
    restart = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    assert f"resumed at step {saved[-1]} of 600" in restart.stdout + restart.stderr
    cfg = fast_config(*long)
    assert_trees_equal(final_state(cfg, run_dir), final_state(cfg, tmp_path / "straight"))


def test_epochs_over_a_finite_training_set(fast_config, tmp_path):
    """2 epochs over 40 prompts at batch 16: 2 x ceil(40 / 16) = 6 steps, though a dispatch is 10."""
    cfg = fast_config("data.train_size=40", "training.num_epochs=2")
    summary = train(cfg, tmp_path)
    assert summary["step"] == 6 and json.loads((tmp_path / "summary.json").read_text())["step"] == 6
    evals = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "eval/excess/mean" in r]
    assert [r["step"] for r in evals] == [6]
    # scored on the training set too: its baselines are computed on its own prompts, so they differ
    assert evals[0]["eval/train_set/bayes/error_k1"] != evals[0]["eval/bayes/error_k1"]
    assert np.isfinite(evals[0]["eval/train_set/model/error_mean"])


def test_run_training_script_passes_its_arguments_from_any_directory(tmp_path):
    """`./scripts/run_training.sh` with the seed's config names, started from another directory."""
    command = [str(ROOT / "scripts" / "run_training.sh"), "model=gpt2_small", "data=linear_regression"]
    command += ["training=default", *FAST, "training.steps=20", "wandb.mode=disabled", "hydra.run.dir=run"]
    env = {k: v for k, v in os.environ.items()} | {"PYTHON": sys.executable}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["step"] == 20  # outputs under the caller's cwd
    assert "model.n_head" not in " ".join(FAST) and "n_head: 4" in (tmp_path / "run/.hydra/config.yaml").read_text()
