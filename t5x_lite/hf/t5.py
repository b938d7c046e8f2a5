"""The encoder-decoder family's Hugging Face mapping: `T5ForConditionalGeneration` (T5 v1.1)."""

from collections.abc import Iterator, Mapping, Set

import numpy as np

from t5x_lite.hf import layer_layout, t5_config, t5_tensors
from t5x_lite.hf.checkpoint_reader import to_host
from t5x_lite.hf.mapping import HFMapping


class T5Mapping(HFMapping):
    family = "encdec"
    model_type = "t5"
    architecture = t5_config.ARCHITECTURE
    gin_fields = ("num_encoder_layers", "num_decoder_layers", "embed_dim", "num_heads", "head_dim",
                  "mlp_dim", "vocab_size", "relative_buckets", "relative_max_distance", "norm_eps",
                  "tie_embeddings", "scan_layers")

    def check_expressible(self, cfg) -> None:
        t5_config.check_expressible(cfg)

    def config_to_hf(self, cfg, *, dtype: str, token_ids, max_position_embeddings: int) -> dict:
        # T5's positions are relative: no maximum length to record.
        return t5_config.to_t5(cfg, dtype=dtype, token_ids=token_ids)

    def generation_config(self, token_ids) -> dict:
        return t5_config.generation_config(token_ids)

    def tensors_to_hf(self, params: dict, cfg) -> Iterator[dict[str, np.ndarray]]:
        yield {t5_tensors.SHARED: to_host(params["embed_VD"])}
        for stack, num_layers in t5_tensors.stacks(cfg):
            yield t5_tensors.stack_ends_to_hf(to_host(params[f"{stack}_relpos_RN"]),
                                              to_host(params[f"{stack}_norm"]["scale"]), stack)
            for index, layer in layer_layout.host_layers(params, num_layers, cfg.scan_layers,
                                                         prefix=f"{stack}_"):
                yield t5_tensors.layer_to_hf(layer, stack, index)
        if not cfg.tie_embeddings:
            yield {t5_tensors.LM_HEAD: to_host(params["lm_head_DV"]).T}

    def config_from_hf(self, hf_config: dict, scan_layers: bool, where: str):
        return t5_config.from_t5(hf_config, scan_layers, where)

    def hf_tensor_shapes(self, cfg) -> dict[str, tuple[int, ...]]:
        return t5_tensors.hf_tensor_shapes(cfg)

    def optional_tensors(self, cfg) -> set[str]:
        return {t5_tensors.LM_HEAD, *t5_tensors.REDUNDANT}

    def tensors_to_read(self, cfg, present: Set[str]) -> dict[str, tuple[int, ...]]:
        shapes = self.hf_tensor_shapes(cfg)
        if t5_tensors.LM_HEAD in present:
            shapes[t5_tensors.LM_HEAD] = (cfg.vocab_size, cfg.embed_dim)
        return shapes

    def params_from_hf(self, tensors: Mapping[str, np.ndarray], cfg) -> dict:
        return t5_tensors.params_from_hf(tensors, cfg)


T5 = T5Mapping()
