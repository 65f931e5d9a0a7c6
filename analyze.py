"""Aggregate runs into tables, plots and reports: `python analyze.py` (or `icl-lr-analyze`); `--help` says
more. The command lives in icl_lr/cli/analyze.py."""

from icl_lr.cli.analyze import run_cli

if __name__ == "__main__":
    run_cli()
