"""The parameter mapping between t5x_lite's encoder-decoder and `T5ForConditionalGeneration`.

Pure numpy, both ways, one block at a time. A projection converts as in the decoder's
mapping (`convert`): a [D, N, H] kernel is the transpose of a [N * H, D] Linear weight
(heads major), an [N, H, D] kernel the transpose of a [D, N * H] one; the feed-forward
kernels are plain transposes.

Each t5x_lite block is a list of sublayers, a norm `<name>_norm` before each, that T5
numbers `layer.<j>`: the encoder's self-attention and feed-forward, the decoder's
self-attention, cross-attention and feed-forward. A stack's relative position table
[R, N] is the `relative_attention_bias` of its first block's self-attention. The one
embedding is `shared`; `encoder.embed_tokens` and `decoder.embed_tokens` are copies that
transformers ties to it, and an untied head is `lm_head`.
"""

from collections.abc import Mapping

import numpy as np

from t5x_lite.errors import ConfigError
from t5x_lite.hf import layer_layout
from t5x_lite.models.encdec.config import EncDecConfig

SHARED = "shared.weight"
LM_HEAD = "lm_head.weight"
RELATIVE_BIAS = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
FINAL_NORM = "final_layer_norm.weight"
# Tensors a checkpoint may hold that say nothing new: the tied copies of `shared`, and a
# cross-attention position table older transformers versions saved but never used.
REDUNDANT = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
             "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")

MLP = "DenseReluDense"
# Per stack: (t5x_lite sublayer, T5's layer.<j>, T5's module), in block order.
SUBLAYERS = {
    "encoder": (("attn", 0, "SelfAttention"), ("mlp", 1, MLP)),
    "decoder": (("self_attn", 0, "SelfAttention"), ("cross_attn", 1, "EncDecAttention"),
                ("mlp", 2, MLP)),
}


def stacks(cfg: EncDecConfig) -> tuple[tuple[str, int], ...]:
    """(stack name, its number of blocks)."""
    return ("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)


def sublayer_prefix(stack: str, index: int, layer: int) -> str:
    return f"{stack}.block.{index}.layer.{layer}."


def _attention_to_hf(attn: Mapping) -> dict[str, np.ndarray]:
    def heads_in(w_DNH):
        return w_DNH.reshape(w_DNH.shape[0], -1).T

    o_NHD = attn["o_NHD"]
    return {"q": heads_in(attn["q_DNH"]), "k": heads_in(attn["k_DNH"]),
            "v": heads_in(attn["v_DNH"]), "o": o_NHD.reshape(-1, o_NHD.shape[-1]).T}


def _attention_from_hf(weights: Mapping, cfg: EncDecConfig) -> dict[str, np.ndarray]:
    N, H = cfg.num_heads, cfg.head_dim

    def heads_in(w_XD):
        return w_XD.T.reshape(w_XD.shape[1], N, H)

    return {"q_DNH": heads_in(weights["q"]), "k_DNH": heads_in(weights["k"]),
            "v_DNH": heads_in(weights["v"]), "o_NHD": weights["o"].T.reshape(N, H, -1)}


def _mlp_to_hf(mlp: Mapping) -> dict[str, np.ndarray]:
    return {"wi_0": mlp["wi_0_DF"].T, "wi_1": mlp["wi_1_DF"].T, "wo": mlp["wo_FD"].T}


def _mlp_from_hf(weights: Mapping, cfg: EncDecConfig) -> dict[str, np.ndarray]:
    return {"wi_0_DF": weights["wi_0"].T, "wi_1_DF": weights["wi_1"].T, "wo_FD": weights["wo"].T}


def _module_shapes(module: str, cfg: EncDecConfig) -> dict[str, tuple[int, int]]:
    D, NH, F = cfg.embed_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim
    if module == MLP:
        return {"wi_0": (F, D), "wi_1": (F, D), "wo": (D, F)}
    return {"q": (NH, D), "k": (NH, D), "v": (NH, D), "o": (D, NH)}


def layer_to_hf(layer: Mapping, stack: str, index: int) -> dict[str, np.ndarray]:
    """One block's params (a `<stack>_layer_i` subtree, or one slice of `<stack>_blocks`)
    as T5 tensors."""
    tensors = {}
    for name, number, module in SUBLAYERS[stack]:
        prefix = sublayer_prefix(stack, index, number)
        tensors[prefix + "layer_norm.weight"] = layer[f"{name}_norm"]["scale"]
        to_hf = _mlp_to_hf if module == MLP else _attention_to_hf
        tensors.update({f"{prefix}{module}.{weight}.weight": value
                        for weight, value in to_hf(layer[name]).items()})
    return tensors


def layer_from_hf(tensors: Mapping[str, np.ndarray], stack: str, index: int,
                  cfg: EncDecConfig) -> dict:
    """The block `index` of `stack` as a t5x_lite block subtree, from T5 tensors by name."""
    layer = {}
    for name, number, module in SUBLAYERS[stack]:
        prefix = sublayer_prefix(stack, index, number)
        layer[f"{name}_norm"] = {"scale": tensors[prefix + "layer_norm.weight"]}
        weights = {weight: tensors[f"{prefix}{module}.{weight}.weight"]
                   for weight in _module_shapes(module, cfg)}
        from_hf = _mlp_from_hf if module == MLP else _attention_from_hf
        layer[name] = from_hf(weights, cfg)
    return layer


def hf_tensor_shapes(cfg: EncDecConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a `T5ForConditionalGeneration` of this shape holds, with its shape,
    but the head (`LM_HEAD`, which may be left to the tying)."""
    D = cfg.embed_dim
    shapes = {SHARED: (cfg.vocab_size, D)}
    for stack, num_layers in stacks(cfg):
        shapes[f"{stack}.{RELATIVE_BIAS}"] = (cfg.relative_buckets, cfg.num_heads)
        for index in range(num_layers):
            for _, number, module in SUBLAYERS[stack]:
                prefix = sublayer_prefix(stack, index, number)
                shapes[prefix + "layer_norm.weight"] = (D,)
                shapes.update({f"{prefix}{module}.{weight}.weight": shape
                               for weight, shape in _module_shapes(module, cfg).items()})
        shapes[f"{stack}.{FINAL_NORM}"] = (D,)
    return shapes


def stack_ends_to_hf(relpos_RN: np.ndarray, final_norm_scale: np.ndarray,
                     stack: str) -> dict[str, np.ndarray]:
    """A stack's relative position table and final norm."""
    return {f"{stack}.{RELATIVE_BIAS}": relpos_RN, f"{stack}.{FINAL_NORM}": final_norm_scale}


def params_from_hf(tensors: Mapping[str, np.ndarray], cfg: EncDecConfig) -> dict:
    """The full t5x_lite params tree (scanned or not, per `cfg.scan_layers`)."""
    params = {"embed_VD": tensors[SHARED], **_head_from_hf(tensors, cfg)}
    for stack, num_layers in stacks(cfg):
        params[f"{stack}_relpos_RN"] = tensors[f"{stack}.{RELATIVE_BIAS}"]
        params[f"{stack}_norm"] = {"scale": tensors[f"{stack}.{FINAL_NORM}"]}
        layers = [layer_from_hf(tensors, stack, index, cfg) for index in range(num_layers)]
        params.update(layer_layout.from_layers(layers, cfg.scan_layers, prefix=f"{stack}_"))
    return params


def _head_from_hf(tensors: Mapping[str, np.ndarray], cfg: EncDecConfig) -> dict:
    """`lm_head_DV` of an untied head: `lm_head`, or `shared` where the checkpoint leaves
    the head to the tying. A tied (scaled) head must be `shared` itself."""
    lm_head_VD = tensors.get(LM_HEAD)
    if not cfg.tie_embeddings:
        return {"lm_head_DV": (tensors[SHARED] if lm_head_VD is None else lm_head_VD).T}
    if lm_head_VD is not None and not np.array_equal(lm_head_VD, tensors[SHARED]):
        raise ConfigError(f"{LM_HEAD} differs from {SHARED}, but the config scales the decoder "
                          "output as for a tied head (tie_word_embeddings or "
                          "scale_decoder_outputs); t5x_lite's T5 cannot compute that.")
    return {}
