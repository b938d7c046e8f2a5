"""Configuration of the decoder-only family, bound from gin model files."""

import dataclasses

import gin
import jax

from t5x_lite.errors import ConfigError

from t5x_lite.models.layer_stack import REMAT_POLICIES

COMPUTE_DTYPES = ("float32", "bfloat16")
# "cudnn" is cuDNN's fused (flash) attention on NVIDIA GPUs, bfloat16 only; "xla" runs anywhere.
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Shape and numerics of a Llama-style decoder.

    `vocab_size=None` takes the size of the task's vocabulary, rounded up to a
    multiple of `vocab_multiple` so the table shards evenly. `qk_norm` RMS-normalizes
    each query and key head (a learned scale over head_dim) before the rotary
    embedding, as Qwen3 does.
    """

    num_layers: int = 2
    embed_dim: int = 64
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    mlp_dim: int = 256
    vocab_size: int | None = None
    vocab_multiple: int = 128
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qk_norm: bool = False
    z_loss: float = 0.0
    init_std: float = 0.02
    dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention: str = "xla"

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"DecoderConfig: num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}; pick a divisor of num_heads."
            )
        if self.dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"DecoderConfig.dtype={self.dtype!r}: use one of {COMPUTE_DTYPES}.")
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(
                f"DecoderConfig.remat_policy={self.remat_policy!r}: use one of "
                f"{sorted(REMAT_POLICIES)}."
            )

        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(f"DecoderConfig.attention={self.attention!r}: use one of "
                              f"{ATTENTION_IMPLEMENTATIONS}.")
        if self.attention == "cudnn" and self.dtype != "bfloat16":
            raise ConfigError("DecoderConfig.attention='cudnn' needs dtype='bfloat16'; "
                              "set DecoderConfig.dtype = 'bfloat16' or attention = 'xla'.")

    def with_vocab(self, task_vocab_size: int) -> "DecoderConfig":
        """Resolves `vocab_size` against the task's vocabulary."""
        return with_vocab(self, task_vocab_size)

    @property
    def compute_dtype(self):
        return jax.numpy.dtype(self.dtype)


def with_vocab(cfg, task_vocab_size: int):
    """A family config (with `vocab_size` and `vocab_multiple`) with its `vocab_size`
    resolved against the task's vocabulary: None becomes the task's size rounded up to a
    multiple of `vocab_multiple`; a size below the task's is refused."""
    if cfg.vocab_size is None:
        rounded = -(-task_vocab_size // cfg.vocab_multiple) * cfg.vocab_multiple
        return dataclasses.replace(cfg, vocab_size=rounded)
    if cfg.vocab_size < task_vocab_size:
        raise ConfigError(
            f"{type(cfg).__name__}.vocab_size={cfg.vocab_size} is smaller than the task "
            f"vocabulary ({task_vocab_size}); set it to None or at least {task_vocab_size}.")
    return cfg
