"""The model's config section (`model:` in configs/model/*.yaml, where each key is documented), and the
collection every family's trunk sows its hidden states into."""

from dataclasses import dataclass, field

from icl_lr.fields import FREE, check

HIDDEN = "intermediates"  # the collection every family's trunk sows its states into ("hidden": before its first
# layer and after each, [B, T, E]; read by the probes, icl_lr/train/probes.py)


@dataclass(frozen=True)
class ModelConfig:
    family: str = "gpt2"
    n_layer: int = 6
    n_embd: int = 64
    n_head: int = 2
    n_positions: int = 256
    dropout: float = 0.0
    embedding_std: float = field(default=0.2, metadata=FREE)  # acts at init only, which a resume replaces
    init: str = "random"
    gd_learning_rate: float = field(default=1.0, metadata=FREE)  # acts at init only

    def check(self) -> None:
        for key in ("n_layer", "n_embd", "n_head", "n_positions"):
            check(getattr(self, key) >= 1, f"model.{key} must be >= 1, got {getattr(self, key)}")
        check(
            self.n_embd % self.n_head == 0,
            f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})",
        )
        check(0 <= self.dropout < 1, f"model.dropout must be in [0, 1), got {self.dropout}")
        check(
            self.family != "lstm" or self.dropout == 0,
            f"model.dropout must be 0 with model.family=lstm, got {self.dropout}",
        )
        check(self.embedding_std > 0, f"model.embedding_std must be > 0, got {self.embedding_std}")
        check(self.init in ("random", "gd"), f"model.init must be random or gd, got {self.init!r}")
        check(
            self.init == "random" or self.family == "lsa",
            f"model.init=gd is von Oswald et al.'s construction for model.family=lsa, not {self.family}",
        )
