"""The W&B config section (`wandb:` in configs/config.yaml, where each key is documented). Every key is
free: where a run's numbers go does not change them."""

import math
from dataclasses import dataclass, field

from icl_lr.fields import FREE, check

WANDB_MODES = ("auto", "online", "offline", "disabled")


@dataclass(frozen=True)
class WandbConfig:
    mode: str = field(default="auto", metadata=FREE)
    project: str = field(default="icl-lr", metadata=FREE)
    entity: str | None = field(default=None, metadata=FREE)
    group: str | None = field(default=None, metadata=FREE)
    tags: tuple[str, ...] = field(default=(), metadata=FREE)
    job_type: str = field(default="train", metadata=FREE)
    name: str | None = field(default=None, metadata=FREE)
    log_checkpoints: bool = field(default=True, metadata=FREE)
    init_timeout: float = field(default=30.0, metadata=FREE)

    def check(self) -> None:
        check(self.mode in WANDB_MODES, f"wandb.mode must be one of {WANDB_MODES}, got {self.mode!r}")
        check(
            0 < self.init_timeout < math.inf,
            f"wandb.init_timeout must be a finite number of seconds > 0, got {self.init_timeout}",
        )
