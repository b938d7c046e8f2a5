"""The decoder family's Hugging Face mapping: `LlamaForCausalLM`."""

from collections.abc import Iterator, Mapping

import numpy as np

from t5x_lite.hf import checkpoint_reader, convert, layer_layout, llama_config
from t5x_lite.hf.mapping import HFMapping


class LlamaMapping(HFMapping):
    family = "decoder"
    model_type = "llama"
    architecture = llama_config.ARCHITECTURE
    gin_fields = ("num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                  "vocab_size", "rope_theta", "norm_eps", "tie_embeddings", "scan_layers")

    def check_expressible(self, cfg) -> None:
        llama_config.check_expressible(cfg)

    def config_to_hf(self, cfg, *, dtype: str, token_ids, max_position_embeddings: int) -> dict:
        return llama_config.to_llama(cfg, dtype=dtype, token_ids=token_ids,
                                     max_position_embeddings=max_position_embeddings)

    def generation_config(self, token_ids) -> dict:
        return llama_config.generation_config(token_ids)

    def tensors_to_hf(self, params: dict, cfg) -> Iterator[dict[str, np.ndarray]]:
        to_host = checkpoint_reader.to_host
        yield convert.embedding_to_hf(to_host(params["embed_VD"]))
        for index, layer in layer_layout.host_layers(params, cfg.num_layers, cfg.scan_layers):
            yield convert.layer_to_hf(layer, index)
        lm_head_DV = None if cfg.tie_embeddings else to_host(params["lm_head_DV"])
        yield convert.head_to_hf(to_host(params["final_norm"]["scale"]), lm_head_DV)

    def config_from_hf(self, hf_config: dict, scan_layers: bool, where: str):
        return llama_config.from_llama(hf_config, scan_layers, where)

    def hf_tensor_shapes(self, cfg) -> dict[str, tuple[int, ...]]:
        return convert.hf_tensor_shapes(cfg)

    def optional_tensors(self, cfg) -> set[str]:
        return {convert.LM_HEAD}

    def params_from_hf(self, tensors: Mapping[str, np.ndarray], cfg) -> dict:
        return convert.params_from_hf(tensors, cfg)


LLAMA = LlamaMapping()
