"""A model family's Hugging Face mapping: the interface each mapping implements.

Export and import are generic: they ask the mapping of the checkpoint's family (or of
the HF config's `model_type`) for the config both ways and for the tensors both ways,
one layer at a time on the way out. A family may have several mappings (the MoE
decoder's Mixtral and Qwen3-MoE); `chosen_for_export` says which one a config exports as.
"""

import abc
import dataclasses
from collections.abc import Iterator, Mapping, Set

import numpy as np


@dataclasses.dataclass(frozen=True)
class TokenIds:
    """The special token ids the HF configs carry."""

    bos: int | list[int] | None = None
    eos: int | list[int] | None = 1
    pad: int | list[int] | None = 0


def token_ids_from_hf(hf_config: dict) -> TokenIds:
    return TokenIds(bos=hf_config.get("bos_token_id"), eos=hf_config.get("eos_token_id"),
                    pad=hf_config.get("pad_token_id"))


class HFMapping(abc.ABC):
    """How one family's checkpoints read and write as one `transformers` architecture."""

    family: str          # the t5x_lite family name
    model_type: str      # the HF config's model_type
    architecture: str    # the transformers class, as config.json names it
    gin_fields: tuple[str, ...]  # the config fields an imported model's gin file binds

    def chosen_for_export(self, cfg) -> bool:
        """Whether export-hf writes `cfg` as this architecture. A family's mappings are
        asked in `mappings.MAPPINGS` order; its last one takes what no other took."""
        return True

    @abc.abstractmethod
    def check_expressible(self, cfg) -> None:
        """Raises ConfigError if the HF architecture cannot compute what `cfg` computes."""

    @abc.abstractmethod
    def config_to_hf(self, cfg, *, dtype: str, token_ids: TokenIds,
                     max_position_embeddings: int) -> dict:
        """The HF `config.json`."""

    @abc.abstractmethod
    def generation_config(self, token_ids: TokenIds) -> dict:
        """The HF `generation_config.json`."""

    @abc.abstractmethod
    def tensors_to_hf(self, params: dict, cfg) -> Iterator[dict[str, np.ndarray]]:
        """The params as HF tensors by name, a few at a time (one layer at most)."""

    @abc.abstractmethod
    def config_from_hf(self, hf_config: dict, scan_layers: bool, where: str):
        """The family config of an HF `config.json`; ConfigError if unsupported."""

    @abc.abstractmethod
    def hf_tensor_shapes(self, cfg) -> dict[str, tuple[int, ...]]:
        """Every tensor the HF checkpoint of `cfg` must hold, with its shape."""

    @abc.abstractmethod
    def optional_tensors(self, cfg) -> set[str]:
        """Tensors an HF checkpoint may hold beyond `hf_tensor_shapes`."""

    def tensors_to_read(self, cfg, present: Set[str]) -> dict[str, tuple[int, ...]]:
        """The tensors `params_from_hf` needs, with their shapes, of those `present` in the
        checkpoint: by default the required ones (optional tensors are ignored)."""
        return self.hf_tensor_shapes(cfg)

    @abc.abstractmethod
    def params_from_hf(self, tensors: Mapping[str, np.ndarray], cfg) -> dict:
        """The family's params tree from HF tensors by name."""

    def model_gin(self, cfg, hf_dir: str, model_dir: str) -> str:
        """Gin bindings of the imported model's config."""
        name = type(cfg).__name__
        lines = [f"# The model of the {self.architecture} checkpoint imported from {hf_dir}.",
                 f"# Fine-tune: use this file in place of a models/{self.family}/*.gin file "
                 "and set",
                 f"# INITIAL_CHECKPOINT_PATH = '{model_dir}' (with a new MODEL_DIR).",
                 f"train.model_config = @{name}()"]
        lines += [f"{name}.{field} = {getattr(cfg, field)!r}" for field in self.gin_fields]
        return "\n".join(lines) + "\n"
