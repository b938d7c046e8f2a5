"""Configuration of the T5 v1.1 encoder-decoder, bound from gin model files."""

import dataclasses

import gin
import jax

from t5x_lite.errors import ConfigError
from t5x_lite.models.decoder.config import COMPUTE_DTYPES, with_vocab
from t5x_lite.models.layer_stack import REMAT_POLICIES


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EncDecConfig:
    """Shape and numerics of a T5 v1.1 encoder-decoder (gated-GELU, untied head).

    `vocab_size=None` takes the size of the task's vocabulary, rounded up to a
    multiple of `vocab_multiple` so the table shards evenly.
    """

    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    embed_dim: int = 64
    num_heads: int = 4
    head_dim: int = 16
    mlp_dim: int = 128
    vocab_size: int | None = None
    vocab_multiple: int = 128
    relative_buckets: int = 32
    relative_max_distance: int = 128
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    z_loss: float = 0.0
    dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"

    def __post_init__(self):
        if min(self.num_encoder_layers, self.num_decoder_layers) < 1:
            raise ConfigError(
                f"EncDecConfig: num_encoder_layers={self.num_encoder_layers} and "
                f"num_decoder_layers={self.num_decoder_layers} must both be at least 1.")
        if self.dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"EncDecConfig.dtype={self.dtype!r}: use one of {COMPUTE_DTYPES}.")
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(
                f"EncDecConfig.remat_policy={self.remat_policy!r}: use one of "
                f"{sorted(REMAT_POLICIES)}.")
        self._check_relative_buckets()

    def _check_relative_buckets(self):
        # Bidirectional attention keeps buckets // 4 exact offsets per direction,
        # causal attention buckets // 2; the logarithmic bins need room beyond both.
        if self.relative_buckets < 4:
            raise ConfigError(
                f"EncDecConfig.relative_buckets={self.relative_buckets}: use at least 4.")
        if self.relative_max_distance <= self.relative_buckets // 2:
            raise ConfigError(
                f"EncDecConfig.relative_max_distance={self.relative_max_distance} must exceed "
                f"relative_buckets // 2 = {self.relative_buckets // 2}.")

    def with_vocab(self, task_vocab_size: int) -> "EncDecConfig":
        """Resolves `vocab_size` against the task's vocabulary."""
        return with_vocab(self, task_vocab_size)

    @property
    def compute_dtype(self):
        return jax.numpy.dtype(self.dtype)
