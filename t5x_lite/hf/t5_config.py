"""The model config, both ways: t5x_lite's `EncDecConfig` <-> a T5 `config.json` dict.

t5x_lite's encoder-decoder is T5 v1.1: gated-GELU feed-forward (tanh GELU, which
transformers calls `gelu_new`), relative position buckets, RMS norms, no biases.

The head: transformers ties `lm_head` to the embedding unless the checkpoint holds
a different `lm_head.weight`, and scales the decoder output by d_model**-0.5 when
`scale_decoder_outputs` (which transformers 5 derives from `tie_word_embeddings`
when absent; transformers 4 ties and scales by `tie_word_embeddings` alone). A tied
t5x_lite head scales, an untied one does not, so writing sets both fields to
`tie_embeddings`, and reading takes the scaling as the tying.
"""

from t5x_lite.errors import ConfigError
from t5x_lite.hf.mapping import TokenIds
from t5x_lite.models.encdec.config import EncDecConfig
from t5x_lite.models.encdec.family import START_ID

ARCHITECTURE = "T5ForConditionalGeneration"
FEED_FORWARD_PROJ = "gated-gelu"
ACTIVATION = "gelu_new"  # what transformers runs for "gated-gelu": GELU, tanh approximation
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


def check_expressible(cfg: EncDecConfig) -> None:
    """Raises ConfigError for an encoder-decoder that a T5 config cannot describe."""
    if cfg.vocab_size is None:
        raise ConfigError("the checkpoint's model config has no resolved vocab_size; it "
                          "was not written by a t5x_lite training run.")


def to_t5(cfg: EncDecConfig, *, dtype: str, token_ids: TokenIds) -> dict:
    """The `config.json` of a `T5ForConditionalGeneration` computing what `cfg` computes."""
    check_expressible(cfg)
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "t5",
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.embed_dim,
        "d_kv": cfg.head_dim,
        "d_ff": cfg.mlp_dim,
        "num_layers": cfg.num_encoder_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance,
        "feed_forward_proj": FEED_FORWARD_PROJ,
        "is_gated_act": True,
        "dense_act_fn": ACTIVATION,
        "layer_norm_epsilon": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "scale_decoder_outputs": cfg.tie_embeddings,
        "dropout_rate": 0.0,
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "decoder_start_token_id": START_ID,
        "eos_token_id": token_ids.eos,
        "pad_token_id": token_ids.pad,
        "use_cache": True,
        "dtype": dtype,
    }


def generation_config(token_ids: TokenIds) -> dict:
    """`generation_config.json`: the decoder's start id, and which ids end and pad."""
    return {"decoder_start_token_id": START_ID, "eos_token_id": token_ids.eos,
            "pad_token_id": token_ids.pad}


def _activation(t5: dict) -> tuple[bool, str]:
    """(gated, activation) as transformers reads them: from `feed_forward_proj`, unless
    the config spells out `is_gated_act` and `dense_act_fn`."""
    proj = t5.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    activation = ACTIVATION if proj == FEED_FORWARD_PROJ else parts[-1]
    return (bool(t5.get("is_gated_act", parts[0] == "gated")),
            t5.get("dense_act_fn", activation))


def _check_supported(t5: dict, where: str) -> None:
    def unsupported(what: str):
        return ConfigError(f"{where}: {what}; t5x_lite imports only T5 v1.1 models "
                           "(gated-GELU feed-forward, no biases), such as google/t5-v1_1-*.")

    if t5.get("model_type") != "t5":
        raise unsupported(f"model_type is {t5.get('model_type')!r}, not 't5'")
    gated, activation = _activation(t5)
    proj = t5.get("feed_forward_proj", "relu")
    if not gated:
        what = "is_gated_act is false" if proj.startswith("gated-") else (
            f"feed_forward_proj is {proj!r}")
        raise unsupported(f"{what}: an ungated feed-forward, as in the original T5")
    if activation not in _TANH_GELUS:
        raise unsupported(f"the gated feed-forward's activation is {activation!r}")
    if t5.get("quantization_config"):
        raise unsupported("the weights are quantized")


def scales_decoder_output(t5: dict) -> bool:
    """Whether transformers multiplies the decoder output by d_model**-0.5."""
    return bool(t5.get("scale_decoder_outputs", t5.get("tie_word_embeddings", True) is not False))


def from_t5(t5: dict, scan_layers: bool, where: str) -> EncDecConfig:
    """The `EncDecConfig` of a T5 `config.json` dict; ConfigError if unsupported."""
    _check_supported(t5, where)
    try:
        return EncDecConfig(
            num_encoder_layers=t5["num_layers"],
            num_decoder_layers=t5.get("num_decoder_layers") or t5["num_layers"],
            embed_dim=t5["d_model"],
            num_heads=t5["num_heads"],
            head_dim=t5["d_kv"],
            mlp_dim=t5["d_ff"],
            vocab_size=t5["vocab_size"],
            relative_buckets=t5.get("relative_attention_num_buckets", 32),
            relative_max_distance=t5.get("relative_attention_max_distance", 128),
            norm_eps=float(t5.get("layer_norm_epsilon", 1e-6)),
            tie_embeddings=scales_decoder_output(t5),
            scan_layers=scan_layers,
        )
    except KeyError as missing:
        raise ConfigError(f"{where} has no {missing}; it is not a complete T5 config.") from None
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
