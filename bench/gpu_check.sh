#!/usr/bin/env bash
# The whole GPU check in one short run, for a machine with a CUDA GPU and JAX's CUDA build:
#   bench/gpu_check.sh [OUT_DIR]
# 1. install what the machine lacks: from wheels in .whl/ when it has no network (hydra-core, omegaconf,
#    antlr4; a device image already holding JAX, flax, optax, orbax, torch), else `pip install -e .[test]`
#    and the [cuda] extra at constraints.txt's versions;
# 2. the tests that make sense on a GPU (model vs Hugging Face GPT-2, baselines vs closed forms, data, config),
#    at full float32 matmul precision so the CPU tolerances hold;
# 3. the benchmark against the PyTorch reference on the same GPU, float32 and bf16 (training.precision); Mamba's
#    two scans side by side (model.scan=auto takes the associative one on a GPU: this says whether it should);
# 4. packed runs against runs one at a time (bench/pack.py: K = 1, 4, 16 on gpt2_tiny and gpt2_narrow, an 8-run
#    sweep --pack 8 against one run at a time);
# 5. the default run (`python train.py`, W&B disabled), timed, with its final eval.
# QUICK=1 shrinks steps 3 and 4 to a smoke test (for a CPU dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/gpu_check}}"
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1

echo "== install"
if [[ -d .whl ]] && ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    python3 -m pip install -q -c constraints.txt -e ".[test,cuda]" || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, jax.devices(), '| flax', flax.__version__, '| optax', optax.__version__)"

echo "== tests"
no_wandb=()  # the device image has no wandb: leave out the tests that write W&B's files
python3 -c "import wandb" 2> /dev/null || no_wandb=(-k "not logs_every_set and not reads_every_set and not wandb_report")
JAX_DEFAULT_MATMUL_PRECISION=highest python3 -m pytest -q -p no:cacheprovider "${no_wandb[@]}" \
    tests/test_model.py tests/test_baselines.py tests/test_data.py tests/test_config.py tests/test_ood.py \
    "tests/test_parallel.py::test_bf16_computes_in_bfloat16_and_stays_near_float32"

for precision in fp32 bf16; do
    echo "== benchmark ($precision)"
    if [[ "${QUICK:-0}" == 1 ]]; then
        python3 bench/benchmark.py --presets gpt2_tiny --steps 5 --eval-prompts 256 --precision $precision
    else
        python3 bench/benchmark.py --steps 50 --precision $precision
    fi
done

echo "== mamba's scans"
scan_steps=$([[ "${QUICK:-0}" == 1 ]] && echo "--steps 5 --eval-prompts 256" || echo "--steps 50")
python3 bench/benchmark.py --presets mamba_sequential mamba_associative $scan_steps --scaling-devices 0

echo "== packed runs"
if [[ "${QUICK:-0}" == 1 ]]; then
    python3 bench/pack.py --presets gpt2_tiny --packs 1 4 --calls 2 --sweep-steps 200
else
    python3 bench/pack.py
fi

echo "== default run"
steps=$([[ "${QUICK:-0}" == 1 ]] && echo "training.steps=200 training.eval_every=100 training.checkpoint_every=100 training.log_every=100" || echo "")
started=$(date +%s)
run_dir="$(mktemp -d)/default_run"  # outside OUT_DIR: a run dir holds many files, OUT_DIR keeps the few worth reading
python3 train.py wandb.mode=disabled $steps hydra.run.dir="$run_dir" 2>&1 | grep -E "starting|compiled|step [0-9]+000/|eval at|done"
echo "default run wall time: $(( $(date +%s) - started )) s"
cp "$run_dir/summary.json" "$out/default_run_summary.json"
