"""`python -m icl_lr.run.sweep`: the command is icl_lr/cli/sweep.py."""

import sys

from icl_lr.cli import sweep

if __name__ == "__main__":
    sys.argv[0] = sweep.__file__  # as `python -m` sets it for the module it runs: the usage line says sweep.py
    sweep.run_cli()
