"""Training throughput of icl-lr's JAX model against a PyTorch reference, side by side.

    python bench/benchmark.py                      # tiny, small, standard at Garg et al.'s d=20, 41 points, batch 64
    python bench/benchmark.py --presets standard --steps 20
    python bench/benchmark.py --presets gpt2_narrow mamba mamba_associative --scaling-devices 0

For each preset: steps/s, tokens/s, model FLOP utilisation (MFU: the model's matmul FLOPs per
second over this machine's measured peak float32 matmul rate) and peak memory (XLA's buffer assignment of
one dispatch of the train step: parameters, optimizer state, batch and activations) of the whole jitted JAX train step
(sampling, forward, backward, AdamW update) on the devices train.py uses (a CPU split as
training.cpu_devices=auto splits it), its compile time, and the same for Garg et al.'s
PyTorch model (transformers.GPT2Model with a linear read-in and read-out, Adam) trained on the
same batch and sequence length. Then the cost of one evaluation: building the held-out set with
its baselines (once per run) and scoring the model on it (every eval). A benchmark, not a test.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from hydra import compose, initialize_config_dir

from icl_lr.model.config import ModelConfig
from icl_lr.model.encoding import ENCODINGS
from icl_lr.run.config import from_dictconfig
from icl_lr.train import eval_sets, evaluate, parallel, setup
from icl_lr.train.config import EvalConfig, RunConfig
from icl_lr.train.optimizer import make_optimizer
from icl_lr.train.step import init_state, make_dispatch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
VARIANTS = {  # a preset with overrides, on request only: Mamba's two scans whatever model.scan=auto picks here
    f"mamba_{scan}": ("mamba", [f"model.scan={scan}"]) for scan in ("sequential", "associative")
}
DISPATCH = 10  # steps per timed call


def garg_config(preset: str, args) -> RunConfig:
    """Garg et al.'s recipe as `python train.py experiment=garg2022 model=<preset>` builds it (a variant's
    preset with its overrides), at the benchmark's task size and batch."""
    preset, variant = VARIANTS.get(preset, (preset, []))
    overrides = [
        "experiment=garg2022",
        f"model={preset}",
        *variant,
        f"data.n_dims={args.n_dims}",
        f"data.n_points={args.n_points}",
        f"training.batch_size={args.batch_size}",
        f"training.steps_per_dispatch={DISPATCH}",
        f"eval.n_prompts={args.eval_prompts}",
        f"training.precision={args.precision}",
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return from_dictconfig(compose("config", overrides=overrides))


def peak_matmul_flops(sizes=(1024, 2048, 3072), repeats=5) -> float:
    """The best float32 matmul rate JAX reaches here: the denominator of MFU."""
    best = 0.0
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
        matmul = jax.jit(jnp.matmul)
        matmul(a, a).block_until_ready()
        started = time.perf_counter()
        for _ in range(repeats):
            matmul(a, a).block_until_ready()
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - started))
    return best


def train_flops_per_step(n_layer: int, width: int, n_dims: int, batch: int, length: int) -> float:
    """Matmul FLOPs of one step (backward = 2x forward): weights 2 per parameter per token, plus
    the attention scores and their weighted sum (2 * 2 * length * width per token and layer)."""
    weights = n_layer * 12 * width**2 + n_dims * width + width  # blocks, read-in, read-out
    per_token = 2 * weights + 4 * n_layer * length * width
    return 3 * per_token * batch * length


def is_gpt2(model_cfg: ModelConfig) -> bool:
    """Whether a preset is GPT-2 itself (the family with its default block): what the FLOP count and Garg et
    al.'s PyTorch model measure; other families and blocks get steps/s alone."""
    defaults = {"norm": "layernorm", "positions": "learned", "mlp": "gelu"}
    return model_cfg.family == "gpt2" and all(getattr(model_cfg, k) == v for k, v in defaults.items())


def time_jax(cfg: RunConfig, steps: int) -> dict:
    run = setup.build(cfg)
    tx = make_optimizer(cfg.training)
    state = init_state(run, tx, seed=0)
    dispatch = make_dispatch(run, tx, cfg, parallel.data_mesh())
    started = time.perf_counter()
    compiled = dispatch.lower(state, DISPATCH).compile()
    compile_seconds = time.perf_counter() - started
    stats = compiled.memory_analysis()  # XLA's buffer assignment of one dispatch (its steps reuse the buffers)
    peak_bytes = (  # its peak_memory_in_bytes reads a few kB on a CPU: the buffers' sizes instead
        stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    )
    state, _ = compiled(state)  # warm-up
    jax.block_until_ready(state)
    dispatches = -(-steps // DISPATCH)
    started = time.perf_counter()
    for _ in range(dispatches):
        state, metrics = compiled(state)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - started) / (dispatches * DISPATCH)
    return {"step_seconds": seconds, "compile_seconds": compile_seconds, "peak_bytes": peak_bytes, "model": run.model,
            "state": state}  # fmt: skip


def time_torch(model_cfg: ModelConfig, n_dims: int, n_points: int, batch: int, steps: int) -> float | None:
    """Seconds per step of Garg et al.'s model and loop (eager PyTorch, float32, on the GPU when there is
    one), or None without torch/transformers."""
    try:
        import torch
        from transformers import GPT2Config, GPT2Model
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n_layer, width, heads = model_cfg.n_layer, model_cfg.n_embd, model_cfg.n_head

    class Reference(torch.nn.Module):  # Garg et al.'s TransformerModel
        def __init__(self):
            super().__init__()
            config = GPT2Config(
                n_positions=2 * n_points,
                n_embd=width,
                n_layer=n_layer,
                n_head=heads,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
                use_cache=False,
            )
            self.read_in, self.backbone, self.read_out = (
                torch.nn.Linear(n_dims, width),
                GPT2Model(config),
                torch.nn.Linear(width, 1),
            )

        def forward(self, xs, ys):
            y_tokens = torch.cat([ys[..., None], torch.zeros_like(xs[..., 1:])], dim=-1)
            inputs = torch.stack([xs, y_tokens], dim=2).reshape(xs.shape[0], 2 * n_points, n_dims)
            hidden = self.backbone(inputs_embeds=self.read_in(inputs)).last_hidden_state
            return self.read_out(hidden)[:, ::2, 0]  # the prediction of y_i at x_i's position

    model = Reference().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        xs = torch.randn(batch, n_points, n_dims, device=device)
        ys = (xs @ torch.randn(batch, n_dims, 1, device=device))[..., 0]
        optimizer.zero_grad()
        loss = ((model(xs, ys) - ys) ** 2).mean()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - started) / steps


def time_eval_set(run: setup.Setup, eval_cfg: EvalConfig):
    """The held-out set with its baselines, built as a run builds it once: on the host's CPU, then placed on
    the devices (compile included)."""
    started = time.perf_counter()
    with eval_sets.on_host():
        eval_set = eval_sets.held_out_set(run.task, run.encoding, eval_cfg)
    sets = eval_sets.placed({"held_out": eval_sets.EvalSets([eval_set])}, parallel.data_mesh())
    jax.block_until_ready(sets["held_out"].sets[0].inputs)
    return sets["held_out"].sets[0], time.perf_counter() - started


def time_model_eval(model, params, eval_cfg: EvalConfig, eval_set) -> float:
    """Seconds to score the model on the held-out set, as every eval after the first does."""
    curves = evaluate.make_model_curves_fn(model, eval_cfg, parallel.data_mesh())
    jax.block_until_ready(curves(params, eval_set.inputs, eval_set.ys))
    started = time.perf_counter()
    jax.block_until_ready(curves(params, eval_set.inputs, eval_set.ys))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--presets",
        nargs="+",
        choices=PRESETS + list(VARIANTS),
        default=PRESETS,
        help=f"configs/model/ presets (default: all), or {' and '.join(VARIANTS)} (a preset with overrides)",
    )
    parser.add_argument("--n-dims", type=int, default=20)
    parser.add_argument("--n-points", type=int, default=41)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per preset and framework (default 20)")
    parser.add_argument("--eval-prompts", type=int, default=1280)
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="training.precision of JAX's step"
    )
    parser.add_argument(
        "--scaling-devices",
        type=int,
        default=2,
        metavar="N",
        help="data-parallel scaling: JAX's steps/s on N devices against 1 (a CPU split into N; default 2; 0: skip)",
    )
    parser.add_argument("--jax-only", action="store_true", help=argparse.SUPPRESS)  # a scaling subprocess's run
    args = parser.parse_args()
    configs = {preset: garg_config(preset, args) for preset in args.presets}
    first = next(iter(configs.values()))  # the presets share the task, the eval and the batch
    parallel.use_cpu_devices(first)  # as train.py splits a CPU, before JAX starts
    if args.jax_only:
        for preset in args.presets:
            print(json.dumps({"preset": preset, "step_seconds": time_jax(configs[preset], args.steps)["step_seconds"]}))
        return

    data_cfg, eval_cfg = first.data, first.eval
    length = ENCODINGS.resolve(data_cfg.encoding).sequence_length_of(data_cfg)
    device = jax.devices()[0]
    peak = peak_matmul_flops()
    devices = f"{jax.device_count()} {device.platform.upper()} device" + "s" * (jax.device_count() > 1)
    print(f"JAX {jax.__version__} on {devices} ({device.device_kind}), {os.cpu_count()} CPU cores")
    print(f"measured peak float32 matmul: {peak / 1e9:.1f} GFLOP/s")
    print(f"task: d={args.n_dims}, {args.n_points} points ({length} tokens), batch {args.batch_size}, ", end="")
    print(f"{args.steps} timed steps; Garg et al.'s optimiser (experiment=garg2022)\n")
    header = f"{'preset':<17}{'params':>10} | {'JAX steps/s':>11}{'tokens/s':>10}{'MFU':>7}{'compile s':>10}"
    header += f"{'peak MB':>9} | "
    header += f"{'torch steps/s':>13}{'tokens/s':>10}{'MFU':>7} | {'JAX/torch time':>14}"
    print(header)
    print("-" * len(header))
    eval_set, build_seconds = time_eval_set(setup.build(first), eval_cfg)
    evals = []
    by_size = sorted(configs.items(), key=lambda item: item[1].model.n_layer * item[1].model.n_embd ** 2)
    for preset, cfg in by_size:  # small to large
        model_cfg = cfg.model
        gpt2 = is_gpt2(model_cfg)  # the FLOP count and the PyTorch reference are GPT-2's
        flops = train_flops_per_step(model_cfg.n_layer, model_cfg.n_embd, args.n_dims, args.batch_size, length)
        jax_run = time_jax(cfg, args.steps)
        torch_seconds = time_torch(model_cfg, args.n_dims, args.n_points, args.batch_size, args.steps) if gpt2 else None
        n_params = sum(p.size for p in jax.tree.leaves(jax_run["state"].params))
        seconds = jax_run["step_seconds"]
        tokens = args.batch_size * length
        mfu = f"{flops / seconds / peak:>7.1%}" if gpt2 else f"{'-':>7}"
        row = f"{preset:<17}{n_params:>10,} | {1 / seconds:>11.2f}{tokens / seconds:>10,.0f}{mfu}"
        row += f"{jax_run['compile_seconds']:>10.1f}{jax_run['peak_bytes'] / 1e6:>9.1f} | "
        if torch_seconds is None:
            row += f"{'(no torch reference)' if not gpt2 else '(no torch)':>30} | {'':>14}"
        else:
            row += f"{1 / torch_seconds:>13.2f}{tokens / torch_seconds:>10,.0f}{flops / torch_seconds / peak:>7.1%} | "
            row += f"{seconds / torch_seconds:>14.2f}"
        print(row, flush=True)
        evals.append((preset, time_model_eval(jax_run["model"], jax_run["state"].params, eval_cfg, eval_set)))
    print(f"\neval on {args.eval_prompts} held-out prompts: the set and its 4 baselines, once per run on the ", end="")
    print(f"host's CPU (compile included): {build_seconds:.2f} s")
    for preset, seconds in evals:
        print(f"  {preset:<17} model error curve, every eval: {seconds:.2f} s")
    print_scaling(args)


def steps_per_second_on(n_devices: int, args) -> dict:
    """{preset: JAX steps/s} from a fresh process that sees `n_devices` devices (a CPU split into as many)."""
    env = dict(os.environ)
    if jax.devices()[0].platform == "cpu":
        env["JAX_NUM_CPU_DEVICES"] = str(n_devices)  # training.cpu_devices=auto takes it
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(n_devices)))
    command = [sys.executable, __file__, "--jax-only", "--presets", *args.presets, "--steps", str(args.steps)]
    command += ["--n-dims", str(args.n_dims), "--n-points", str(args.n_points), "--batch-size", str(args.batch_size)]
    command += ["--precision", args.precision]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return {r["preset"]: 1 / r["step_seconds"] for r in map(json.loads, output.splitlines())}


def print_scaling(args) -> None:
    """Data parallel: steps/s of the same global batch on N devices against 1 (goal: >= 0.8 N)."""
    n = args.scaling_devices
    if n == 0:
        return
    if jax.devices()[0].platform != "cpu" and jax.device_count() < n:
        print(f"\ndata-parallel scaling: needs {n} devices, this machine has {jax.device_count()}")
        return
    one, many = steps_per_second_on(1, args), steps_per_second_on(n, args)
    kind = "CPU devices sharing this machine's cores" if jax.devices()[0].platform == "cpu" else "GPUs"
    print(f"\ndata-parallel scaling, global batch {args.batch_size} split over {n} {kind}:")
    for preset in args.presets:
        ratio = many[preset] / one[preset]
        print(f"  {preset:<17} 1 device {one[preset]:8.2f} steps/s | {n} devices {many[preset]:8.2f} steps/s", end="")
        print(f" | {ratio:.2f}x (goal >= {0.8 * n:.1f}x)")


if __name__ == "__main__":
    main()
