"""The task's config section (`data:` in configs/data/*.yaml, where each key is documented)."""

import dataclasses
from dataclasses import dataclass, field

from icl_lr.fields import check

BIN_SCHEMES = ("uniform", "gaussian_quantiles")
INDEX_LIMIT = 2**31  # pool tasks and training prompts are drawn by int32 index


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


X_COVARIANCES = ("identity", "skewed", "rotated_skewed")
W_PRIORS = ("gaussian", "gaussian_mixture")


@dataclass(frozen=True)
class DataConfig:
    task: str = "linear_regression"
    n_dims: int = 5
    n_points: int = 11
    x_cov: str = "identity"
    w_prior: str = "gaussian"
    w_components: int = 2
    w_centre: float = 2.0
    sparsity: int = 2
    hidden_width: int = 100
    tree_depth: int = 4
    task_mixture: tuple[str, ...] | None = None
    prior_scale: float = 1.0
    noise_std: float = 0.0
    noise_std_choices: tuple[float, ...] | None = None
    task_pool_size: int | None = None
    train_size: int | None = None
    encoding: str = "continuous"
    vocab_size: int = 64
    bin_scheme: str = "uniform"
    bin_range: float = 3.0
    ce_weight: float = 1.0
    mean_loss_weight: float = 0.0
    token_slot_embedding: bool = False
    token_value_embedding: bool = False
    token_point_embedding: bool = False
    token_short_conv: bool = False
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)

    @property
    def noise_stds(self) -> tuple:
        """The support of the noise prior: one value, or the hierarchical prior's list."""
        return tuple(self.noise_std_choices) if self.noise_std_choices else (self.noise_std,)

    @property
    def y_scale(self) -> float:
        """Marginal std of y (largest noise), used to standardise y before binning into tokens."""
        return float((self.prior_scale**2 * self.n_dims + max(self.noise_stds) ** 2) ** 0.5)

    def check(self) -> None:
        check(self.n_dims >= 1, f"data.n_dims must be >= 1, got {self.n_dims}")
        check(self.n_points >= 1, f"data.n_points must be >= 1, got {self.n_points}")
        check(self.x_cov in X_COVARIANCES, f"data.x_cov must be one of {X_COVARIANCES}, got {self.x_cov!r}")
        check(self.w_prior in W_PRIORS, f"data.w_prior must be one of {W_PRIORS}, got {self.w_prior!r}")
        check(1 <= self.w_components <= 64, f"data.w_components must be in [1, 64], got {self.w_components}")
        check(self.w_centre >= 0, f"data.w_centre must be >= 0, got {self.w_centre}")
        check(
            self.task != "sparse_linear" or 1 <= self.sparsity <= self.n_dims,
            f"data.sparsity must be in [1, data.n_dims={self.n_dims}], got {self.sparsity}",
        )
        check(
            self.w_prior == "gaussian" or self.task == "linear_regression",
            f"data.w_prior={self.w_prior} is a prior of linear_regression's w, not of data.task={self.task}",
        )
        check(
            self.task != "linear_classification" or self.noise_stds == (0.0,),
            f"data.task=linear_classification has no label noise: data.noise_std must be 0, got {self.noise_stds}",
        )
        check(
            self.noise_std_choices is None or self.task == "linear_regression",
            f"data.noise_std_choices (a hierarchical noise prior) is linear_regression's, not data.task={self.task}'s",
        )
        check(
            self.encoding in ("continuous", "paired")
            or (self.task == "linear_regression" and self.w_prior == "gaussian"),
            f"data.encoding={self.encoding} (binned y) is for data.task=linear_regression under data.w_prior=gaussian "
            f"(its bins and yardsticks assume them), not {self.task} under {self.w_prior}",
        )
        check(
            (self.task == "mixture") == (self.task_mixture is not None),
            f"data.task=mixture and data.task_mixture (its classes) go together, got data.task={self.task} "
            f"and data.task_mixture={self.task_mixture}",
        )
        if self.task_mixture is not None:
            classes = list(self.task_mixture)
            check(
                len(classes) >= 2 and len(set(classes)) == len(classes) and "mixture" not in classes,
                f"data.task_mixture must list two or more distinct tasks other than mixture, got {classes}",
            )
            for name in classes:  # each class's own checks, on the mixture's keys
                dataclasses.replace(self, task=name, task_mixture=None).check()
        check(1 <= self.hidden_width <= 4096, f"data.hidden_width must be in [1, 4096], got {self.hidden_width}")
        check(1 <= self.tree_depth <= 10, f"data.tree_depth must be in [1, 10], got {self.tree_depth}")
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
        check(self.vocab_size >= 2, f"data.vocab_size must be >= 2, got {self.vocab_size}")
        check(self.bin_range > 0, f"data.bin_range must be > 0, got {self.bin_range}")
        check(self.bin_scheme in BIN_SCHEMES, f"data.bin_scheme must be one of {BIN_SCHEMES}, got {self.bin_scheme!r}")
        for key in ("ce_weight", "mean_loss_weight"):
            check(getattr(self, key) >= 0, f"data.{key} must be >= 0, got {getattr(self, key)}")
        check(self.ce_weight + self.mean_loss_weight > 0, "data.ce_weight and data.mean_loss_weight cannot both be 0")
        for key in ("token_slot_embedding", "token_point_embedding", "token_value_embedding", "token_short_conv"):
            check(
                not getattr(self, key) or self.encoding == "tokens",
                f"data.{key} applies to the tokens encoding only (data.encoding={self.encoding})",
            )
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
