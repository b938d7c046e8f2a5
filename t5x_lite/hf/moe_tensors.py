"""The parameter mapping between t5x_lite's MoE decoder and Mixtral or Qwen3-MoE.

Pure numpy, both ways, one layer at a time. Attention, norms, the ends and a dense
layer's MLP convert as the decoder's (`convert`); so do Qwen3-MoE's query and key norms.
A routed layer's router `router_DE` is the transpose of the [E, D] `gate` Linear, and
expert e's kernels `gate_EDF[e]`, `up_EDF[e]`, `down_EFD[e]` are the transposes of its
own three Linears, stored one expert at a time as the released checkpoints store them
(transformers fuses them into `gate_up_proj` and `down_proj` when it loads them).

Scanned, the dense layers are the stack `dense_blocks` and the routed ones `blocks`;
unscanned, all are `layer_{i}` (`layer_layout`).
"""

import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np

from t5x_lite.hf import convert, layer_layout
from t5x_lite.hf.checkpoint_reader import to_host
from t5x_lite.models.moe.config import MoEConfig


@dataclasses.dataclass(frozen=True)
class ExpertNames:
    """Where an architecture keeps a routed layer's tensors, within the layer."""

    block: str  # the sparse block, holding `gate` (the router) and `experts.{e}`
    gate: str   # each expert's Linears
    up: str
    down: str


MIXTRAL_NAMES = ExpertNames("block_sparse_moe.", "w1", "w3", "w2")
QWEN3_MOE_NAMES = ExpertNames("mlp.", "gate_proj", "up_proj", "down_proj")


def stacks(cfg: MoEConfig) -> list[tuple[str, int]]:
    """The scanned stacks, in depth order: dense layers first, then routed ones."""
    dense = cfg.first_dense_layers
    return [(name, count) for name, count in (("dense_blocks", dense),
                                              ("blocks", cfg.num_layers - dense)) if count]


def _expert_prefix(names: ExpertNames, expert: int) -> str:
    return f"{names.block}experts.{expert}."


def experts_to_hf(experts: Mapping, names: ExpertNames) -> dict[str, np.ndarray]:
    """A routed layer's router and experts as HF tensors, named within the layer."""
    tensors = {f"{names.block}gate.weight": experts["router"]["router_DE"].T}
    kernels = ((names.gate, experts["gate_EDF"]), (names.up, experts["up_EDF"]),
               (names.down, experts["down_EFD"]))
    for expert in range(experts["gate_EDF"].shape[0]):
        prefix = _expert_prefix(names, expert)
        tensors.update({f"{prefix}{linear}.weight": w_EXY[expert].T for linear, w_EXY in kernels})
    return tensors


def experts_from_hf(get, cfg: MoEConfig, names: ExpertNames) -> dict:
    """The `experts` subtree; `get` reads a tensor by its name within the layer."""
    def stacked(linear):
        return np.stack([get(f"{_expert_prefix(names, expert)}{linear}.weight").T
                         for expert in range(cfg.num_experts)])

    return {"router": {"router_DE": get(f"{names.block}gate.weight").T},
            "gate_EDF": stacked(names.gate), "up_EDF": stacked(names.up),
            "down_EFD": stacked(names.down)}


def experts_shapes(cfg: MoEConfig, names: ExpertNames) -> dict[str, tuple[int, ...]]:
    D, E, F = cfg.embed_dim, cfg.num_experts, cfg.expert_mlp_dim
    shapes = {f"{names.block}gate.weight": (E, D)}
    for expert in range(E):
        prefix = _expert_prefix(names, expert)
        shapes.update({f"{prefix}{names.gate}.weight": (F, D),
                       f"{prefix}{names.up}.weight": (F, D),
                       f"{prefix}{names.down}.weight": (D, F)})
    return shapes


def layer_to_hf(layer: Mapping, index: int, names: ExpertNames) -> dict[str, np.ndarray]:
    """One block (dense or routed) as HF tensors."""
    if "experts" in layer:
        ffn = experts_to_hf(layer["experts"], names)
    else:
        ffn = convert.prefixed("mlp.", convert.mlp_to_hf(layer["mlp"]))
    return convert.prefixed(convert.layer_prefix(index),
                            {**convert.attention_to_hf(layer), **ffn})


def layer_from_hf(tensors: Mapping[str, np.ndarray], index: int, cfg: MoEConfig,
                  names: ExpertNames) -> dict:
    """The block `index` as a t5x_lite `layer_i` subtree, from HF tensors by name."""
    def get(name):
        return tensors[convert.layer_prefix(index) + name]

    layer = convert.attention_from_hf(get, cfg)
    if index < cfg.first_dense_layers:
        return {**layer, "mlp": convert.mlp_from_hf(lambda name: get("mlp." + name))}
    return {**layer, "experts": experts_from_hf(get, cfg, names)}


def hf_tensor_shapes(cfg: MoEConfig, names: ExpertNames) -> dict[str, tuple[int, ...]]:
    """Every tensor of the HF checkpoint of `cfg`, in file order, with its shape."""
    before, after = convert.end_shapes(cfg)
    shapes = dict(before)
    dense_mlp = convert.prefixed("mlp.", convert.mlp_shapes(cfg.embed_dim, cfg.mlp_dim))
    routed = experts_shapes(cfg, names)
    for index in range(cfg.num_layers):
        ffn = dense_mlp if index < cfg.first_dense_layers else routed
        shapes.update(convert.prefixed(convert.layer_prefix(index),
                                       {**convert.attention_shapes(cfg), **ffn}))
    return {**shapes, **after}


def tensors_to_hf(params: dict, cfg: MoEConfig,
                  names: ExpertNames) -> Iterator[dict[str, np.ndarray]]:
    """The params as HF tensors, the embedding, then one layer at a time, then the head."""
    yield convert.embedding_to_hf(to_host(params["embed_VD"]))
    for index, layer in layer_layout.host_layers_of_stacks(params, stacks(cfg), cfg.scan_layers):
        yield layer_to_hf(layer, index, names)
    lm_head_DV = None if cfg.tie_embeddings else to_host(params["lm_head_DV"])
    yield convert.head_to_hf(to_host(params["final_norm"]["scale"]), lm_head_DV)


def params_from_hf(tensors: Mapping[str, np.ndarray], cfg: MoEConfig,
                   names: ExpertNames) -> dict:
    """The full t5x_lite params tree (scanned or not, per `cfg.scan_layers`)."""
    layers = [layer_from_hf(tensors, index, cfg, names) for index in range(cfg.num_layers)]
    return {**convert.ends_from_hf(tensors, cfg),
            **layer_layout.from_layers_of_stacks(layers, stacks(cfg), cfg.scan_layers)}
