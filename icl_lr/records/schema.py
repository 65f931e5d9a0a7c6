"""The names a run's records share, in one place: the files of a run dir, the prompt sets, the metric
keys and the curve tables. Evaluation and tracking write by these names; analysis, plots and both
reports read by them.
"""

# The files of a run dir (docs/records.md).
LOCK_FILE = "run.lock"
IDENTITY_FILE = "identity.json"  # {"wandb_run_id", "path", "inode", "device"[, "copied_from"]}
LEGACY_ID_FILE = "wandb_run_id"  # the id alone, as run dirs held it before identity.json
CONFIG_FILE = "run_config.json"  # the resolved config of the latest start, beside the records it produced
LEGACY_CONFIG_FILE = "checkpoints/run_config.json"
CODE_FILE = "components.json"  # the code the run's components came from, and its changes (icl_lr/records/code.py)
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"  # one record per log or eval step: {"step", <metric key>: value, ...}
CURVES_FILE = "curves.jsonl"  # one record per set and eval: {"step", "set", <curve name>: [value per k]}
HYDRA_CONFIG = ".hydra/config.yaml"
TRAJECTORY = "trajectory"  # checkpoints/trajectory/<step>: training.trajectory's checkpoints, never rotated
# An eval dir's own files (python eval.py), beside its metrics, curves and summary
EVAL_CONFIG_FILE = "eval_config.json"  # the config it scored on, run_config.json's dotted keys
EVAL_MODEL_FILE = "model.json"  # the model it read: source, step_dir, step, sha256, trained_n_points
EVALUATED = "evaluated"  # analysis's column of the model an eval dir scored (none for a training run)

# The prompt sets a run is scored on. The held-out set's metric keys carry no set name (eval/model/...);
# the others': eval/<set>/... (train_set, pretrain, sigma_<s>, ood/<condition>).
HELD_OUT = "held_out"

# Curves are named by predictor when they hold squared error / d (model, bayes, least_squares, dmmse, ...)
# and metric/predictor otherwise (ce/model, coverage/50).
MODEL = "model"
BAYES = "bayes"  # the Bayes-optimal predictor on the eval distribution (a mixture if sigma is hierarchical)

# The headline metrics, lower is better: the model's excess over its reference (REFERENCE) and its error,
# mean over k.
EXCESS = "eval/excess/mean"
MODEL_ERROR = "eval/model/error_mean"
HEADLINE = (EXCESS, MODEL_ERROR)
REFERENCE = "excess_over"  # the summary's name of the predictor a run's excess is over (runs from before it: BAYES)
LEARNING_CURVES = (MODEL_ERROR, EXCESS)  # plotted against the training step


def metric_prefix(eval_set: str) -> str:
    """Where a set's scalars go: eval/ for the held-out prompts, eval/<set>/ for the others."""
    return "eval/" if eval_set == HELD_OUT else f"eval/{eval_set}/"


def set_reference(eval_set: str) -> str:
    """The summary's name of the predictor a set's excess is over where it is the set's own, not the run's
    (an OOD condition's): eval/<set>/excess_over."""
    return f"{metric_prefix(eval_set)}{REFERENCE}"


def curves_key(eval_set: str) -> str:
    """The W&B key of a set's curve table: eval/curves for the held-out prompts, else eval/<set>/curves;
    its line-series chart is <key>_chart (whose data W&B keeps as the table <key>_chart_table)."""
    return f"{metric_prefix(eval_set)}curves"


def set_of_curves_key(key: str) -> str | None:
    """The set whose curve table `key` is (the inverse of `curves_key`), or None for another key."""
    if not (key.startswith("eval/") and key.endswith("curves")):
        return None
    return key.removeprefix("eval/").removesuffix("curves").rstrip("/") or HELD_OUT


# eval.algorithms' curves, `<similarity>/<algorithm>`: the mean squared difference of predictions / d (the
# distance the charts show and analysis ranks by), the cosine of residuals, the cosine of query gradients
SIMILARITIES = ("similarity_mse", "similarity_residual_cos", "similarity_grad_cos")
DISTANCE = SIMILARITIES[0]

# eval.probes' curves, `probe_r2/<target>/layer_<l>`: the held-out R² of a linear probe of the state that
# predicts y_k, at layer l (0: the trunk's input), for each of the task's probe targets (w, xty, ...)
PROBE_R2 = "probe_r2"


def probe_of(name: str) -> tuple[str, int] | None:
    """(target, layer) of a probe curve's name, or None for another curve."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != PROBE_R2 or not parts[2].startswith("layer_"):
        return None
    return parts[1], int(parts[2].removeprefix("layer_"))


def probe_r2_by_layer(curves: dict) -> dict:
    """{target: [R² per layer]}, each the mean over the k where it is defined, of a set's probe curves."""
    by_target = {}
    for name, curve in curves.items():
        if (of := probe_of(name)) is not None:
            finite = [float(v) for v in curve if v == v]  # NaN where the target does not vary
            by_target.setdefault(of[0], {})[of[1]] = sum(finite) / len(finite) if finite else float("nan")
    return {target: [layers[i] for i in sorted(layers)] for target, layers in by_target.items()}


# eval.n_loops' curves: the model's squared error / d with its loop unit applied b times (a looped family)
def loops_curve(n_loops: int) -> str:
    return f"{MODEL}_{n_loops}_loops"


# eval.attention: each attention layer's and head's weights, mean over the held-out prompts, [layers, heads, T, T]
# query by key, with their shares (below), in arrays_file(ATTENTION_DIR, n); the curves
# `attention_share/<kind>/layer_<l>/head_<h>`: the share of the weights of the token that predicts y_k on the
# x-tokens (kind x) and on the y-tokens (kind y) of the points before k (the rest: point k's own tokens)
ATTENTION_DIR = "attention"
ATTENTION_SHARE = "attention_share"
SHARE_KINDS = ("x", "y")


# eval.predictions = K: in arrays_file(PREDICTIONS_DIR, n), the model's predictions [K, N] on the first K held-out
# prompts (PREDICTIONS_MODEL); in the first file a process writes, the prompts' targets and each baseline's
# predictions (PREDICTED_BY + its name), which do not change during training
PREDICTIONS_DIR = "predictions"
PREDICTIONS_MODEL = MODEL
PREDICTED_TARGETS = "targets"
PREDICTED_BY = "baseline/"


def arrays_file(analysis: str, step: int) -> str:
    """Where an analysis's arrays at `step` go in the run dir (icl_lr/train/analyses/)."""
    return f"{analysis}/step_{step}.npz"


def is_error_curve(name: str) -> bool:
    """The one naming rule charts and summaries read: an error curve's name has no '/'."""
    return "/" not in name


def set_of(record: dict) -> str:
    """The set of a curves.jsonl record (records written before sets were always named: held-out)."""
    return record.get("set", HELD_OUT)
