"""The run's components, built once from its config and passed down: the task (icl_lr/task/registry.py),
the encoding of its prompts and the model (icl_lr/model/), so nothing below rebuilds them from a config."""

from typing import NamedTuple

import jax.numpy as jnp

from icl_lr.model.encoding import ENCODINGS, Encoding
from icl_lr.model.icl_model import ICLModel
from icl_lr.task.base import Task
from icl_lr.task.registry import task_of
from icl_lr.train.config import RunConfig

COMPUTE_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}  # training.precision -> the blocks' compute type


class Setup(NamedTuple):
    task: Task
    encoding: Encoding
    model: ICLModel  # its encoding is `encoding`


def build(cfg: RunConfig) -> Setup:
    task = task_of(cfg.data)
    encoding = ENCODINGS.resolve(cfg.data.encoding).build(cfg.data, task)
    return Setup(task, encoding, ICLModel(cfg.model, encoding, COMPUTE_DTYPES[cfg.training.precision]))
