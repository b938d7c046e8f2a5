"""The model config, both ways: t5x_lite's `MoEConfig` <-> a Mixtral or Qwen3-MoE
`config.json` dict.

Both route by a softmax over the experts (in float32) and take the top k; Mixtral
always renormalizes the k weights, Qwen3-MoE when `norm_topk_prob`. Qwen3-MoE has
query and key norms (`qk_norm`) and keeps a dense MLP of `intermediate_size` in its
`mlp_only_layers` (and, with `decoder_sparse_step` > 1, in the layers the step skips):
t5x_lite's `first_dense_layers`, which must come first. Neither has shared experts, a
router bias or sigmoid routing. Their auxiliary loss counts an expert's assignments
over all k choices, k times t5x_lite's balancing loss, so `router_aux_loss_coef` is
`load_balance_loss / k`; it matters only to an HF fine-tune with `output_router_logits`.
Both compute every assignment, as t5x_lite decodes; a model trained with capacity
dispatch exports as it decodes.
"""

from t5x_lite.errors import ConfigError
from t5x_lite.hf import llama_config
from t5x_lite.hf.mapping import TokenIds
from t5x_lite.models.moe.config import MoEConfig

MIXTRAL = "MixtralForCausalLM"
QWEN3_MOE = "Qwen3MoeForCausalLM"
# Each architecture's defaults for fields a config.json may leave out.
_MIXTRAL_DEFAULTS = {"rms_norm_eps": 1e-5, "rope_theta": 1e6, "num_local_experts": 8,
                     "num_experts_per_tok": 2, "router_aux_loss_coef": 0.001}
_QWEN3_MOE_DEFAULTS = {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "num_experts": 128,
                       "num_experts_per_tok": 8, "moe_intermediate_size": 768,
                       "norm_topk_prob": False, "router_aux_loss_coef": 0.001}


# --- export ----------------------------------------------------------------------------

def _routing_problems(cfg: MoEConfig) -> list[str]:
    problems = []
    if cfg.router == "sigmoid":
        problems.append("sigmoid routing" + (" with a bias" if cfg.uses_router_bias else ""))
    elif cfg.uses_router_bias:
        problems.append("a router bias (bias_update_rate > 0)")
    if cfg.num_shared_experts:
        problems.append(f"shared experts (num_shared_experts={cfg.num_shared_experts})")
    return problems


def mixtral_problems(cfg: MoEConfig) -> list[str]:
    """What of `cfg` a Mixtral config cannot describe."""
    problems = _routing_problems(cfg)
    if cfg.router == "softmax" and not cfg.normalize_top_k:
        problems.append("top-k weights left unnormalized (normalize_top_k=False)")
    if cfg.first_dense_layers:
        problems.append(f"dense first layers (first_dense_layers={cfg.first_dense_layers})")
    if cfg.qk_norm:
        problems.append("qk_norm")
    return problems


def qwen3_moe_problems(cfg: MoEConfig) -> list[str]:
    """What of `cfg` a Qwen3-MoE config cannot describe."""
    problems = _routing_problems(cfg)
    if not cfg.qk_norm:
        problems.append("attention without qk_norm")
    return problems


def check_expressible(cfg: MoEConfig, architecture: str, problems: list[str]) -> None:
    llama_config.check_resolved(cfg)
    if problems:
        raise ConfigError(
            f"{architecture} cannot express {', '.join(problems)}, so this moe checkpoint "
            f"cannot be exported (export-hf writes {QWEN3_MOE} for a moe model with "
            f"qk_norm, {MIXTRAL} for one without).")


def _moe_fields(cfg: MoEConfig) -> dict:
    return {"num_experts_per_tok": cfg.experts_per_token, "output_router_logits": False,
            "router_aux_loss_coef": cfg.load_balance_loss / cfg.experts_per_token}


def to_mixtral(cfg: MoEConfig, *, dtype: str, token_ids: TokenIds,
               max_position_embeddings: int) -> dict:
    """The `config.json` of a `MixtralForCausalLM` computing what `cfg` computes."""
    check_expressible(cfg, MIXTRAL, mixtral_problems(cfg))
    return {"architectures": [MIXTRAL], "model_type": "mixtral",
            **llama_config.decoder_fields(cfg, dtype=dtype, token_ids=token_ids,
                                          max_position_embeddings=max_position_embeddings),
            **_moe_fields(cfg), "intermediate_size": cfg.expert_mlp_dim,
            "num_local_experts": cfg.num_experts, "sliding_window": None,
            "router_jitter_noise": 0.0}


def to_qwen3_moe(cfg: MoEConfig, *, dtype: str, token_ids: TokenIds,
                 max_position_embeddings: int) -> dict:
    """The `config.json` of a `Qwen3MoeForCausalLM` computing what `cfg` computes."""
    check_expressible(cfg, QWEN3_MOE, qwen3_moe_problems(cfg))
    return {"architectures": [QWEN3_MOE], "model_type": "qwen3_moe",
            **llama_config.decoder_fields(cfg, dtype=dtype, token_ids=token_ids,
                                          max_position_embeddings=max_position_embeddings),
            **_moe_fields(cfg), "intermediate_size": cfg.mlp_dim,
            "moe_intermediate_size": cfg.expert_mlp_dim, "num_experts": cfg.num_experts,
            "norm_topk_prob": cfg.normalize_top_k, "decoder_sparse_step": 1,
            "mlp_only_layers": list(range(cfg.first_dense_layers)), "attention_bias": False,
            "use_sliding_window": False, "sliding_window": None}


# --- import ----------------------------------------------------------------------------

def _unsupported(where: str, architecture: str):
    def unsupported(what: str) -> ConfigError:
        return ConfigError(f"{where}: {what}; t5x_lite imports only {architecture} models "
                           "with SiLU experts, no biases, unscaled rotary embeddings and full "
                           "attention.")
    return unsupported


def _moe_config(hf_config: dict, defaults: dict, scan_layers: bool, where: str, **moe):
    """The `MoEConfig` of the shared fields and `moe`, errors naming `where`."""
    try:
        experts_per_token = hf_config.get("num_experts_per_tok", defaults["num_experts_per_tok"])
        aux_loss_coef = hf_config.get("router_aux_loss_coef", defaults["router_aux_loss_coef"])
        return MoEConfig(**llama_config.decoder_kwargs(hf_config, defaults, scan_layers),
                         experts_per_token=experts_per_token, router="softmax",
                         load_balance_loss=float(aux_loss_coef) * experts_per_token, **moe)
    except KeyError as missing:
        raise ConfigError(f"{where} has no {missing}; it is not a complete config.") from None
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def from_mixtral(hf_config: dict, scan_layers: bool, where: str) -> MoEConfig:
    """The `MoEConfig` of a Mixtral `config.json` dict; ConfigError if unsupported."""
    unsupported = _unsupported(where, "Mixtral")
    if hf_config.get("model_type") != "mixtral":
        raise unsupported(f"model_type is {hf_config.get('model_type')!r}, not 'mixtral'")
    llama_config.check_decoder_fields(hf_config, unsupported)
    if hf_config.get("sliding_window") is not None:
        raise unsupported(f"sliding_window is {hf_config['sliding_window']}")
    return _moe_config(
        hf_config, _MIXTRAL_DEFAULTS, scan_layers, where,
        num_experts=hf_config.get("num_local_experts", _MIXTRAL_DEFAULTS["num_local_experts"]),
        expert_mlp_dim=hf_config.get("intermediate_size"), normalize_top_k=True)


def _first_dense_layers(hf_config: dict, num_experts: int, unsupported) -> int:
    """How many layers keep a dense MLP; they must be the first ones, and not all."""
    num_layers = hf_config.get("num_hidden_layers")
    if num_layers is None:
        return 0  # reported as missing with the other fields
    step = hf_config.get("decoder_sparse_step") or 1
    mlp_only = set(hf_config.get("mlp_only_layers") or ())
    dense = [layer for layer in range(num_layers)
             if layer in mlp_only or not (num_experts > 0 and (layer + 1) % step == 0)]
    if len(dense) == num_layers:
        raise unsupported("no layer has experts")
    if dense != list(range(len(dense))):
        raise unsupported(f"the dense layers {dense} (mlp_only_layers, decoder_sparse_step) "
                          "are not the first ones, as t5x_lite's first_dense_layers are")
    return len(dense)


def from_qwen3_moe(hf_config: dict, scan_layers: bool, where: str) -> MoEConfig:
    """The `MoEConfig` of a Qwen3-MoE `config.json` dict; ConfigError if unsupported."""
    unsupported = _unsupported(where, "Qwen3-MoE")
    if hf_config.get("model_type") != "qwen3_moe":
        raise unsupported(f"model_type is {hf_config.get('model_type')!r}, not 'qwen3_moe'")
    llama_config.check_decoder_fields(hf_config, unsupported)
    if hf_config.get("use_sliding_window"):
        raise unsupported("use_sliding_window is set")
    defaults = _QWEN3_MOE_DEFAULTS
    num_experts = hf_config.get("num_experts",
                                hf_config.get("num_local_experts", defaults["num_experts"]))
    return _moe_config(
        hf_config, defaults, scan_layers, where, num_experts=num_experts,
        expert_mlp_dim=hf_config.get("moe_intermediate_size", defaults["moe_intermediate_size"]),
        normalize_top_k=bool(hf_config.get("norm_topk_prob", defaults["norm_topk_prob"])),
        first_dense_layers=_first_dense_layers(hf_config, num_experts, unsupported),
        qk_norm=True)
