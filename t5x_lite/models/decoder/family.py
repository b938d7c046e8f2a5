"""The decoder-only family: a Llama-style causal language model.

Rows hold one token sequence (instruction data: inputs then targets), shifted right by
the start token 0; the loss is next-token cross-entropy where `decoder_loss_weights` is
set. Prediction runs left-padded prompts through a KV cache (`generate`).
"""

import math
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx

from t5x_lite.models import family as family_lib
from t5x_lite.models.decoder import generate
from t5x_lite.models.decoder.config import DecoderConfig
from t5x_lite.models.decoder.model import Decoder
from t5x_lite.models.losses import cross_entropy_sums, target_log_likelihood

FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
            "decoder_segment_ids", "decoder_positions")
START_ID = 0


class DecoderFamily(family_lib.ModelFamily):
    name = "decoder"
    config_type = DecoderConfig
    reads_token_stores = True

    def resolve(self, cfg: DecoderConfig, task_vocab_size: int) -> DecoderConfig:
        return cfg.with_vocab(task_vocab_size)

    def build(self, cfg: DecoderConfig, rngs: nnx.Rngs) -> Decoder:
        return Decoder(cfg, rngs)

    def features(self, cfg, task_lengths: Mapping[str, int]):
        row = sum(task_lengths.values())
        return {key: family_lib.FeatureSpec(row) for key in FEATURES}

    def feature_converter(self, has_inputs: bool, pack: bool):
        from t5x_lite.models.decoder import converters  # TensorFlow loads only on the data path.
        if has_inputs:
            return converters.InstructionFeatureConverter(pack=pack)
        return converters.LanguageModelFeatureConverter(pack=pack)

    def packed_features(self, packed) -> dict[str, np.ndarray]:
        """As seqio's decoder converters: inputs are the targets shifted right within each
        segment (START_ID at its start); loss on every token, or, for rows of inputs then
        targets (`inputs_width` given), on each segment's tokens from its inputs' width on."""
        targets, positions = packed["targets"], packed["targets_positions"]
        inputs = family_lib.shifted_right(targets, positions, START_ID)
        weights = (targets != 0) & (positions >= packed.get("inputs_width", 0))
        return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
                "decoder_loss_weights": weights.astype(np.int32),
                "decoder_segment_ids": packed["targets_segment_ids"],
                "decoder_positions": positions}

    def logits(self, cfg, model: Decoder, batch) -> jax.Array:
        return model(batch["decoder_input_tokens"], batch["decoder_positions"],
                     batch["decoder_segment_ids"])

    def loss(self, cfg: DecoderConfig, model: Decoder, batch) -> family_lib.LossOutput:
        loss_sum, z_sum, weight_sum = cross_entropy_sums(
            self.logits(cfg, model, batch), batch["decoder_target_tokens"],
            batch["decoder_loss_weights"], cfg.z_loss)
        return family_lib.LossOutput(loss_sum, weight_sum, {"z_loss": z_sum})

    def example_batch(self, inputs, targets, length: int | None = None) -> dict:
        """Right-padded rows of start token + inputs + targets, with loss weight 1 exactly
        on the target tokens."""
        rows = [[START_ID, *x, *y] for x, y in zip(inputs, targets, strict=True)]
        longest = max(len(row) for row in rows) - 1
        width = longest if length is None else length
        if width < longest:
            raise ValueError(f"length={length} is shorter than the longest inputs + targets "
                             f"({longest} tokens).")
        batch = {key: np.zeros((len(rows), width), np.int32) for key in FEATURES}
        for b, (row, target) in enumerate(zip(rows, targets)):
            n = len(row) - 1
            batch["decoder_input_tokens"][b, :n] = row[:-1]
            batch["decoder_target_tokens"][b, :n] = row[1:]
            batch["decoder_loss_weights"][b, n - len(target):n] = 1
            batch["decoder_segment_ids"][b, :n] = 1
            batch["decoder_positions"][b, :n] = np.arange(n)
        return batch

    def score(self, cfg, model: Decoder, batch) -> jax.Array:
        return target_log_likelihood(self.logits(cfg, model, batch),
                                     batch["decoder_target_tokens"], batch["decoder_loss_weights"])

    def prefill(self, cfg, model: Decoder, prompts_BP, starts_B, num_slots: int):
        return generate.prefill(model, prompts_BP, starts_B, num_slots)

    def extend(self, cfg, model: Decoder, token_B, starts_B, slot, state):
        return generate.extend(model, token_B, starts_B, slot, state)

    def param_count(self, cfg: DecoderConfig, *, active: bool = False) -> int:
        abstract = nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(0)))
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(abstract)))

    def flops_per_token(self, cfg: DecoderConfig, task_lengths: Mapping[str, int]) -> float:
        """6 x matmul params plus attention scores and values (12 L T N H, full T as in the
        PaLM paper's accounting)."""
        D, N, K, H, F = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
        per_layer = D * N * H * 2 + D * K * H * 2 + 3 * D * F
        matmul_params = cfg.num_layers * per_layer + D * cfg.vocab_size
        attention = 12 * cfg.num_layers * sum(task_lengths.values()) * N * H
        return 6 * matmul_params + attention

    def no_decay(self, cfg) -> tuple[str, ...]:
        return ("embed_VD",)


DECODER = family_lib.register(DecoderFamily())
