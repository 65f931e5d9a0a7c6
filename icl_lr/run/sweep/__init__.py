"""The local sweep runner and `wandb agent`'s emulation (`python -m icl_lr.run.sweep`, icl_lr/cli/sweep.py):
spec.py (the sweep YAML, the agent's command and environment), devices.py (a worker's GPU or CPU cores),
process.py (a started run's process and exit code), progress.py (the console), results.py (results.jsonl),
runner.py (the local runner and its packs), agent.py (`--agent`: runs claimed under the sweep folder's lock)."""
