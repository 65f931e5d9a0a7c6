#!/usr/bin/env bash
# Train one model: `./scripts/run_training.sh [hydra overrides]`, from any directory.
# Runs the repository's train.py with the arguments passed through, with the repository's .venv when
# there is one (else python3 on PATH, or $PYTHON). Outputs go under the current directory's outputs/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
if [[ -z "${PYTHON:-}" && -x "$root/.venv/bin/python" ]]; then
    python="$root/.venv/bin/python"
fi
exec "$python" "$root/train.py" "$@"
