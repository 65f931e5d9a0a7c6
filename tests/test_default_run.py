"""The README's main job, whole: `python train.py` with the defaults must learn in context. Slow (~8 min
on 2 cores): run with `python -m pytest -m slow`."""

import json

import numpy as np
import pytest

from helpers import train_cli


@pytest.mark.slow
def test_default_run_learns_in_context(tmp_path):
    train_cli(tmp_path, fast=False, timeout=1800)
    final = json.loads((tmp_path / "curves.jsonl").read_text().splitlines()[-1])
    assert final["step"] == 12000
    curves = {k: np.asarray(v) for k, v in final.items() if k != "step"}
    k = 10  # 2d
    assert curves["model"][k] < 0.1 * curves["model"][0]  # measured: 0.033 vs 1.047
    assert curves["model"][k] < 0.2 * curves["averaging"][k]
    np.testing.assert_allclose(curves["model"][:3], curves["bayes"][:3], atol=0.05)  # Bayes-optimal where k < d
