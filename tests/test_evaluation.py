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

from helpers import ROOT, RunFile, data_config, held_out_curves, no_key_env, train_cli
from icl_lr.cli import evaluate
from icl_lr.fields import ConfigError
from icl_lr.model import garg
from icl_lr.run.evaluation import eval_config, find_model
from icl_lr.task import tabular
from icl_lr.task.registry import task_of
from icl_lr.train.config import EvalConfig
from icl_lr.train.eval_sets import set_key
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


def garg_config(sizes: dict, task: str = "linear_regression", task_kwargs=None, points: int = 7) -> dict:
    """Their run's config.yaml (src/train.py dumps its parsed src/conf/*.yaml): a context of `points` below
    the model's n_positions, as their curriculum's points end (41) is below their n_positions (101)."""
    curriculum = {"start": 3, "end": points, "inc": 2, "interval": 2000}
    training = {"task": task, "task_kwargs": task_kwargs or {}, "data": "gaussian", "num_tasks": None}
    dims = {"start": 2, "end": sizes["n_dims"], "inc": 1, "interval": 2000}
    return {"model": sizes, "training": training | {"curriculum": {"dims": dims, "points": curriculum}}}


def save_garg_run(folder: Path, model, torch, sizes: dict, **config) -> Path:
    """Their run folder: state.pt (model_state_dict, train_step, optimizer_state_dict) and config.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.Adam(model.parameters())
    saved = {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(), "train_step": 500}
    torch.save(saved, folder / "state.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(garg_config(sizes, **config)))
    return folder


@pytest.mark.unit
@pytest.mark.slow  # the suite's cover: their folder scored through the command below, against torch's forward
def test_garg_et_al_checkpoints_predict_as_in_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    reference = garg_model(torch, transformers, GARG)
    folder = save_garg_run(tmp_path / "garg", reference, torch, GARG)
    model = find_model(str(folder), from_garg=True)
    cfg = eval_config(model.record, ["wandb.mode=disabled"])
    assert (cfg.model.n_positions, cfg.data.n_points, model.step) == (18, 7, 500)  # 7: the curriculum's end
    setup = build(cfg)
    xs = jax.random.normal(jax.random.PRNGKey(0), (4, 7, 3))
    ys = jax.random.normal(jax.random.PRNGKey(1), (4, 7))
    ours = setup.encoding.predict(setup.model.apply({"params": model.params}, setup.encoding.encode(xs, ys)))
    with torch.no_grad():
        theirs = reference(torch.tensor(np.asarray(xs)), torch.tensor(np.asarray(ys))).numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5, rtol=1e-5)

    state = reference.state_dict()
    torch.save(state | {"_read_out.bias": torch.tensor([7.0])}, folder / "model_200.pt")  # a kept step
    kept = find_model(str(folder / "model_200.pt"), from_garg=True)
    assert kept.step == 200 and kept.params["read_out"]["bias"].tolist() == [7.0] and kept.record == model.record
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
        torch.save({"model_state_dict": bad, "train_step": 500}, folder / "state.pt")
        with pytest.raises(ConfigError) as error:
            find_model(str(folder), from_garg=True)
        assert str(error.value) == f"{folder / 'state.pt'}: {messages[name]}"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("task", "kwargs", "expected"),
    [
        ("linear_regression", {}, {"data.task": "linear_regression", "data.prior_scale": 1.0}),
        ("sparse_linear_regression", {}, {"data.task": "sparse_linear", "data.sparsity": 3}),  # their default
        ("sparse_linear_regression", {"sparsity": 2, "scale": 2}, {"data.sparsity": 2, "data.prior_scale": 2}),
        ("noisy_linear_regression", {"noise_std": 0.5}, {"data.task": "linear_regression", "data.noise_std": 0.5}),
        ("linear_classification", {}, {"data.task": "linear_classification"}),
        ("quadratic_regression", {}, {"data.task": "quadratic"}),
        ("relu_2nn_regression", {"hidden_layer_size": 100}, {"data.task": "relu_2nn", "data.hidden_width": 100}),
        ("decision_tree", {"depth": 4}, {"data.task": "decision_tree", "data.tree_depth": 4}),
    ],
)
def test_garg_configs_task_and_context_map_onto_icl_lr(task, kwargs, expected):
    """Their training.task and task_kwargs (src/tasks.py's defaults where absent) as icl-lr's data keys;
    the trained context is the curriculum's points end, not model.n_positions; the config builds."""
    record = garg.run_record(garg_config(GARG, task, kwargs, points=5))
    assert record.items() >= (expected | {"data.n_points": 5, "data.n_dims": 3, "model.n_positions": 18}).items()
    eval_config(record, ["wandb.mode=disabled"])


@pytest.mark.unit
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "lstm_task"}, "training.task=lstm_task has no icl-lr task (known: linear_regression, "),
        ({"task_kwargs": {"valid_coords": 2}}, "training.task_kwargs valid_coords of linear_regression: icl-lr's "),
        (
            {"task": "noisy_linear_regression", "task_kwargs": {"renormalize_ys": True}},
            "training.task_kwargs renormalize_ys=True of noisy_linear_regression: icl-lr's linear_regression has no",
        ),
        ({"task": "relu_2nn_regression", "task_kwargs": {"scale": 2}}, "training.task_kwargs scale=2 of relu_2nn"),
        ({"data": "skewed"}, "training.data=skewed: icl-lr's x's are gaussian"),
        (
            {"curriculum": {"dims": {"end": 2}, "points": {"end": 7}}},
            "training.curriculum.dims.end=2 but model.n_dims=3: icl-lr's prompts fill",
        ),
        ({"curriculum": {"dims": {"end": 3}, "points": {"end": 10}}}, "training.curriculum.points.end=10 is outside"),
        ({"curriculum": {"dims": {"end": 3}}}, "lacks training.curriculum.points.end"),
    ],
)
def test_what_a_garg_config_cannot_give_is_refused_in_one_line(change, message):
    config = garg_config(GARG)
    config["training"] |= change
    with pytest.raises(ConfigError) as error:
        garg.run_record(config)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_garg_folder_is_scored_through_the_command(tmp_path):
    """`python eval.py --from-garg FOLDER` on their sparse_linear_regression run (sparsity 3, trained to 7
    points of n_positions 9): the eval's model curve on a prompts file is their PyTorch model's squared error
    / d on it; the eval's task, sparsity and trained context are their config's."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    sizes = GARG | {"n_dims": 5}
    reference = garg_model(torch, transformers, sizes)
    folder = save_garg_run(tmp_path / "garg", reference, torch, sizes, task="sparse_linear_regression",
                           task_kwargs={"sparsity": 3})  # fmt: skip
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=(16, 7, 5)).astype(np.float32), rng.normal(size=(16, 7)).astype(np.float32)
    np.savez(tmp_path / "mine.npz", xs=xs, ys=ys)
    out = tmp_path / "eval"
    result = eval_cli("--from-garg", str(folder), f"eval.prompts={tmp_path / 'mine.npz'}", "eval.n_prompts=32",
                      "eval.ood=false", "wandb.mode=disabled", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        preds = reference(torch.tensor(xs), torch.tensor(ys)).numpy().astype(np.float64)
    (scored,) = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines() if '"prompts"' in line]
    np.testing.assert_allclose(scored["model"], ((preds - ys) ** 2).mean(axis=0) / 5, rtol=1e-5, atol=1e-6)
    used = json.loads((out / "eval_config.json").read_text())
    assert (used["data.task"], used["data.sparsity"], used["data.n_points"]) == ("sparse_linear", 3, 7)
    assert json.loads((out / "model.json").read_text())["trained_n_points"] == 7
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trained_n_points"] == 7 and summary["step"] == 500


def test_a_malformed_garg_folder_is_refused_in_one_line_naming_the_file(tmp_path, caplog):
    """Exit code 2, one `config error:` line naming the file, no traceback: the first folder through the command,
    the others through its entry point in this process (icl_lr.cli.evaluate.main: the same argv, no process)."""
    torch = pytest.importorskip("torch")
    good = garg_config(GARG)
    cases = {
        "no_state": ({"config.yaml": yaml.safe_dump(good)}, "{folder}/state.pt: no such file"),
        "no_config": ({"state.pt": {"model_state_dict": {}, "train_step": 1}}, "{folder}/config.yaml: no such file"),
        "not_yaml": ({"config.yaml": "model: [1, 2\n", "state.pt": {}}, "{folder}/config.yaml: not YAML ("),
        "no_curriculum": (
            {
                "config.yaml": yaml.safe_dump(good | {"training": {"task": "linear_regression", "task_kwargs": {}}}),
                "state.pt": {},
            },
            "{folder}/config.yaml: lacks training.curriculum.dims.end",
        ),
        "not_torch": ({"config.yaml": yaml.safe_dump(good), "state.pt": "not a zip"}, "{folder}/state.pt: not a Py"),
        "no_step": (
            {"config.yaml": yaml.safe_dump(good), "state.pt": {"model_state_dict": {}}},
            "{folder}/state.pt: lacks train_step",
        ),
    }
    for name, (files, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        for file, content in files.items():
            if isinstance(content, str):
                (folder / file).write_text(content)
            else:
                torch.save(content, folder / file)
        argv = ["--from-garg", str(folder), "--out", str(tmp_path / "eval")]
        if name == "no_state":
            result = eval_cli(*argv)
            code, output = result.returncode, (result.stdout + result.stderr).splitlines()
        else:
            caplog.clear()
            code, output = evaluate.main(argv), [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        errors = [line for line in output if "config error:" in line]
        assert code == 2 and len(errors) == 1 and not any("Traceback" in line for line in output), (name, output)
        assert errors[0].split("config error: ", 1)[1].startswith(message.format(folder=folder)), (name, errors)


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


def test_a_linear_regression_run_is_scored_on_a_real_table(trained, tmp_path):
    """`python eval.py RUN data.task=tabular data.table=breast_cancer`: the model trained on synthetic prompts scored
    on the table's rows, beside ridge (the reference), XGBoost and the others, with accuracy of the label's sign."""
    out = tmp_path / "eval"
    result = eval_cli(str(trained), "data.task=tabular", "data.table=breast_cancer", "eval.n_prompts=16",
                      "eval.ood=false", "wandb.mode=disabled", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["excess_over"] == "ridge" and np.isfinite(summary["eval/excess/mean"])
    (curves,) = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    assert {"model", "ridge", "xgboost", "3nn", "least_squares", "accuracy/model", "accuracy/ridge"} <= set(curves)
    scored = json.loads((out / "eval_config.json").read_text())
    assert (scored["data.task"], scored["data.table"], scored["data.n_dims"]) == ("tabular", "breast_cancer", 3)
    task = task_of(data_config(task="tabular", table="breast_cancer", n_dims=3, n_points=8))  # its prompts, again
    batch = task.sample_batch(set_key(EvalConfig(n_prompts=16), 0), 16)
    xs, ys = np.asarray(batch.xs, np.float64), np.asarray(batch.ys, np.float64)
    features = tabular.table("breast_cancer").features  # each point a row of the table, through some of its columns
    assert all((features[:, :, None] == x[None, None]).any(axis=1).all(axis=1).any() for x in batch.xs.reshape(-1, 3))
    assert len(np.unique(ys)) == 2  # the label's two standardised values
    lam, eye = tabular.ridge_lambda(task), np.eye(3)
    preds = [[x[k] @ np.linalg.solve(x[:k].T @ x[:k] + lam * eye, x[:k].T @ y[:k]) for k in range(8)] for x, y in
             zip(xs, ys, strict=True)]  # fmt: skip
    np.testing.assert_allclose(curves["ridge"], ((np.array(preds) - ys) ** 2).mean(axis=0) / 3, rtol=1e-4, atol=1e-6)
    assert len(curves["model"]) == 8 and np.isfinite(curves["model"]).all()


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


def test_a_run_scored_with_no_overrides_reproduces_its_own_last_held_out_curves(trained, tmp_path):
    """The eval command on the run's last checkpoint, on the run's own config: the same prompts (eval.seed), the
    same model, so the same held-out curves of the model and every baseline as the run's last eval logged."""
    out = tmp_path / "eval"
    result = eval_cli(str(trained / "checkpoints" / "latest" / "20"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    own = held_out_curves(trained)
    scored = held_out_curves(out)
    assert own["step"] == scored["step"] == 20 and set(own) == set(scored)
    for name in set(own) - {"step", "set"}:
        np.testing.assert_allclose(scored[name], own[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_a_linear_regression_model_is_scored_on_heavy_tailed_xs_and_laplace_noise_as_typed(trained, tmp_path):
    """eval.py's main in the test's process, as the command parses it: the records say which x's and noise the
    model was scored on and name the reference for what it is (the posterior mean by importance sampling)."""
    from icl_lr.cli import evaluate

    out = tmp_path / "eval"
    conditions = ["data.x_dist=student_t", "data.noise_dist=laplace", "data.noise_std=0.5", "eval.n_prompts=64"]
    assert evaluate.main([str(trained), *conditions, "eval.ood=false", "wandb.mode=disabled", "--out", str(out)]) == 0
    scored = json.loads((out / "eval_config.json").read_text())
    assert (scored["data.x_dist"], scored["data.noise_dist"]) == ("student_t", "laplace")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["excess_over"] == "posterior_mean_mc" and np.isfinite(summary["eval/excess/mean"])
    curves = held_out_curves(out)
    assert {"posterior_mean_mc", "lmmse_ridge"} <= set(curves) and "bayes" not in curves
