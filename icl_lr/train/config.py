"""The training and eval config sections (`training:` in configs/training/*.yaml, `eval:` in
configs/config.yaml, where each key is documented), and RunConfig: every layer's section in one run.

A field marked FREE may change when a run resumes: it changes neither what the model sees nor how it is
updated (training.steps may only grow: it extends the run).
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

from icl_lr.fields import FREE, check
from icl_lr.model.config import LOOP_LIMIT, ModelConfig
from icl_lr.records.config import WandbConfig
from icl_lr.task.config import DataConfig

SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("fp32", "bf16")
SEED_LIMIT = 2**32  # PRNGKey keeps a seed's low 32 bits: larger seeds repeat smaller ones
EVAL_LIMIT = 2**20  # eval prompts and eval batch: the sets and their baselines are held in memory
TRAINING_LIMITS = {  # what grows with each: a run's time (steps), a step's memory (batch), one XLA call's time
    "steps": 2**31 - 1,  # (steps_per_dispatch: a running call does not see SIGTERM), the checkpoints' disk
    "batch_size": 2**20,
    "steps_per_dispatch": 10_000,
    "max_to_keep": 1_000,
    "trajectory": 1_000,  # checkpoints kept, each evaluated: disk and time
}
LLC_LIMITS = {  # eval.llc's SGLD: chains (each a parameter copy, 16 at a time: analyses/llc.py), steps (time)
    "chains": 1_000,
    "draws": 1_000_000,
    "burn_in": 1_000_000,
    "trace": 2**24,  # chains x (burn_in + draws): the losses each eval keeps and writes
}
PREDICTION_LIMIT = 2**18  # eval.predictions x data.n_points: the values each eval writes and analyze stacks by step


@dataclass(frozen=True)
class TrainingConfig:
    steps: int = field(default=12000, metadata=FREE)
    num_epochs: int | None = None
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 2000
    schedule: str = "cosine"
    decay_steps: int | None = None
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    precision: str = "fp32"
    loss_points: str = "all"
    distributed: bool = field(default=False, metadata=FREE)  # where the steps run, not what they compute
    cpu_devices: str = field(default="auto", metadata=FREE)
    compile_cache: bool = field(default=True, metadata=FREE)  # how fast a run starts, not what it computes
    steps_per_dispatch: int = field(default=50, metadata=FREE)
    log_every: int = field(default=500, metadata=FREE)
    eval_every: int = field(default=2000, metadata=FREE)
    checkpoint_every: int = field(default=2000, metadata=FREE)
    max_to_keep: int = field(default=3, metadata=FREE)
    trajectory: int = field(default=0, metadata=FREE)
    allow_code_change: bool = field(default=False, metadata=FREE)  # a resume's leave to train on other code

    @property
    def horizon(self) -> int:
        """The step at which the decay reaches its floor: decay_steps, or the run's length when unset."""
        return self.steps if self.decay_steps is None else self.decay_steps

    def check(self) -> None:
        check(self.schedule in SCHEDULES, f"training.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        check(self.precision in PRECISIONS, f"training.precision must be one of {PRECISIONS}, got {self.precision!r}")
        check(
            self.loss_points in ("all", "last"), f"training.loss_points must be all or last, got {self.loss_points!r}"
        )
        check(
            self.cpu_devices == "auto" or (self.cpu_devices.isdigit() and int(self.cpu_devices) >= 1),
            f"training.cpu_devices must be auto or an integer >= 1, got {self.cpu_devices!r}",
        )
        for key in ("steps", "batch_size", "steps_per_dispatch", "max_to_keep"):
            value, limit = getattr(self, key), TRAINING_LIMITS[key]
            check(1 <= value <= limit, f"training.{key} must be in [1, {limit:,}], got {value:,}")
        check(
            self.num_epochs is None or self.num_epochs >= 1,
            f"training.num_epochs must be null or >= 1, got {self.num_epochs}",
        )
        check(self.learning_rate > 0, f"training.learning_rate must be > 0, got {self.learning_rate}")
        check(self.warmup_steps >= 0, f"training.warmup_steps must be >= 0, got {self.warmup_steps}")
        check(
            self.decay_steps is None or self.decay_steps >= 1,
            f"training.decay_steps must be null or >= 1, got {self.decay_steps}",
        )
        check(0 <= self.min_lr_ratio <= 1, f"training.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        check(self.grad_clip > 0, f"training.grad_clip must be > 0, got {self.grad_clip}")
        check(self.weight_decay >= 0, f"training.weight_decay must be >= 0, got {self.weight_decay}")
        check(
            0 <= self.trajectory <= TRAINING_LIMITS["trajectory"],
            f"training.trajectory must be 0 (off) or in [1, {TRAINING_LIMITS['trajectory']:,}], got {self.trajectory}",
        )
        dispatches = math.ceil(self.steps / self.steps_per_dispatch)
        check(
            self.trajectory <= dispatches,
            f"training.trajectory ({self.trajectory}) must be at most the run's dispatches ({dispatches}: "
            f"training.steps / training.steps_per_dispatch), the steps a checkpoint can be taken at",
        )
        for key in ("log_every", "eval_every", "checkpoint_every"):
            value = getattr(self, key)
            check(
                value >= 1 and value % self.steps_per_dispatch == 0,
                f"training.{key} ({value}) must be a positive multiple of "
                f"training.steps_per_dispatch ({self.steps_per_dispatch})",
            )


@dataclass(frozen=True)
class EvalConfig:
    n_prompts: int = field(default=1280, metadata=FREE)
    batch_size: int = field(default=256, metadata=FREE)
    seed: int = field(default=12345, metadata=FREE)
    ood: bool = field(default=True, metadata=FREE)
    ood_every_eval: bool = field(default=False, metadata=FREE)
    algorithms: bool = field(default=False, metadata=FREE)
    algorithm_steps: tuple[int, ...] = field(default=(1, 3, 10), metadata=FREE)
    probes: bool = field(default=False, metadata=FREE)
    prompts: str | None = field(default=None, metadata=FREE)
    attention: bool = field(default=False, metadata=FREE)
    n_loops: tuple[int, ...] = field(default=(), metadata=FREE)
    predictions: int = field(default=0, metadata=FREE)
    llc: bool = field(default=False, metadata=FREE)
    llc_step_size: float = field(default=1e-4, metadata=FREE)
    llc_localization: float = field(default=1000.0, metadata=FREE)
    llc_beta: float = field(default=0.0, metadata=FREE)
    llc_chains: int = field(default=4, metadata=FREE)
    llc_draws: int = field(default=100, metadata=FREE)
    llc_burn_in: int = field(default=100, metadata=FREE)
    llc_batch_size: int | None = field(default=None, metadata=FREE)
    analyses: tuple[str, ...] = field(default=(), metadata=FREE)

    def check(self) -> None:
        for key in ("n_prompts", "batch_size"):  # the eval sets are held in memory, a batch in one XLA call
            value = getattr(self, key)
            check(1 <= value <= EVAL_LIMIT, f"eval.{key} must be in [1, {EVAL_LIMIT:,}], got {value:,}")
        check(0 <= self.seed < SEED_LIMIT, f"eval.seed must be in [0, 2**32), got {self.seed}")
        check(
            len(self.algorithm_steps) >= 1 and 1 <= min(self.algorithm_steps) <= max(self.algorithm_steps) <= 1000,
            f"eval.algorithm_steps must be a non-empty list of steps in [1, 1000], got {list(self.algorithm_steps)}",
        )
        check(
            self.prompts is None or (self.prompts.endswith(".npz") and Path(self.prompts).is_file()),
            f"eval.prompts must be an .npz file of xs [B, N, D] and ys [B, N], got {self.prompts!r}",
        )
        check(
            all(1 <= n <= LOOP_LIMIT for n in self.n_loops),
            f"eval.n_loops must be loop counts in [1, {LOOP_LIMIT:,}], got {list(self.n_loops)}",
        )
        check(
            0 <= self.predictions <= self.n_prompts,
            f"eval.predictions must be 0 (off) or in [1, eval.n_prompts ({self.n_prompts:,})], got {self.predictions}",
        )
        check(0 < self.llc_step_size <= 1, f"eval.llc_step_size must be in (0, 1], got {self.llc_step_size}")
        for key in ("llc_localization", "llc_beta"):  # NaN fails each comparison
            value = getattr(self, key)
            check(0 <= value < math.inf, f"eval.{key} must be a finite number >= 0, got {value}")
        for key, low in (("chains", 1), ("draws", 1), ("burn_in", 0)):
            value, limit = getattr(self, f"llc_{key}"), LLC_LIMITS[key]
            check(low <= value <= limit, f"eval.llc_{key} must be in [{low}, {limit:,}], got {value:,}")
        trace = self.llc_chains * (self.llc_burn_in + self.llc_draws)
        check(
            trace <= LLC_LIMITS["trace"],
            f"eval.llc_chains x (eval.llc_burn_in + eval.llc_draws) must be at most {LLC_LIMITS['trace']:,} "
            f"losses (the trace each eval keeps), got {trace:,}",
        )
        check(
            self.llc_batch_size is None or 1 <= self.llc_batch_size <= TRAINING_LIMITS["batch_size"],
            f"eval.llc_batch_size must be null or in [1, {TRAINING_LIMITS['batch_size']:,}], got {self.llc_batch_size}",
        )


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    seed: int = 0
    init_from: str | None = field(default=None, metadata=FREE)  # used at a run's start only

    def check(self) -> None:
        check(0 <= self.seed < SEED_LIMIT, f"seed must be in [0, 2**32), got {self.seed}")


def steps_per_epoch(cfg: RunConfig) -> int:
    """Steps of one pass over the finite training set: the last batch of an epoch may be partial."""
    return math.ceil(cfg.data.train_size / cfg.training.batch_size)
