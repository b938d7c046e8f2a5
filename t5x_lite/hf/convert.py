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


def attention_to_hf(layer: Mapping) -> dict[str, np.ndarray]:
    """A block's two norms and attention (with its q/k norms if it has them) as HF
    tensors, named within the layer."""
    attn = layer["attn"]
    tensors = {
        "input_layernorm.weight": layer["attn_norm"]["scale"],
        "self_attn.q_proj.weight": _heads_in_to_hf(attn["q_DNH"]),
        "self_attn.k_proj.weight": _heads_in_to_hf(attn["k_DKH"]),
        "self_attn.v_proj.weight": _heads_in_to_hf(attn["v_DKH"]),
        "self_attn.o_proj.weight": _heads_out_to_hf(attn["o_NHD"]),
        "post_attention_layernorm.weight": layer["mlp_norm"]["scale"],
    }
    if "q_norm" in attn:
        tensors["self_attn.q_norm.weight"] = attn["q_norm"]["scale"]
        tensors["self_attn.k_norm.weight"] = attn["k_norm"]["scale"]
    return tensors


def attention_from_hf(get, cfg: DecoderConfig) -> dict:
    """A block's `attn_norm`, `attn` and `mlp_norm` subtrees; `get` reads a tensor by its
    name within the layer."""
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    attn = {
        "q_DNH": _heads_in_from_hf(get("self_attn.q_proj.weight"), N, H),
        "k_DKH": _heads_in_from_hf(get("self_attn.k_proj.weight"), K, H),
        "v_DKH": _heads_in_from_hf(get("self_attn.v_proj.weight"), K, H),
        "o_NHD": _heads_out_from_hf(get("self_attn.o_proj.weight"), N, H),
    }
    if cfg.qk_norm:
        attn["q_norm"] = {"scale": get("self_attn.q_norm.weight")}
        attn["k_norm"] = {"scale": get("self_attn.k_norm.weight")}
    return {"attn_norm": {"scale": get("input_layernorm.weight")}, "attn": attn,
            "mlp_norm": {"scale": get("post_attention_layernorm.weight")}}


def attention_shapes(cfg: DecoderConfig) -> dict[str, tuple[int, ...]]:
    D, N, K, H = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    shapes = {
        "input_layernorm.weight": (D,),
        "self_attn.q_proj.weight": (N * H, D),
        "self_attn.k_proj.weight": (K * H, D),
        "self_attn.v_proj.weight": (K * H, D),
        "self_attn.o_proj.weight": (D, N * H),
        "post_attention_layernorm.weight": (D,),
    }
    if cfg.qk_norm:
        shapes.update({"self_attn.q_norm.weight": (H,), "self_attn.k_norm.weight": (H,)})
    return shapes


def mlp_to_hf(mlp: Mapping) -> dict[str, np.ndarray]:
    """A SwiGLU MLP (`gate_DF`, `up_DF`, `down_FD`) as HF Linear weights, named within it."""
    return {"gate_proj.weight": mlp["gate_DF"].T, "up_proj.weight": mlp["up_DF"].T,
            "down_proj.weight": mlp["down_FD"].T}


def mlp_from_hf(get) -> dict[str, np.ndarray]:
    return {"gate_DF": get("gate_proj.weight").T, "up_DF": get("up_proj.weight").T,
            "down_FD": get("down_proj.weight").T}


def mlp_shapes(embed_dim: int, mlp_dim: int) -> dict[str, tuple[int, ...]]:
    return {"gate_proj.weight": (mlp_dim, embed_dim), "up_proj.weight": (mlp_dim, embed_dim),
            "down_proj.weight": (embed_dim, mlp_dim)}


def prefixed(prefix: str, tensors: Mapping) -> dict:
    return {prefix + name: value for name, value in tensors.items()}


def layer_to_hf(layer: Mapping, index: int) -> dict[str, np.ndarray]:
    """One block's params (a `layer_i` subtree, or one slice of `blocks`) as HF tensors."""
    return prefixed(layer_prefix(index),
                    {**attention_to_hf(layer), **prefixed("mlp.", mlp_to_hf(layer["mlp"]))})


def layer_from_hf(tensors: Mapping[str, np.ndarray], index: int,
                  cfg: DecoderConfig) -> dict:
    """The block `index` as a t5x_lite `layer_i` subtree, from HF tensors by name."""
    def get(name):
        return tensors[layer_prefix(index) + name]

    return {**attention_from_hf(get, cfg), "mlp": mlp_from_hf(lambda name: get("mlp." + name))}


def layer_shapes(cfg: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """The HF tensors of one dense block, named within the layer, with their shapes."""
    return {**attention_shapes(cfg),
            **prefixed("mlp.", mlp_shapes(cfg.embed_dim, cfg.mlp_dim))}


def end_shapes(cfg: DecoderConfig) -> tuple[dict, dict]:
    """(the shapes before the layers, the shapes after them): embedding; final norm and
    the head unless tied."""
    D, V = cfg.embed_dim, cfg.vocab_size
    after = {FINAL_NORM: (D,)}
    if not cfg.tie_embeddings:
        after[LM_HEAD] = (V, D)
    return {EMBED: (V, D)}, after


def hf_tensor_shapes(cfg: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a `LlamaForCausalLM` of this shape, in file order, with its shape."""
    before, after = end_shapes(cfg)
    shapes = dict(before)
    for index in range(cfg.num_layers):
        shapes.update(prefixed(layer_prefix(index), layer_shapes(cfg)))
    return {**shapes, **after}


def embedding_to_hf(embed_VD: np.ndarray) -> dict[str, np.ndarray]:
    return {EMBED: embed_VD}


def head_to_hf(final_norm_scale: np.ndarray, lm_head_DV: np.ndarray | None) -> dict:
    """The final norm, and the output projection unless the embeddings are tied."""
    tensors = {FINAL_NORM: final_norm_scale}
    if lm_head_DV is not None:
        tensors[LM_HEAD] = lm_head_DV.T
    return tensors


def ends_from_hf(tensors: Mapping[str, np.ndarray], cfg: DecoderConfig) -> dict:
    """The params outside the layers: embedding, final norm, and the head unless tied."""
    params = {"embed_VD": tensors[EMBED], "final_norm": {"scale": tensors[FINAL_NORM]}}
    if not cfg.tie_embeddings:
        params["lm_head_DV"] = tensors[LM_HEAD].T
    return params


def params_from_hf(tensors: Mapping[str, np.ndarray], cfg: DecoderConfig) -> dict:
    """The full t5x_lite params tree (scanned or not, per `cfg.scan_layers`)."""
    layers = [layer_from_hf(tensors, index, cfg) for index in range(cfg.num_layers)]
    return {**ends_from_hf(tensors, cfg), **layer_layout.from_layers(layers, cfg.scan_layers)}
