"""Train one model: `python train.py [hydra overrides]` (or `icl-lr-train`); `--help` says more.
The command lives in icl_lr/cli/train.py."""

from icl_lr.cli.train import run_cli

if __name__ == "__main__":
    run_cli()
