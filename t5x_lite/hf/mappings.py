"""The families with a Hugging Face mapping, found for a checkpoint (by family name and
config) or by HF model_type."""

from t5x_lite.errors import ConfigError
from t5x_lite.hf.llama import LLAMA
from t5x_lite.hf.mapping import HFMapping
from t5x_lite.hf.moe import MIXTRAL, QWEN3_MOE
from t5x_lite.hf.t5 import T5

# A family's mappings in the order export asks them (`HFMapping.chosen_for_export`).
MAPPINGS: tuple[HFMapping, ...] = (LLAMA, T5, QWEN3_MOE, MIXTRAL)


def for_export(family: str, cfg) -> HFMapping:
    """The mapping a checkpoint of `family` and config `cfg` exports as."""
    candidates = [mapping for mapping in MAPPINGS if mapping.family == family]
    if not candidates:
        raise ConfigError(f"the {family!r} model family has no Hugging Face mapping; families "
                          f"with one: {sorted({m.family for m in MAPPINGS})}.")
    return next((mapping for mapping in candidates if mapping.chosen_for_export(cfg)),
                candidates[-1])


def for_model_type(model_type: str | None, where: str) -> HFMapping:
    for mapping in MAPPINGS:
        if mapping.model_type == model_type:
            return mapping
    known = " or ".join(repr(m.model_type) for m in MAPPINGS)
    raise ConfigError(f"{where}: model_type is {model_type!r}, not {known}; t5x_lite imports "
                      "only those architectures.")
