"""What a report of runs holds, in order, shared by report.html and the W&B report so the two keep parity:
the section titles and the headline sentence."""

import pandas as pd

BEST = "Which config is best"
ERROR_VS_K = "Error vs k per group"
LEARNING_CURVES = "Learning curves"
SIMILARITY = "Which algorithm the model matches"
PROBES = "What each layer holds (linear probes)"
ATTENTION = "Where each layer and head attends (eval.attention)"
OOD = "Garg et al.'s out-of-distribution prompts"
SIGMA = "One noise level per panel (Bai et al.)"
TASK_CLASS = "One task class per panel (a mixture of tasks)"
TASK_POOL = "Error vs task pool size"
EVALUATIONS = "Evaluations of trained models"
TRAJECTORY = "Over the trajectory of checkpoints"  # report.html only: from the run dirs' records by step
BY_STEP = "The loss and the local learning coefficient, step by step"
PHASES = "Which predictor the model is closest to, step by step (algorithm phases)"
DYNAMICS = "Essential dynamics: the predictions' path in their first principal components"
SET_SECTIONS = {"ood/": OOD, "sigma_": SIGMA, "task_": TASK_CLASS}  # prompt sets shown a panel each, by set-name prefix


def headline(summary: pd.DataFrame, keys: list[str], metric: str) -> str:
    """The best group in words, from tables.summary_table: `Best: model_size=1L/32d/2H, data.noise_std=0.5,
    eval/excess/mean 0.5858 [0.5836, 0.5880] (t, n=2); 1 other group(s) overlap its interval.`; one such
    sentence per set of groups ranked apart (excesses over different references)."""
    sentences, bests = [], list(summary.index[summary.verdict == "best"]) + [len(summary)]
    for start, end in zip(bests[:-1], bests[1:], strict=True):
        best, part = summary.loc[start], summary.loc[start : end - 1]
        group = ", ".join(f"{k}={best[k]}" for k in keys)
        others = int((part.verdict == "overlaps best").sum())
        tied = f"; {others} other group(s) overlap its interval" if others else ""
        sentences.append(f"Best: {group}, {metric} {best[metric]}{tied}.")
    return " ".join(sentences)
