"""Score a trained model on any prompts: `python eval.py SOURCE [key=value ...]` (or `icl-lr-eval`);
`--help` says more. The command lives in icl_lr/cli/evaluate.py."""

from icl_lr.cli.evaluate import run_cli

if __name__ == "__main__":
    run_cli()
