"""The task's config section (`data:` in configs/data/*.yaml, where each key is documented): the keys every
task shares. A task's own keys are its `Config`, beside it in its module."""

import math
from dataclasses import dataclass, field

from icl_lr.fields import check

INDEX_LIMIT = 2**31  # pool tasks and training prompts are drawn by int32 index
DIMS_LIMIT, POINTS_LIMIT = 4_096, 65_536  # d and points per prompt


@dataclass(frozen=True)
class CurriculumConfig:
    enabled: bool = False
    dims_start: int = 5
    dims_increment: int = 1
    points_start: int = 11
    points_increment: int = 2
    interval: int = 2000

    def check(self) -> None:
        for key in ("dims_increment", "points_increment"):  # checked even while the curriculum is off
            check(getattr(self, key) >= 0, f"data.curriculum.{key} must be >= 0, got {getattr(self, key)}")
        check(self.interval >= 1, f"data.curriculum.interval must be >= 1, got {self.interval}")


X_COVARIANCES = ("identity", "skewed", "rotated_skewed", "wishart")
X_DISTS = ("gaussian", "uniform", "rademacher", "sphere", "student_t")  # each with mean 0 and E x x^T = I
NOISE_DISTS = ("gaussian", "laplace", "student_t")  # each with mean 0 and variance 1, times sigma


@dataclass(frozen=True)
class DataConfig:
    """The keys every task shares; the section of a run is these and its task's and encoding's own
    (each one's `Config`, composed by icl_lr/run/config.py)."""

    task: str = "linear_regression"
    n_dims: int = 5
    n_points: int = 11
    x_dist: str = "gaussian"
    x_df: float = 5.0
    x_cov: str = "identity"
    x_cov_df: int | None = None
    x_ar: float = 0.0
    prior_scale: float = 1.0
    noise_std: float = 0.0
    noise_std_choices: tuple[float, ...] | None = None
    noise_dist: str = "gaussian"
    noise_df: float = 5.0
    task_pool_size: int | None = None
    train_size: int | None = None
    encoding: str = "continuous"
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)

    @property
    def noise_stds(self) -> tuple:
        """The support of the noise prior: one value, or the hierarchical prior's list."""
        return tuple(self.noise_std_choices) if self.noise_std_choices else (self.noise_std,)

    @property
    def gaussian_noise(self) -> bool:
        """Whether the labels' noise is Gaussian (or there is none): where ridge is Bayes, not only the best
        linear predictor."""
        return self.noise_dist == "gaussian" or max(self.noise_stds) == 0

    @property
    def y_scale(self) -> float:
        """Marginal std of y (largest noise), used to standardise y before binning into tokens."""
        return float((self.prior_scale**2 * self.n_dims + max(self.noise_stds) ** 2) ** 0.5)

    def check(self) -> None:
        for key, limit in (("n_dims", DIMS_LIMIT), ("n_points", POINTS_LIMIT)):  # a prompt's memory grows with both
            value = getattr(self, key)
            check(value >= 1, f"data.{key} must be >= 1, got {value}")
            check(value <= limit, f"data.{key} must be at most {limit:,}, got {value:,}")
        check(self.x_dist in X_DISTS, f"data.x_dist must be one of {X_DISTS}, got {self.x_dist!r}")
        check(self.x_cov in X_COVARIANCES, f"data.x_cov must be one of {X_COVARIANCES}, got {self.x_cov!r}")
        check(self.noise_dist in NOISE_DISTS, f"data.noise_dist must be one of {NOISE_DISTS}, got {self.noise_dist!r}")
        for key in ("x_df", "noise_df"):  # checked even where unused, as the curriculum's (a finite variance)
            value = getattr(self, key)
            check(2 < value < math.inf, f"data.{key} must be > 2 and finite (a finite variance), got {value}")
        check(
            self.x_cov_df is None or self.x_cov_df >= self.n_dims,
            f"data.x_cov_df must be null or >= data.n_dims={self.n_dims}, got {self.x_cov_df}",
        )
        check(-1 < self.x_ar < 1, f"data.x_ar must be in (-1, 1), got {self.x_ar}")
        check(self.prior_scale > 0, f"data.prior_scale must be > 0, got {self.prior_scale}")
        check(self.noise_std >= 0, f"data.noise_std must be >= 0, got {self.noise_std}")
        if self.noise_std_choices is not None:
            choices = list(self.noise_std_choices)
            check(len(choices) >= 1, "data.noise_std_choices must be null or a non-empty list")
            floor_ok = all(s > 0 for s in choices) if len(choices) > 1 else choices[0] >= 0
            check(floor_ok, f"data.noise_std_choices must be > 0 when several are given, got {choices}")
        for key in ("task_pool_size", "train_size"):
            value = getattr(self, key)
            check(value is None or 1 <= value < INDEX_LIMIT, f"data.{key} must be null or in [1, 2**31), got {value}")
        c = self.curriculum
        if c.enabled:
            check(
                1 <= c.dims_start <= self.n_dims,
                f"data.curriculum.dims_start must be in [1, {self.n_dims}], got {c.dims_start}",
            )
            check(
                1 <= c.points_start <= self.n_points,
                f"data.curriculum.points_start must be in [1, {self.n_points}], got {c.points_start}",
            )
