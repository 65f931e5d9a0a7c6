"""The model's config section (`model:` in configs/model/*.yaml, where each key is documented): the keys
every family shares; a family's own keys are its trunk's `Config`, beside it in its module. Also the
collections trunks sow into: hidden states, attention weights."""

from dataclasses import dataclass, field

from icl_lr.fields import FREE, check

HIDDEN = "intermediates"  # the collection every family's trunk sows its states into ("hidden": before its first
# layer and after each, [B, T, E]; read by the probes, icl_lr/train/analyses/probes.py)
ATTENTION = "attention"  # the collection a trunk with attention sows its weights into ("weights": [B, H,
# T, T], query by key, once per call of each attention layer; read by eval.attention,
# icl_lr/train/analyses/attention.py)


@dataclass(frozen=True)
class ModelConfig:
    family: str = "gpt2"
    n_embd: int = 64
    embedding_std: float = field(default=0.2, metadata=FREE)  # acts at init only, which a resume replaces

    def check(self) -> None:
        check_counts(self, "n_embd")
        check(self.embedding_std > 0, f"model.embedding_std must be > 0, got {self.embedding_std}")

    def linear_inits(self, fan_in: int) -> dict:
        """nn.Dense's initialisers for the linear read-in and the read-out of `fan_in` inputs where a family's keys
        set their own (its Config overrides this: mamba's init=park); {} keeps icl-lr's (read_in.py, icl_model.py)."""
        return {}


def torch_init(fan_in: int, scale: float = 1.0):
    """PyTorch's default init of an nn.Linear's or nn.Conv1d's weight (kaiming_uniform_ with a = sqrt(5)) and bias:
    U(-b, b), b = scale / sqrt(fan_in); the families written after PyTorch models start as they do."""
    import jax

    bound = scale / fan_in**0.5
    return lambda key, shape, dtype=jax.numpy.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


COUNT_LIMIT = 65_536  # a model's counts (layers, heads, widths, positions, state sizes): its memory grows with each
LOOP_LIMIT = 1_000  # loops of a looped model: one XLA call runs them all, and a running call does not see SIGTERM
COUNT_LIMITS = {"n_loops": LOOP_LIMIT, "loss_loops": LOOP_LIMIT}


def check_counts(section, *keys: str) -> None:
    """Each of the model section's `keys` is a count (layers, heads, widths): >= 1, and at most its limit."""
    for key in keys:
        value, limit = getattr(section, key), COUNT_LIMITS.get(key, COUNT_LIMIT)
        check(value >= 1, f"model.{key} must be >= 1, got {value}")
        check(value <= limit, f"model.{key} must be at most {limit:,}, got {value:,}")
