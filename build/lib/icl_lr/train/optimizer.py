"""The learning-rate schedule and AdamW with gradient clipping."""

import jax
import optax

from icl_lr.train.config import TrainingConfig


def learning_rate_schedule(cfg: TrainingConfig) -> optax.Schedule:
    """Linear warmup from 0, then constant, or cosine or linear decay to min_lr_ratio * learning_rate at
    step `cfg.horizon`, held there after it (linear with min_lr_ratio 0: Raventos et al.'s triangle, their
    icl/optim.py)."""
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
    decay_steps = max(cfg.horizon - cfg.warmup_steps, 1)
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.learning_rate)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.learning_rate, cfg.min_lr_ratio * cfg.learning_rate, decay_steps)
    else:
        after = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps, alpha=cfg.min_lr_ratio)
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def make_optimizer(cfg: TrainingConfig) -> optax.GradientTransformation:
    """AdamW after global-norm clipping; weight decay on matrices only (not biases, LayerNorms)."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(learning_rate_schedule(cfg), weight_decay=cfg.weight_decay, mask=decay_mask),
    )
