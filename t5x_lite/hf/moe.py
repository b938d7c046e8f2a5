"""The MoE family's Hugging Face mappings: `MixtralForCausalLM` and `Qwen3MoeForCausalLM`.

A moe checkpoint with `qk_norm` exports as Qwen3-MoE, one without as Mixtral; import
goes by the config's `model_type`.
"""

from collections.abc import Iterator, Mapping

import numpy as np

from t5x_lite.hf import convert, llama_config, moe_config, moe_tensors
from t5x_lite.hf.mapping import HFMapping
from t5x_lite.hf.moe_tensors import ExpertNames


class MoEMapping(HFMapping):
    """What Mixtral and Qwen3-MoE share: Llama's attention, norms and ends, and routed
    layers whose tensors differ only in name (`names`)."""

    family = "moe"
    gin_fields = ("num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                  "vocab_size", "rope_theta", "norm_eps", "tie_embeddings", "qk_norm",
                  "first_dense_layers", "num_experts", "experts_per_token", "expert_mlp_dim",
                  "router", "normalize_top_k", "load_balance_loss", "scan_layers")
    names: ExpertNames

    def generation_config(self, token_ids) -> dict:
        return llama_config.generation_config(token_ids)

    def tensors_to_hf(self, params: dict, cfg) -> Iterator[dict[str, np.ndarray]]:
        return moe_tensors.tensors_to_hf(params, cfg, self.names)

    def hf_tensor_shapes(self, cfg) -> dict[str, tuple[int, ...]]:
        return moe_tensors.hf_tensor_shapes(cfg, self.names)

    def optional_tensors(self, cfg) -> set[str]:
        return {convert.LM_HEAD}

    def params_from_hf(self, tensors: Mapping[str, np.ndarray], cfg) -> dict:
        return moe_tensors.params_from_hf(tensors, cfg, self.names)


class MixtralMapping(MoEMapping):
    model_type = "mixtral"
    architecture = moe_config.MIXTRAL
    names = moe_tensors.MIXTRAL_NAMES

    def check_expressible(self, cfg) -> None:
        moe_config.check_expressible(cfg, self.architecture, moe_config.mixtral_problems(cfg))

    def config_to_hf(self, cfg, *, dtype: str, token_ids, max_position_embeddings: int) -> dict:
        return moe_config.to_mixtral(cfg, dtype=dtype, token_ids=token_ids,
                                     max_position_embeddings=max_position_embeddings)

    def config_from_hf(self, hf_config: dict, scan_layers: bool, where: str):
        return moe_config.from_mixtral(hf_config, scan_layers, where)


class Qwen3MoeMapping(MoEMapping):
    model_type = "qwen3_moe"
    architecture = moe_config.QWEN3_MOE
    names = moe_tensors.QWEN3_MOE_NAMES

    def chosen_for_export(self, cfg) -> bool:
        return cfg.qk_norm

    def check_expressible(self, cfg) -> None:
        moe_config.check_expressible(cfg, self.architecture, moe_config.qwen3_moe_problems(cfg))

    def config_to_hf(self, cfg, *, dtype: str, token_ids, max_position_embeddings: int) -> dict:
        return moe_config.to_qwen3_moe(cfg, dtype=dtype, token_ids=token_ids,
                                       max_position_embeddings=max_position_embeddings)

    def config_from_hf(self, hf_config: dict, scan_layers: bool, where: str):
        return moe_config.from_qwen3_moe(hf_config, scan_layers, where)


MIXTRAL = MixtralMapping()
QWEN3_MOE = Qwen3MoeMapping()
