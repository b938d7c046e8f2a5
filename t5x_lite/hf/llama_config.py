"""The model config, both ways: t5x_lite's `DecoderConfig` <-> a Llama `config.json` dict.

Writing: `rope_theta` goes both at the top level and inside `rope_parameters` (the
field current `transformers` reads), and `tie_word_embeddings` is always explicit.
Reading: only what the t5x_lite decoder computes is accepted; anything else (rope
scaling, biases, another activation, another model type) is a one-line ConfigError.
The fields Llama shares with Mixtral and Qwen3-MoE are read and written here for those
too (`decoder_fields`, `check_decoder_fields`, `decoder_kwargs`).
"""

from t5x_lite.errors import ConfigError
from t5x_lite.hf.mapping import TokenIds
from t5x_lite.models.decoder.config import DecoderConfig

ARCHITECTURE = "LlamaForCausalLM"
# Llama's defaults for fields a config.json may leave out.
_LLAMA_DEFAULTS = {"rms_norm_eps": 1e-6, "rope_theta": 10000.0}


def check_resolved(cfg: DecoderConfig) -> None:
    if cfg.vocab_size is None:
        raise ConfigError("the checkpoint's model config has no resolved vocab_size; it "
                          "was not written by a t5x_lite training run.")


def check_expressible(cfg: DecoderConfig) -> None:
    """Raises ConfigError for a decoder that a Llama config cannot describe."""
    check_resolved(cfg)
    if cfg.embed_dim % cfg.num_heads:
        raise ConfigError(
            f"transformers' Llama needs hidden_size divisible by num_attention_heads, but "
            f"embed_dim={cfg.embed_dim} and num_heads={cfg.num_heads}; this checkpoint "
            "cannot be exported as Llama.")
    if cfg.qk_norm:
        raise ConfigError("LlamaForCausalLM cannot express qk_norm (query and key norms); "
                          "this checkpoint cannot be exported as Llama.")


def decoder_fields(cfg: DecoderConfig, *, dtype: str, token_ids: TokenIds,
                   max_position_embeddings: int) -> dict:
    """The `config.json` fields Llama shares with its descendants (Mixtral, Qwen3-MoE):
    shape, norms, rotary embedding, head, special ids."""
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": 0.0,
        "max_position_embeddings": max_position_embeddings,
        "initializer_range": cfg.init_std,
        "bos_token_id": token_ids.bos,
        "eos_token_id": token_ids.eos,
        "pad_token_id": token_ids.pad,
        "use_cache": True,
        "dtype": dtype,
    }


def to_llama(cfg: DecoderConfig, *, dtype: str, token_ids: TokenIds,
             max_position_embeddings: int) -> dict:
    """The `config.json` of a `LlamaForCausalLM` computing what `cfg` computes."""
    check_expressible(cfg)
    return {"architectures": [ARCHITECTURE], "model_type": "llama",
            **decoder_fields(cfg, dtype=dtype, token_ids=token_ids,
                             max_position_embeddings=max_position_embeddings),
            "intermediate_size": cfg.mlp_dim, "attention_bias": False, "mlp_bias": False}


def check_decoder_fields(hf_config: dict, unsupported) -> None:
    """Raises `unsupported(what)` for what the shared fields say t5x_lite cannot compute:
    another activation, biases, scaled or partial rotary embeddings, quantized weights."""
    if hf_config.get("hidden_act", "silu") != "silu":
        raise unsupported(f"hidden_act is {hf_config.get('hidden_act')!r}")
    for bias in ("attention_bias", "mlp_bias"):
        if hf_config.get(bias, False):
            raise unsupported(f"{bias} is set")
    rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise unsupported(f"rope scaling {rope.get('rope_type', rope.get('type'))!r} is used")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise unsupported("a partial rotary factor is used")
    if hf_config.get("quantization_config"):
        raise unsupported("the weights are quantized")


def _check_supported(llama: dict, where: str) -> None:
    def unsupported(what: str):
        return ConfigError(f"{where}: {what}; t5x_lite imports only plain Llama models "
                           "(SiLU MLP, no biases, unscaled rotary embeddings).")

    if llama.get("model_type") != "llama":
        raise unsupported(f"model_type is {llama.get('model_type')!r}, not 'llama'")
    check_decoder_fields(llama, unsupported)


def decoder_kwargs(hf_config: dict, defaults: dict, scan_layers: bool) -> dict:
    """`DecoderConfig` fields of the shared `config.json` fields; `defaults` holds the
    architecture's `rms_norm_eps` and `rope_theta` for a config that leaves them out."""
    heads = hf_config["num_attention_heads"]
    rope = hf_config.get("rope_parameters") or {}
    rope_theta = rope.get("rope_theta", hf_config.get("rope_theta", defaults["rope_theta"]))
    return dict(
        num_layers=hf_config["num_hidden_layers"],
        embed_dim=hf_config["hidden_size"],
        num_heads=heads,
        num_kv_heads=hf_config.get("num_key_value_heads") or heads,
        head_dim=hf_config.get("head_dim") or hf_config["hidden_size"] // heads,
        mlp_dim=hf_config["intermediate_size"],
        vocab_size=hf_config["vocab_size"],
        rope_theta=float(rope_theta),
        norm_eps=float(hf_config.get("rms_norm_eps", defaults["rms_norm_eps"])),
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        init_std=float(hf_config.get("initializer_range", 0.02)),
        scan_layers=scan_layers,
    )


def from_llama(llama: dict, scan_layers: bool, where: str) -> DecoderConfig:
    """The `DecoderConfig` of a Llama `config.json` dict; ConfigError if unsupported."""
    _check_supported(llama, where)
    return DecoderConfig(**decoder_kwargs(llama, _LLAMA_DEFAULTS, scan_layers))


def generation_config(token_ids: TokenIds) -> dict:
    """`generation_config.json`: which ids end and pad a generation."""
    config = {"eos_token_id": token_ids.eos, "pad_token_id": token_ids.pad}
    if token_ids.bos is not None:
        config["bos_token_id"] = token_ids.bos
    return config
