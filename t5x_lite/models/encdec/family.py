"""The encoder-decoder family: T5 v1.1 trained on examples with inputs and targets.

Rows are seqio's `EncDecFeatureConverter` features: the encoder reads `inputs` (task
length I), the decoder the `targets` (length T) shifted right by the start token 0 within
each segment; the loss is next-token cross-entropy where `decoder_loss_weights` is set
(every non-padding target). Packed rows keep examples apart by segment ids on both sides.

Prediction: the prompt is the encoder's input; it is encoded once, and the decoder runs
from the start token with a KV cache (`EncoderDecoder.init_cache` / `decode`).
"""

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite.errors import ConfigError
from t5x_lite.models import family as family_lib
from t5x_lite.models.encdec.config import EncDecConfig
from t5x_lite.models.encdec.model import EncoderDecoder
from t5x_lite.models.losses import cross_entropy_sums, target_log_likelihood

ENCODER_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
DECODER_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                    "decoder_segment_ids", "decoder_positions")
START_ID = 0


class EncDecFamily(family_lib.ModelFamily):
    name = "encdec"
    config_type = EncDecConfig
    reads_token_stores = True
    encodes_inputs = True

    def resolve(self, cfg: EncDecConfig, task_vocab_size: int) -> EncDecConfig:
        return cfg.with_vocab(task_vocab_size)

    def build(self, cfg: EncDecConfig, rngs: nnx.Rngs) -> EncoderDecoder:
        return EncoderDecoder(cfg, rngs)

    def features(self, cfg, task_lengths: Mapping[str, int]):
        inputs, targets = _lengths(task_lengths)
        return {**{key: family_lib.FeatureSpec(inputs) for key in ENCODER_FEATURES},
                **{key: family_lib.FeatureSpec(targets) for key in DECODER_FEATURES}}

    def feature_converter(self, has_inputs: bool, pack: bool):
        if not has_inputs:
            raise ConfigError("The encoder-decoder needs data with 'inputs' and 'targets' "
                              "(e.g. a span-corruption Task); this Task has 'targets' only.")
        from t5x_lite.models.encdec import converters  # TensorFlow loads only on the data path.
        return converters.EncDecFeatureConverter(pack=pack)

    def packed_features(self, packed) -> dict[str, np.ndarray]:
        """As seqio's `EncDecFeatureConverter`: the decoder's inputs are the targets
        shifted right within each segment (START_ID at its start); loss on every target."""
        targets = packed["targets"]
        return {"encoder_input_tokens": packed["inputs"],
                "encoder_segment_ids": packed["inputs_segment_ids"],
                "encoder_positions": packed["inputs_positions"],
                "decoder_input_tokens": family_lib.shifted_right(
                    targets, packed["targets_positions"], START_ID),
                "decoder_target_tokens": targets,
                "decoder_loss_weights": (targets != 0).astype(np.int32),
                "decoder_segment_ids": packed["targets_segment_ids"],
                "decoder_positions": packed["targets_positions"]}

    def logits(self, cfg, model: EncoderDecoder, batch) -> jax.Array:
        return model(batch["encoder_input_tokens"], batch["encoder_segment_ids"],
                     batch["decoder_input_tokens"], batch["decoder_segment_ids"])

    def loss(self, cfg: EncDecConfig, model: EncoderDecoder, batch) -> family_lib.LossOutput:
        loss_sum, z_sum, weight_sum = cross_entropy_sums(
            self.logits(cfg, model, batch), batch["decoder_target_tokens"],
            batch["decoder_loss_weights"], cfg.z_loss)
        return family_lib.LossOutput(loss_sum, weight_sum, {"z_loss": z_sum})

    def example_batch(self, inputs, targets, length: int | None = None) -> dict:
        """Encoder rows of the inputs and decoder rows of the targets (shifted right by the
        start token), right-padded; loss weight 1 on every target token.

        `length` (None: each side as long as its longest row) is the width of both sides'
        rows; the evaluator passes the longest inputs + targets, which bounds both."""
        longest = {"inputs": max(len(x) for x in inputs), "targets": max(len(y) for y in targets)}
        for name, need in longest.items():
            if length is not None and length < need:
                raise ValueError(f"length={length} is shorter than the longest {name} "
                                 f"({need} tokens).")
        enc_width = max(longest["inputs"], 1) if length is None else length
        dec_width = max(longest["targets"], 1) if length is None else length
        rows = len(inputs)
        batch = {**{key: np.zeros((rows, enc_width), np.int32) for key in ENCODER_FEATURES},
                 **{key: np.zeros((rows, dec_width), np.int32) for key in DECODER_FEATURES}}
        for b, (x, y) in enumerate(zip(inputs, targets, strict=True)):
            batch["encoder_input_tokens"][b, :len(x)] = x
            batch["encoder_segment_ids"][b, :len(x)] = 1
            batch["encoder_positions"][b, :len(x)] = np.arange(len(x))
            n = len(y)
            batch["decoder_input_tokens"][b, :n] = [START_ID, *y][:n]
            batch["decoder_target_tokens"][b, :n] = y
            batch["decoder_loss_weights"][b, :n] = 1
            batch["decoder_segment_ids"][b, :n] = 1
            batch["decoder_positions"][b, :n] = np.arange(n)
        return batch

    def score(self, cfg, model: EncoderDecoder, batch) -> jax.Array:
        return target_log_likelihood(self.logits(cfg, model, batch),
                                     batch["decoder_target_tokens"], batch["decoder_loss_weights"])

    def prefill(self, cfg, model: EncoderDecoder, prompts_BP, starts_B, num_slots: int):
        """Encodes the left-padded prompts (row b's start token at slot starts_B[b], its
        prompt after it; the encoder sees only the prompt tokens, as in training, where the
        encoder input has no start token) and runs the decoder's start token.

        The driver numbers the prediction slots P .. num_slots - 1 after the P prompt
        slots; the decoder holds the start token and one position per prediction step, so
        its cache has num_slots - P + 1 slots."""
        batch, prompt_len = prompts_BP.shape
        segment_ids_BP = (jnp.arange(prompt_len)[None, :] > starts_B[:, None]).astype(jnp.int32)
        cache = model.init_cache(prompts_BP, segment_ids_BP, num_slots - prompt_len + 1)
        return model.decode(jnp.full((batch, 1), START_ID, jnp.int32), cache, 0)

    def extend(self, cfg, model: EncoderDecoder, token_B, starts_B, slot, state):
        """The token at driver slot `slot` (P + i for the i-th predicted token) goes to
        decoder position slot - P + 1 (position 0 is the start token); P is the encoder's
        length, the width of the prompts."""
        prompt_len = state.cross_k_LBSNH.shape[2]
        return model.decode(token_B[:, None], state, slot - prompt_len + 1)

    def param_count(self, cfg: EncDecConfig, *, active: bool = False) -> int:
        abstract = nnx.eval_shape(lambda: EncoderDecoder(cfg, nnx.Rngs(0)))
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(abstract)))

    def flops_per_token(self, cfg: EncDecConfig, task_lengths: Mapping[str, int]) -> float:
        """Training FLOPs (forward and backward: 3 x the forward's 2 per multiply-add) of
        one row, divided by the row's I + T tokens (`tokens_per_row`, which the trainer
        multiplies this by).

        Matmuls, 6 x weights x the tokens they run over: per encoder token, each encoder
        layer's attention (q, k, v, o: 4 D N H) and gated MLP (3 D F) and each decoder
        layer's cross-attention keys and values (2 D N H; they run over the encoder
        output); per decoder token, each decoder layer's self-attention (4 D N H),
        cross-attention queries and output (2 D N H) and MLP (3 D F), and the head (D V).
        Attention scores and values, 12 N H per query-key pair (full squares, as the
        decoder family counts): I x I per encoder layer, T x T (self) and T x I (cross) per
        decoder layer. The embedding lookup and the relative position bias are free.
        """
        inputs, targets = _lengths(task_lengths)
        D, NH, F = cfg.embed_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim
        Le, Ld = cfg.num_encoder_layers, cfg.num_decoder_layers
        encoder_token = Le * (4 * D * NH + 3 * D * F) + Ld * 2 * D * NH
        decoder_token = Ld * (4 * D * NH + 2 * D * NH + 3 * D * F) + D * cfg.vocab_size
        matmuls = 6 * (inputs * encoder_token + targets * decoder_token)
        pairs = Le * inputs * inputs + Ld * (targets * targets + targets * inputs)
        return (matmuls + 12 * NH * pairs) / self.tokens_per_row(task_lengths)

    def stacks(self, cfg: EncDecConfig, task_lengths: Mapping[str, int]):
        inputs, targets = _lengths(task_lengths)
        return {"encoder": family_lib.Stack(cfg.num_encoder_layers, inputs),
                "decoder": family_lib.Stack(cfg.num_decoder_layers, targets)}

    def no_decay(self, cfg) -> tuple[str, ...]:
        return ("embed_VD", "encoder_relpos_RN", "decoder_relpos_RN")

    def tokens_per_row(self, task_lengths: Mapping[str, int]) -> int:
        inputs, targets = _lengths(task_lengths)
        return inputs + targets


def _lengths(task_lengths: Mapping[str, int]) -> tuple[int, int]:
    """(I, T) of task lengths {'inputs': I, 'targets': T}."""
    if set(task_lengths) != {"inputs", "targets"}:
        raise ConfigError(f"TASK_FEATURE_LENGTHS={dict(task_lengths)}: the encoder-decoder "
                          "needs lengths of 'inputs' and 'targets', like "
                          "{'inputs': 512, 'targets': 114}.")
    return task_lengths["inputs"], task_lengths["targets"]


ENCDEC = family_lib.register(EncDecFamily())
