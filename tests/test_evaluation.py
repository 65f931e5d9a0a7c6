"""icl_lr/run/evaluation.py and icl_lr/cli/evaluate.py (`python eval.py`): a trained model scored on other
prompts into an eval dir of its own, what does not fit it refused in one line, and Garg et al.'s released
models (their TransformerModel, rebuilt here from transformers' GPT2Model) read onto the gpt2 family."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import ROOT, RunFile, no_key_env, train_cli
from icl_lr.fields import ConfigError
from icl_lr.run.evaluation import eval_config, find_model
from icl_lr.train.setup import build

GARG = {"family": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_dims": 3, "n_positions": 9}


def garg_model(torch, transformers, sizes: dict):
    """Garg et al.'s TransformerModel (dtsip/in-context-learning src/models.py): read-in, GPT2Model, read-out."""

    class TransformerModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            config = transformers.GPT2Config(
                n_positions=2 * sizes["n_positions"], n_embd=sizes["n_embd"], n_layer=sizes["n_layer"],
                n_head=sizes["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
            )  # fmt: skip
            self._read_in = torch.nn.Linear(sizes["n_dims"], sizes["n_embd"])
            self._backbone = transformers.GPT2Model(config)
            self._read_out = torch.nn.Linear(sizes["n_embd"], 1)

        def forward(self, xs, ys):
            b, n, d = xs.shape
            ys_wide = torch.cat((ys.view(b, n, 1), torch.zeros(b, n, d - 1)), axis=2)
            zs = torch.stack((xs, ys_wide), dim=2).view(b, 2 * n, d)
            output = self._backbone(inputs_embeds=self._read_in(zs)).last_hidden_state
            return self._read_out(output)[:, ::2, 0]  # predict only on xs

    torch.manual_seed(0)
    model = TransformerModel().eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a mis-mapped parameter cannot hide
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def save_garg_run(folder: Path, model, torch, sizes: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": model.state_dict(), "train_step": 500}, folder / "state.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": sizes, "training": {"task": "linear_regression"}}))
    return folder


@pytest.mark.unit
def test_garg_et_al_checkpoints_predict_as_in_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    reference = garg_model(torch, transformers, GARG)
    folder = save_garg_run(tmp_path / "garg", reference, torch, GARG)
    model = find_model(str(folder), from_garg=True)
    cfg = eval_config(model.record, ["wandb.mode=disabled"])
    assert (cfg.model.n_positions, cfg.data.n_points, model.step) == (18, 9, 500)
    setup = build(cfg)
    xs = jax.random.normal(jax.random.PRNGKey(0), (4, 9, 3))
    ys = jax.random.normal(jax.random.PRNGKey(1), (4, 9))
    ours = setup.encoding.predict(setup.model.apply({"params": model.params}, setup.encoding.encode(xs, ys)))
    with torch.no_grad():
        theirs = reference(torch.tensor(np.asarray(xs)), torch.tensor(np.asarray(ys))).numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5, rtol=1e-5)

    state = reference.state_dict()
    broken = {
        "lacks": {k: v for k, v in state.items() if k != "_backbone.h.1.ln_2.bias"},
        "shape": state | {"_read_out.weight": torch.zeros(2, GARG["n_embd"])},
        "extra": state | {"_backbone.h.2.ln_1.weight": torch.zeros(GARG["n_embd"])},
    }
    messages = {
        "lacks": "Garg et al.'s state dict lacks _backbone.h.1.ln_2.bias",
        "shape": "_read_out.weight has shape (2, 32), expected (1, 32)",
        "extra": "Garg et al.'s state dict has keys icl-lr's gpt2 has no place for: _backbone.h.2.ln_1.weight",
    }
    for name, bad in broken.items():
        torch.save({"model_state_dict": bad}, folder / "state.pt")
        with pytest.raises(ConfigError) as error:
            find_model(str(folder), from_garg=True)
        assert str(error.value) == messages[name]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """tests/helpers.FAST's run: d = 3, 8 points, one layer of width 32."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train_cli(run_dir, "training.steps=20", "wandb.mode=disabled")
    return run_dir


def files_of(run_dir: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def eval_cli(*argv, cwd=ROOT):
    command = [sys.executable, str(ROOT / "eval.py"), *argv]
    return subprocess.run(command, cwd=cwd, env=no_key_env(), capture_output=True, text=True, timeout=600)


def test_a_run_is_scored_on_other_prompts_into_a_dir_of_its_own(trained, tmp_path):
    """Sparse, skewed prompts of 12 points (trained on 8), its best checkpoint; the run dir untouched; a W&B
    offline run of job_type eval naming the model by path, step and content hash."""
    before = files_of(trained)
    out = tmp_path / "eval"
    conditions = ["data.task=sparse_linear", "data.x_cov=skewed", "data.n_points=12", "eval.n_prompts=64"]
    result = eval_cli(str(trained), *conditions, "eval.ood=false", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert files_of(trained) == before and (out / "error_vs_context.png").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 20 and summary["trained_n_points"] == 8 and summary["excess_over"] == "bayes"
    curves = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    assert len(curves[0]["model"]) == 12 and "lasso" in curves[0]
    used = json.loads((out / "model.json").read_text())
    assert used["step_dir"].endswith("checkpoints/best/20") and len(used["sha256"]) == 64
    scored = json.loads((out / "eval_config.json").read_text())
    assert (scored["data.task"], scored["data.x_cov"], scored["model.n_embd"]) == ("sparse_linear", "skewed", 32)
    (offline,) = (out / "wandb").glob("offline-run-*")
    run = RunFile.load(offline)
    assert run.job_type == "eval" and run.config_value("evaluated_sha256") == used["sha256"]
    assert run.summary["eval/excess/mean"] == pytest.approx(summary["eval/excess/mean"])

    from icl_lr.cli import analyze  # the eval dir beside its training run: grouped by model, then condition

    assert analyze.main([str(trained), str(out), "--out", str(tmp_path / "analysis"), "--html"]) == 0
    runs = pd.read_csv(tmp_path / "analysis" / "runs.csv")
    scored = runs[runs.evaluated.notna()]
    assert list(scored.evaluated) == [f"{trained} (step 20)"] and list(scored["data.task"]) == ["sparse_linear"]
    assert runs.evaluated.isna().sum() == 1  # the training run itself
    page = (tmp_path / "analysis" / "report.html").read_text()
    assert "<h2>Evaluations of trained models</h2>" in page and page.count("data:image/png;base64,") >= 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.n_dims=4", "data.n_dims=4 does not fit the model: it was trained with data.n_dims=3"),
        ("model.n_layer=2", "model.n_layer=2 does not fit the model: it was trained with model.n_layer=1"),
        ("data.n_points=200", "model.n_positions (256) is too small: data.n_dims=3 and data.n_points=200"),
        ("data.sparsity=9", "data.sparsity is a key of data.task=sparse_linear, not of data.task=linear_regression"),
    ],
)
def test_what_does_not_fit_the_model_is_refused_in_one_line(trained, override, message):
    from icl_lr.records.run_dir import read_config_record

    with pytest.raises(ConfigError) as error:
        eval_config(read_config_record(trained), [override])
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_missing_source_is_one_line(tmp_path):
    result = eval_cli(str(tmp_path / "nowhere"), "--out", str(tmp_path / "eval"))
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "[ERROR]" in line]
    assert result.returncode == 2 and len(errors) == 1 and "no such run dir or checkpoint step dir" in errors[0]


def test_prompts_from_a_file_are_scored_beside_the_baselines(trained, tmp_path):
    """eval.prompts: the set `prompts`, its least squares equal to numpy's float64 pseudo-inverse on single
    prompts; a file of another d is refused in one line naming both."""
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(16, 8, 3))
    ys = np.einsum("bnd,bd->bn", xs, rng.normal(size=(16, 3))) + 0.1 * rng.normal(size=(16, 8))
    np.savez(tmp_path / "mine.npz", xs=xs.astype(np.float32), ys=ys.astype(np.float32))
    out = tmp_path / "eval"
    result = eval_cli(str(trained), f"eval.prompts={tmp_path / 'mine.npz'}", "eval.ood=false", "wandb.mode=disabled",
                      "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (scored,) = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines() if '"prompts"' in line]
    x32, y32 = xs.astype(np.float32).astype(np.float64), ys.astype(np.float32).astype(np.float64)
    preds = np.array(
        [[x[k] @ np.linalg.pinv(x[:k]) @ y[:k] if k else 0.0 for k in range(8)] for x, y in zip(x32, y32, strict=True)]
    )
    np.testing.assert_allclose(scored["least_squares"], ((preds - y32) ** 2).mean(axis=0) / 3, rtol=2e-3, atol=1e-5)
    assert len(scored["model"]) == 8 and "eval/prompts/excess/mean" in json.loads((out / "summary.json").read_text())

    np.savez(tmp_path / "wide.npz", xs=np.zeros((4, 8, 5), np.float32), ys=np.zeros((4, 8), np.float32))
    from icl_lr.records.run_dir import read_config_record

    with pytest.raises(ConfigError, match=r"xs \(4, 8, 5\) and ys \(4, 8\) must be \[B, N, D\] and \[B, N\] with D ="):
        eval_config(read_config_record(trained), [f"eval.prompts={tmp_path / 'wide.npz'}"])
