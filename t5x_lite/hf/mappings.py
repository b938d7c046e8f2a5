"""The families with a Hugging Face mapping, found by family name or by HF model_type."""

from t5x_lite.errors import ConfigError
from t5x_lite.hf.llama import LLAMA
from t5x_lite.hf.mapping import HFMapping
from t5x_lite.hf.t5 import T5

MAPPINGS: tuple[HFMapping, ...] = (LLAMA, T5)


def for_family(family: str) -> HFMapping:
    for mapping in MAPPINGS:
        if mapping.family == family:
            return mapping
    raise ConfigError(f"the {family!r} model family has no Hugging Face mapping; families "
                      f"with one: {sorted(m.family for m in MAPPINGS)}.")


def for_model_type(model_type: str | None, where: str) -> HFMapping:
    for mapping in MAPPINGS:
        if mapping.model_type == model_type:
            return mapping
    known = " or ".join(repr(m.model_type) for m in MAPPINGS)
    raise ConfigError(f"{where}: model_type is {model_type!r}, not {known}; t5x_lite imports "
                      "only those architectures.")

