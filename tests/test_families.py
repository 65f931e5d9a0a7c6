"""The families added beside GPT-2 (icl_lr/model/looped.py, mamba.py, gla.py, hybrid.py, encoder.py, the gpt2
family's Llama options) as every family is held: killed and resumed bit for bit, data parallel equal to one device;
the looped transformer against its own definition; eval.attention (icl_lr/train/analyses/attention.py) on a model
whose attention is known."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (
    FAST,
    ROOT,
    RunFile,
    assert_trees_equal,
    data_config,
    encoding_of,
    final_state,
    held_out_curves,
    kill_at_first_checkpoint,
    model_config,
    no_key_env,
    output,
    run_config,
    start,
    train_cli,
)
from icl_lr.cli import analyze
from icl_lr.fields import ConfigError
from icl_lr.model.gpt2 import Transformer
from icl_lr.model.icl_model import ICLModel
from icl_lr.model.looped import Looped
from icl_lr.records.schema import SHARE_KINDS, loops_curve
from icl_lr.train.analyses import attention
from icl_lr.train.loop import train

FAMILIES = {
    "mamba": ["model=mamba", "model.n_layer=2", "model.n_embd=32"],
    "looped": ["model=looped", "model.n_loops=3", "model.loss_loops=2", "model.n_embd=32"],
    "llama": ["model=llama_narrow", "model.n_layer=1", "model.n_embd=32"],
    "gla": ["model=gla", "model.n_layer=1", "model.n_embd=32"],
    "mambaformer": ["model=mambaformer", "model.n_layer=1", "model.n_embd=32"],
    "encoder": ["model=encoder", "model.n_layer=1", "model.n_embd=32", "data.encoding=paired"],
}
STEPS = 200
# a family whose training amplifies float32 rounding past the tolerance within STEPS: one device is compared with
# two over fewer steps (gla: its per-head output norm, docs/model_families.md; mambaformer: its attention's key bias,
# whose gradient is rounding alone, as softmax ignores a shift common to every key, moved by Adam's normalised steps)
PARALLEL_STEPS = {"gla": 20, "mambaformer": 20}


# each family in the slow tier; the suite's cover: a gpt2 run killed and resumed bit for bit (test_train.py), a
# pack's runs (test_pack.py), and every family trained and evaluated (test_tasks.py, test_model.py)
@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_family_killed_and_resumed_ends_bit_for_bit_and_two_devices_train_like_one(family, tmp_path):
    """SIGKILL at the first checkpoint, resumed on 2 CPU devices: equal to an unkilled 2-device run; that run
    within float32 summation order of a one-device run (over PARALLEL_STEPS where the family has them)."""
    long = [*FAMILIES[family], f"training.steps={STEPS}", "training.schedule=constant", "wandb.mode=disabled"]
    long += ["training.checkpoint_every=100", "training.eval_every=100", "training.log_every=100"]
    two = no_key_env(JAX_NUM_CPU_DEVICES="2")
    train_cli(tmp_path / "straight", *long, env=two)
    run_dir = tmp_path / "killed"
    command = [sys.executable, "train.py", *FAST, *long, f"hydra.run.dir={run_dir}"]
    saved = kill_at_first_checkpoint([*command, "training.checkpoint_every=10"], run_dir, env=two)
    assert saved and saved[-1] < STEPS, f"the run was not killed mid-way: {saved}"
    resumed = subprocess.run(command, cwd=ROOT, env=two, capture_output=True, text=True, timeout=300)
    assert f"resumed at step {saved[-1]} of {STEPS}" in output(resumed) and "on 2 CPU devices" in output(resumed)
    cfg = run_config(*FAST, *long)
    assert_trees_equal(final_state(cfg, run_dir), final_state(cfg, tmp_path / "straight"))
    if family in PARALLEL_STEPS:
        long.append(f"training.steps={PARALLEL_STEPS[family]}")
        cfg, run_dir = run_config(*FAST, *long), tmp_path / "short"
        train_cli(run_dir, *long, env=two)
    train(cfg, tmp_path / "one")  # this process: one device
    for a, b in zip(*(jax.tree.leaves(final_state(cfg, d)) for d in (tmp_path / "one", run_dir)), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def looped_and_its_unit(n_loops=4, loss_loops=2):
    """A looped trunk, its parameters perturbed, and the gpt2 trunk of one unit with the same parameters."""
    cfg = model_config(family="looped", n_layer=2, n_embd=16, n_head=2, n_loops=n_loops, loss_loops=loss_loops)
    embeddings = jax.random.normal(jax.random.PRNGKey(0), (2, 10, 16))
    params = Looped(cfg).init(jax.random.PRNGKey(1), embeddings)["params"]
    leaves, tree = jax.tree.flatten(params)
    noise = [0.1 * jax.random.normal(jax.random.PRNGKey(i), p.shape) for i, p in enumerate(leaves)]
    params = jax.tree.unflatten(tree, [p + n for p, n in zip(leaves, noise, strict=True)])
    unit = Transformer(model_config(family="gpt2", n_layer=2, n_embd=16, n_head=2))
    return Looped(cfg), unit, params, embeddings


@pytest.mark.unit
def test_the_looped_trunk_is_its_unit_applied_with_input_injection():
    """z_0 = 0, z_{i+1} = unit(z_i + e), the unit GPT2Model's call (positions, blocks, final norm) as in Yang et
    al.'s code: the output is z_n, the training stack the last loss_loops z's; the parameters are one unit's."""
    looped, unit, params, embeddings = looped_and_its_unit()
    z, iterates = jnp.zeros_like(embeddings), []
    for _ in range(4):
        z = unit.apply({"params": params}, z + embeddings)
        iterates.append(z)
    np.testing.assert_allclose(looped.apply({"params": params}, embeddings), iterates[-1], atol=1e-5)
    stack = looped.apply({"params": params}, embeddings, train=True)
    np.testing.assert_allclose(stack, jnp.stack(iterates[-2:]), atol=1e-5)
    unit_params = unit.init(jax.random.PRNGKey(1), embeddings)["params"]
    assert jax.tree.structure(unit_params) == jax.tree.structure(params)  # as many as one unit, for any n_loops


@pytest.mark.unit
def test_the_loops_before_the_loss_pass_no_gradient():
    """The gradient of a loss on the last loop equals the unit's gradient at a constant z_{n-1}, and differs from
    the gradient through every loop (Yang et al.'s truncation, their no_grad loops)."""
    looped, unit, params, embeddings = looped_and_its_unit(n_loops=3, loss_loops=1)
    loss = lambda p: jnp.sum(looped.apply({"params": p}, embeddings, train=True) ** 2)
    z = jnp.zeros_like(embeddings)
    for _ in range(2):
        z = unit.apply({"params": params}, z + embeddings)
    truncated = jax.grad(lambda p: jnp.sum(unit.apply({"params": p}, z + embeddings) ** 2))(params)
    got = jax.grad(loss)(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(truncated), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    full = jax.grad(lambda p: jnp.sum(looped.apply({"params": p}, embeddings) ** 2))(params)
    assert not np.allclose(jax.tree.leaves(full)[0], jax.tree.leaves(got)[0])


def known_attention_model():
    """One layer, two heads, whose weights are known: head 0's queries and keys are 0 (uniform over the causal
    prefix); head 1's keys are large on y-tokens alone (the positions mark them; the read-in is 0) and its
    query a constant, so it spreads over the y-tokens before it, uniformly."""
    data = data_config(n_dims=3, n_points=5)
    cfg = model_config(family="gpt2", n_layer=1, n_embd=16, n_head=2, n_positions=10)
    model = ICLModel(cfg, encoding_of(data))
    inputs = model.encoding.encode(jax.random.normal(jax.random.PRNGKey(0), (7, 5, 3)), jnp.ones((7, 5)))
    params = jax.tree.map(jnp.zeros_like, model.init(jax.random.PRNGKey(1), inputs)["params"])
    block = params["transformer"]["h_0"]
    block["ln_1"]["scale"] = jnp.ones(16)
    params["transformer"]["wpe"]["embedding"] = jnp.zeros((10, 16)).at[1::2, 0].set(1.0)  # y-tokens: odd positions
    head_1 = 8  # head 1's first query, key and value coordinates: 0 * 16 + 8, 1 * 16 + 8, ...
    block["attn"]["c_attn"]["bias"] = jnp.zeros(48).at[head_1].set(50.0)
    block["attn"]["c_attn"]["kernel"] = jnp.zeros((16, 48)).at[0, 16 + head_1].set(1.0)
    return model, params, inputs


@pytest.mark.unit
def test_attention_maps_and_shares_of_a_model_whose_attention_is_known():
    model, params, inputs = known_attention_model()
    weights = attention.mean_weights(attention.make_attention_fn(model), params, inputs, chunk=3)
    t = np.arange(10)
    uniform = np.tril(np.ones((10, 10))) / (t + 1)[:, None]
    on_y = np.tril(np.ones((10, 10))) * (t % 2 == 1)[None, :]
    on_y[0, 0] = 1.0  # the first token sees itself alone
    on_y /= on_y.sum(1, keepdims=True)
    np.testing.assert_allclose(weights, np.stack([uniform, on_y])[None], atol=1e-6)
    shares = attention.shares(weights, model.encoding.inputs.tokens_per_point)
    k = np.arange(5)  # the query of y_k is x_k's token, 2k: k x-tokens and k y-tokens before it
    np.testing.assert_allclose(shares[:, 0, 0], [k / (2 * k + 1), k / (2 * k + 1)], atol=1e-6)
    np.testing.assert_allclose(shares[:, 0, 1], [0 * k, (k > 0).astype(float)], atol=1e-6)
    curves = attention.share_curves(shares)
    assert set(curves) == {f"attention_share/{kind}/layer_0/head_{h}" for kind in SHARE_KINDS for h in (0, 1)}


def test_eval_attention_and_loop_counts_reach_the_records_and_w_and_b(tmp_path):
    """A looped run with eval.attention and eval.n_loops: attention/step_<n>.npz (a map per loop, rows summing to
    1), its shares in curves.jsonl and in W&B's table, its image in W&B; the curve at the trained loop count is
    the model's; a resume drops the maps of steps past its checkpoint."""
    looped = ["model=looped", "model.n_loops=3", "model.loss_loops=2", "model.n_head=2"]
    train_cli(tmp_path, *looped, "eval.attention=true", "eval.n_loops=[3,6]", wandb=True)
    maps = np.load(tmp_path / "attention" / "step_40.npz")
    weights, shares = maps["weights"], maps["shares"]
    assert weights.shape == (3, 2, 16, 16) and shares.shape == (2, 3, 2, 8)  # loops x 1 layer, heads, 2N tokens
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.triu(weights, 1), 0.0)
    curves = held_out_curves(tmp_path)
    np.testing.assert_allclose(curves["attention_share/y/layer_2/head_1"], shares[1, 2, 1], rtol=1e-6)
    assert curves[loops_curve(3)] == curves["model"] and curves[loops_curve(6)] != curves["model"]
    run = RunFile.load(next((tmp_path / "wandb").glob("offline-run-*")))
    logged = [h for h in run.history if "eval/attention._type" in h]
    assert [h["step"] for h in logged] == [20, 40] and logged[-1]["eval/attention._type"] == "image-file"
    files = next((tmp_path / "wandb").glob("offline-run-*")) / "files"
    assert (files / logged[-1]["eval/attention.path"]).stat().st_size > 0
    table = json.loads((files / logged[-1]["eval/attention_shares.path"]).read_text())
    assert table["columns"] == ["layer", "head", "k", "x_share", "y_share"]
    y_share = {(layer, head, k): y for layer, head, k, _, y in table["data"]}
    np.testing.assert_allclose([y_share[2, 1, k] for k in range(8)], shares[1, 2, 1], rtol=1e-6)
    assert analyze.main([str(tmp_path), "--html", "--out", str(tmp_path / "an")]) == 0
    report = (tmp_path / "an" / "report.html").read_text()
    assert "Where each layer and head attends (eval.attention)" in report and report.count("query %{y}, key %{x}") == 6
    assert (tmp_path / "an" / f"attention_{run.run_id}.png").stat().st_size > 0
    (tmp_path / "attention" / "step_50.npz").write_bytes(b"")  # as a run killed past its last checkpoint leaves it
    train_cli(tmp_path, *looped, "eval.attention=true", "training.steps=60", wandb=True)
    assert sorted(p.name for p in (tmp_path / "attention").iterdir()) == ["step_20.npz", "step_40.npz", "step_60.npz"]
    assert np.load(tmp_path / "attention" / "step_60.npz")["weights"].shape == (3, 2, 16, 16)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model=lstm", "eval.attention=true"],
            "eval.attention reads the causal attention maps a family sows: model.family=lstm sows none",
        ),
        (["eval.n_loops=[2]"], "eval.n_loops scores other loop counts of a looped model: model.family=gpt2 has"),
        (["model=looped", "model.loss_loops=20"], "model.loss_loops (20) must not exceed model.n_loops (12)"),
        (["model=looped", "eval.n_loops=[0]"], "eval.n_loops must be loop counts in [1, 1,000], got [0]"),
        (
            ["model=looped", "eval.n_loops=[100000000]"],
            "eval.n_loops must be loop counts in [1, 1,000], got [100000000]",
        ),
        (["model=looped", "model.n_loops=5000"], "model.n_loops must be at most 1,000, got 5,000"),
    ],
)
def test_attention_and_loops_are_refused_in_one_line_where_they_do_not_apply(overrides, message, tmp_path):
    """The first through the command; the others where the command checks its config (run_config), in this
    process: the command's way of saying a config error is test_robustness.py's."""
    if overrides[0] != "model=lstm":
        with pytest.raises(ConfigError, match=re.escape(message)):
            run_config(*FAST, *overrides)
        return
    result = start(tmp_path, *overrides)
    assert result.returncode != 0 and message in output(result) and "Traceback" not in output(result)
    assert not Path(tmp_path / "checkpoints").exists()


ENCODINGS = ["continuous", "tokens", "binned_y", "paired"]
# A cover (each family and each sequential encoding once, and every refusal) beside the product, which is slow.
COVER = {("mamba", "continuous"), ("looped", "tokens"), ("gla", "binned_y"), ("hybrid", "tokens")}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("family", "encoding"),
    [
        (f, e) if (f, e) in COVER or e == "paired" else pytest.param(f, e, marks=pytest.mark.slow)
        for f in ("mamba", "looped", "gla", "hybrid")
        for e in ENCODINGS
    ],
)
def test_a_family_takes_every_encoding_it_can_or_refuses_in_one_line(family, encoding):
    """Every sequential encoding gives a causal model with a finite loss; the paired one (linear self-attention's
    one token per point) is refused in one line naming both."""
    from icl_lr.fields import ConfigError
    from icl_lr.run.config import check_across, from_values
    from icl_lr.task.base import Batch
    from icl_lr.train import setup
    from icl_lr.train.optimizer import make_optimizer
    from icl_lr.train.step import init_state, loss_fn

    values = {
        "data": {"n_dims": 3, "n_points": 5, "encoding": encoding},
        "model": {"family": family, "n_embd": 16, "n_layer": 1},
    }
    values["training"] = {"steps": 1, "batch_size": 4, "steps_per_dispatch": 1, "warmup_steps": 0}
    cfg = from_values(values)
    if encoding == "paired":
        with pytest.raises(ConfigError, match=f"model.family={family} and data.encoding=paired do not go together"):
            check_across(cfg)
        return
    check_across(cfg)
    run = setup.build(cfg)
    xs, ys = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 3)), jax.random.normal(jax.random.PRNGKey(1), (2, 5))
    later = run.encoding.encode(xs.at[:, 3:].set(1.0), ys.at[:, 2:].set(1.0))  # y_2 on, x_3 on
    state = init_state(run, make_optimizer(cfg.training), 0)
    predict = jax.jit(lambda inputs: run.encoding.predict(run.model.apply({"params": state.params}, inputs)))
    out, changed = (predict(i) for i in (run.encoding.encode(xs, ys), later))  # one compiled program, not op by op
    np.testing.assert_allclose(out[:, :3], changed[:, :3], atol=1e-5)  # y_k's prediction: points before k, x_k
    batch = Batch(xs, ys, jnp.ones(5), jnp.ones(2))
    assert np.isfinite(jax.jit(lambda p: loss_fn(p, run.model, batch, jax.random.PRNGKey(2)))(state.params))
