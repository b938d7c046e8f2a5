"""The parameter mapping between t5x_lite's decoder and Hugging Face `LlamaForCausalLM`.

Pure numpy, both ways, one layer at a time.

t5x_lite keeps projections as [in, ...out] einsum kernels (`q_DNH`: embed, heads,
head_dim); `torch.nn.Linear` keeps [out, in] with the head axes flattened, heads
major: `q_proj.weight[n * H + h, d] == q_DNH[d, n, h]`. So a projection converts by a
reshape and a transpose, nothing more.

Rotary embeddings need no permutation: t5x_lite rotates each head in the
half-rotation convention (dimension j pairs with j + H/2, frequencies
theta^(-2j/H)), which is what `transformers`' Llama does (`rotate_half`). A
checkpoint in the interleaved convention (dimension 2j pairs with 2j + 1, as in
Meta's original release) would need its q/k head dims permuted; neither side here
uses it.
"""

from collections.abc import Mapping

import numpy as np

from t5x_lite.hf import layer_layout
from t5x_lite.models.decoder.config import DecoderConfig

EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"


def layer_prefix(index: int) -> str:
    return f"model.layers.{index}."


def _heads_in_to_hf(w_DXH: np.ndarray) -> np.ndarray:
    """[D, heads, H] kernel -> [heads * H, D] Linear weight."""
    return w_DXH.reshape(w_DXH.shape[0], -1).T


def _heads_in_from_hf(w_XD: np.ndarray, heads: int, head_dim: int) -> np.ndarray:
    return w_XD.T.reshape(w_XD.shape[1], heads, head_dim)


def _heads_out_to_hf(w_NHD: np.ndarray) -> np.ndarray:
    """[N, H, D] kernel -> [D, N * H] Linear weight."""
    return w_NHD.reshape(-1, w_NHD.shape[-1]).T


def _heads_out_from_hf(w_DX: np.ndarray, heads: int, head_dim: int) -> np.ndarray:
    return w_DX.T.reshape(heads, head_dim, w_DX.shape[0])


def layer_to_hf(layer: Mapping, index: int) -> dict[str, np.ndarray]:
    """One block's params (a `layer_i` subtree, or one slice of `blocks`) as HF tensors."""
    attn, mlp = layer["attn"], layer["mlp"]
    tensors = {
        "input_layernorm.weight": layer["attn_norm"]["scale"],
        "self_attn.q_proj.weight": _heads_in_to_hf(attn["q_DNH"]),
        "self_attn.k_proj.weight": _heads_in_to_hf(attn["k_DKH"]),
        "self_attn.v_proj.weight": _heads_in_to_hf(attn["v_DKH"]),
        "self_attn.o_proj.weight": _heads_out_to_hf(attn["o_NHD"]),
        "post_attention_layernorm.weight": layer["mlp_norm"]["scale"],
        "mlp.gate_proj.weight": mlp["gate_DF"].T,
        "mlp.up_proj.weight": mlp["up_DF"].T,
        "mlp.down_proj.weight": mlp["down_FD"].T,
    }
    return {layer_prefix(index) + name: value for name, value in tensors.items()}


def layer_from_hf(tensors: Mapping[str, np.ndarray], index: int,
                  cfg: DecoderConfig) -> dict:
    """The block `index` as a t5x_lite `layer_i` subtree, from HF tensors by name."""
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def get(name):
        return tensors[layer_prefix(index) + name]

    return {
        "attn_norm": {"scale": get("input_layernorm.weight")},
        "attn": {
            "q_DNH": _heads_in_from_hf(get("self_attn.q_proj.weight"), N, H),
            "k_DKH": _heads_in_from_hf(get("self_attn.k_proj.weight"), K, H),
            "v_DKH": _heads_in_from_hf(get("self_attn.v_proj.weight"), K, H),
            "o_NHD": _heads_out_from_hf(get("self_attn.o_proj.weight"), N, H),
        },
        "mlp_norm": {"scale": get("post_attention_layernorm.weight")},
        "mlp": {
            "gate_DF": get("mlp.gate_proj.weight").T,
            "up_DF": get("mlp.up_proj.weight").T,
            "down_FD": get("mlp.down_proj.weight").T,
        },
    }


def hf_tensor_shapes(cfg: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a `LlamaForCausalLM` of this shape, in file order, with its shape."""
    D, N, K, H, F = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    layer = {
        "input_layernorm.weight": (D,),
        "self_attn.q_proj.weight": (N * H, D),
        "self_attn.k_proj.weight": (K * H, D),
        "self_attn.v_proj.weight": (K * H, D),
        "self_attn.o_proj.weight": (D, N * H),
        "post_attention_layernorm.weight": (D,),
        "mlp.gate_proj.weight": (F, D),
        "mlp.up_proj.weight": (F, D),
        "mlp.down_proj.weight": (D, F),
    }
    shapes = {EMBED: (cfg.vocab_size, D)}
    for index in range(cfg.num_layers):
        shapes.update({layer_prefix(index) + name: shape for name, shape in layer.items()})
    shapes[FINAL_NORM] = (D,)
    if not cfg.tie_embeddings:
        shapes[LM_HEAD] = (cfg.vocab_size, D)
    return shapes


def embedding_to_hf(embed_VD: np.ndarray) -> dict[str, np.ndarray]:
    return {EMBED: embed_VD}


def head_to_hf(final_norm_scale: np.ndarray, lm_head_DV: np.ndarray | None) -> dict:
    """The final norm, and the output projection unless the embeddings are tied."""
    tensors = {FINAL_NORM: final_norm_scale}
    if lm_head_DV is not None:
        tensors[LM_HEAD] = lm_head_DV.T
    return tensors


def params_from_hf(tensors: Mapping[str, np.ndarray], cfg: DecoderConfig) -> dict:
    """The full t5x_lite params tree (scanned or not, per `cfg.scan_layers`)."""
    layers = [layer_from_hf(tensors, index, cfg) for index in range(cfg.num_layers)]
    params = {"embed_VD": tensors[EMBED], "final_norm": {"scale": tensors[FINAL_NORM]},
              **layer_layout.from_layers(layers, cfg.scan_layers)}
    if not cfg.tie_embeddings:
        params["lm_head_DV"] = tensors[LM_HEAD].T
    return params

