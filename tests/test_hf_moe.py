"""Hugging Face Mixtral and Qwen3-MoE export and import of the MoE decoder, checked
against `transformers`.

A tiny MoE with qk_norm and a dense first layer, trained a few steps and saved from a
(1, 4, 2) mesh, exports as `Qwen3MoeForCausalLM` (scanned and tied, and unscanned), and
without those as `MixtralForCausalLM`; each export loads with no missing, unexpected or
mismatched keys and gives t5x_lite's logits at every position and its greedy
continuations. Random Mixtral and Qwen3-MoE models (the latter with an `mlp_only_layers`
layer) survive import (unscanned and scanned) and export. What neither architecture can express, and qk_norm
for Llama, ends in one line and writes nothing.
"""

import dataclasses
import functools
import json

import jax
import numpy as np
import pytest
import torch
import transformers

from t5x_lite.errors import ConfigError
from t5x_lite.hf import export, import_
from t5x_lite.inference import decoding
from t5x_lite.models.decoder.config import DecoderConfig
from t5x_lite.models.moe.config import MoEConfig
from t5x_lite.models.spec import ModelSpec
from tests.helpers import packed_batch, tiny_training
from tests.test_hf import (assert_exports_as, assert_logits_match, hf_greedy, leftovers,
                           load_hf, model_config_from_gin, restore_host_params, save_run)

RUN_GIN = """
MIXTURE_OR_TASK_NAME = 'embedded'
TASK_FEATURE_LENGTHS = {'targets': 64}
DataConfig.mixture_or_task_name = %MIXTURE_OR_TASK_NAME
DataConfig.task_feature_lengths = %TASK_FEATURE_LENGTHS
train.model_config = @MoEConfig()
"""
QWEN3_LIKE = MoEConfig(num_layers=3, first_dense_layers=1, embed_dim=32, num_heads=4,
                       num_kv_heads=2, head_dim=8, mlp_dim=48, vocab_size=384, num_experts=4,
                       experts_per_token=2, expert_mlp_dim=16, qk_norm=True,
                       normalize_top_k=False, rope_theta=500.0, norm_eps=1e-6, init_std=0.1)
# The trained model without its dense layer and its q/k norms (one training compiles once).
MIXTRAL_LIKE = dataclasses.replace(QWEN3_LIKE, num_layers=2, first_dense_layers=0,
                                   qk_norm=False, normalize_top_k=True)
TRAIN_STEPS = 4


# --- checkpoints ---------------------------------------------------------------------

def random_params(cfg) -> dict:
    """Random params of the model's shapes, made without compiling anything; norm scales
    random too, so a swapped norm (q/k norms included) would show."""
    abstract = jax.eval_shape(lambda: ModelSpec.create(cfg).init_params(0))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        noise = rng.standard_normal(leaf.shape)
        if "scale" in jax.tree_util.keystr(path):
            return (1 + 0.3 * noise).astype(np.float32)
        return (cfg.init_std * noise).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract)


@functools.cache
def trained_layers() -> tuple[dict, list[dict]]:
    """QWEN3_LIKE after a few training steps from `random_params`, unscanned (its train
    step compiles fastest): (the params outside the layers, each layer's params)."""
    cfg = dataclasses.replace(QWEN3_LIKE, scan_layers=False)
    with tiny_training((1, 1, 1), 2, TRAIN_STEPS, cfg, params=random_params(cfg)) as (
            state, train_step, batch_sharding):
        for step in range(TRAIN_STEPS):
            batch = packed_batch(8, 32, cfg.vocab_size, seed=step)
            state, _ = train_step(state, jax.device_put(batch, batch_sharding), step)
        params = jax.tree.map(np.asarray, state["params"])
    return params, [params.pop(f"layer_{i}") for i in range(cfg.num_layers)]


def _without_qk_norms(layer: dict) -> dict:
    attn = {name: value for name, value in layer["attn"].items()
            if name not in ("q_norm", "k_norm")}
    return {**layer, "attn": attn}


def trained_params(cfg: MoEConfig) -> dict:
    """The trained params as `cfg` (QWEN3_LIKE or MIXTRAL_LIKE, in any layout) holds
    them: stacked if scanned (dense layers first), no head if tied."""
    ends, layers = trained_layers()
    if not cfg.qk_norm:
        layers = [_without_qk_norms(layer) for layer in layers[QWEN3_LIKE.first_dense_layers:]]
    params = {key: value for key, value in ends.items()
              if key != "lm_head_DV" or not cfg.tie_embeddings}
    if not cfg.scan_layers:
        return {**params, **{f"layer_{i}": layer for i, layer in enumerate(layers)}}
    dense = cfg.first_dense_layers
    for name, stack in (("dense_blocks", layers[:dense]), ("blocks", layers[dense:])):
        if stack:
            params[name] = jax.tree.map(lambda *blocks: np.stack(blocks), *stack)
    return params


def assert_greedy_matches(cfg, params, model, steps=24):
    rng = np.random.default_rng(7)
    prompts = [rng.integers(3, 259, size=n).tolist() for n in (3, 11, 20)]
    ours = decoding.decode(ModelSpec.create(cfg), params, prompts, steps, eos_id=None).tokens
    for prompt, tokens in zip(prompts, ours):
        assert hf_greedy(model, [0, *prompt], steps) == tokens.tolist(), len(prompt)
    assert len({tuple(tokens) for tokens in ours.tolist()}) == len(prompts)


# --- a trained model, exported ---------------------------------------------------------------

@pytest.mark.parametrize("base,scan_layers,tie,greedy", [
    (MIXTRAL_LIKE, True, False, True), (QWEN3_LIKE, True, True, False),
    (QWEN3_LIKE, False, False, True),
], ids=["mixtral-scanned", "qwen3-scanned-tied", "qwen3-unscanned"])
def test_trained_export_matches_transformers(tmp_path, base, scan_layers, tie, greedy):
    cfg = dataclasses.replace(base, scan_layers=scan_layers, tie_embeddings=tie)
    params = trained_params(cfg)
    save_run(tmp_path / "run", cfg, params, RUN_GIN, TRAIN_STEPS)
    summary = export.export(tmp_path / "run", tmp_path / "hf")
    assert summary.tokenizer == "ByT5Tokenizer" and summary.step == TRAIN_STEPS
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["tie_word_embeddings"] is tie
    assert (config["num_experts_per_tok"], config["router_aux_loss_coef"]) == (2, 0.005)
    model = load_hf(tmp_path / "hf")
    if cfg.qk_norm:
        assert config["architectures"] == ["Qwen3MoeForCausalLM"]
        assert (config["num_experts"], config["moe_intermediate_size"],
                config["intermediate_size"], config["mlp_only_layers"],
                config["norm_topk_prob"]) == (4, 16, 48, [0], False)
        assert [type(layer.mlp).__name__ for layer in model.model.layers] == [
            "Qwen3MoeMLP", "Qwen3MoeSparseMoeBlock", "Qwen3MoeSparseMoeBlock"]
    else:
        assert config["architectures"] == ["MixtralForCausalLM"]
        assert (config["num_local_experts"], config["intermediate_size"],
                config["sliding_window"]) == (4, 16, None)
    assert_logits_match(cfg, params, model)
    if greedy:  # once per layout and once per architecture: each compiles its own decoder
        # (an unscanned Mixtral export is checked by the import round trip below)
        assert_greedy_matches(cfg, params, model)


# --- import ----------------------------------------------------------------------------

def _randomize(model) -> None:
    """Random norm scales (so a swapped norm would show) and decisive routers."""
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith("norm.weight"):
                weight.copy_(1 + 0.3 * torch.randn_like(weight))
            elif name.endswith("mlp.gate.weight"):  # a router, not a dense MLP's gate_proj
                weight.copy_(torch.randn_like(weight))


def random_mixtral():
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=300, hidden_size=48, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, head_dim=8, num_local_experts=4,
        num_experts_per_tok=2, rms_norm_eps=1e-5, initializer_range=0.1,
        rope_parameters={"rope_type": "default", "rope_theta": 2000.0},
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=1, pad_token_id=0,
        max_position_embeddings=256)
    return transformers.MixtralForCausalLM(config)


def random_qwen3_moe():
    torch.manual_seed(1)
    config = transformers.Qwen3MoeConfig(
        vocab_size=300, hidden_size=48, intermediate_size=40, moe_intermediate_size=24,
        num_hidden_layers=3, mlp_only_layers=[0], num_attention_heads=6, num_key_value_heads=2,
        head_dim=8, num_experts=4, num_experts_per_tok=3, norm_topk_prob=False,
        rms_norm_eps=1e-6, initializer_range=0.1,
        rope_parameters={"rope_type": "default", "rope_theta": 2000.0},
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=1, pad_token_id=0,
        max_position_embeddings=256)
    return transformers.Qwen3MoeForCausalLM(config)


@pytest.mark.parametrize("make,scan_layers,expected", [
    (random_mixtral, False, dict(num_experts=4, experts_per_token=2, expert_mlp_dim=24,
                                normalize_top_k=True, qk_norm=False, first_dense_layers=0,
                                tie_embeddings=False)),
    (random_qwen3_moe, True, dict(num_experts=4, experts_per_token=3, expert_mlp_dim=24,
                                   mlp_dim=40, normalize_top_k=False, qk_norm=True,
                                   first_dense_layers=1, tie_embeddings=True)),
], ids=["mixtral", "qwen3_moe"])
def test_import_then_export_round_trip(tmp_path, make, scan_layers, expected):
    original = make()
    _randomize(original)
    original.eval().save_pretrained(tmp_path / "original")
    transformers.ByT5Tokenizer(extra_ids=0).save_pretrained(tmp_path / "original")
    out = tmp_path / "imported"
    import_.import_checkpoint(tmp_path / "original", out, scan_layers=scan_layers)
    assert "train.model_config = @MoEConfig()" in (out / "model.gin").read_text()
    cfg = model_config_from_gin(out / "model.gin", MoEConfig)
    assert {name: getattr(cfg, name) for name in expected} == expected
    assert (cfg.router, cfg.scan_layers, cfg.rope_theta) == ("softmax", scan_layers, 2000.0)
    params = restore_host_params(out, cfg)  # what INITIAL_CHECKPOINT_PATH restores
    assert ("blocks" in params, "dense_blocks" in params) == (
        scan_layers, scan_layers and cfg.first_dense_layers > 0)
    assert_logits_match(cfg, params, original)

    # AutoTokenizer takes any Mixtral's tokenizer for a tokenizer.json one: ask for ByT5.
    assert_exports_as(original, out, tmp_path / "again", transformers.ByT5Tokenizer)


@pytest.mark.parametrize("change,fragment", [
    ({"model_type": "qwen3_moe", "mlp_only_layers": [1]}, r"dense layers \[1\]"),
    ({"model_type": "qwen3_moe", "use_sliding_window": True}, "use_sliding_window is set"),
    ({"model_type": "mixtral", "sliding_window": 4096}, "sliding_window is 4096"),
    ({"model_type": "mixtral", "hidden_act": "gelu"}, "hidden_act is 'gelu'"),
])
def test_import_refuses_what_it_cannot_compute(tmp_path, change, fragment):
    config = {"vocab_size": 300, "hidden_size": 48, "intermediate_size": 96,
              "num_hidden_layers": 3, "num_attention_heads": 6, "num_experts": 4,
              "num_local_experts": 4, **change}
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=fragment) as error:
        import_.import_checkpoint(tmp_path / "hf", tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path / "out")


# --- what cannot be exported ----------------------------------------------------------------

@pytest.mark.parametrize("cfg,fragment", [
    (dataclasses.replace(MIXTRAL_LIKE, router="sigmoid", bias_update_rate=0.001),
     "MixtralForCausalLM cannot express sigmoid routing with a bias"),
    (dataclasses.replace(QWEN3_LIKE, num_shared_experts=1),
     "Qwen3MoeForCausalLM cannot express shared experts"),
    (dataclasses.replace(MIXTRAL_LIKE, num_layers=3, first_dense_layers=1),
     "MixtralForCausalLM cannot express dense first layers"),
    (DecoderConfig(num_layers=1, embed_dim=32, num_heads=4, head_dim=8, vocab_size=384,
                   qk_norm=True), "LlamaForCausalLM cannot express qk_norm"),
], ids=["sigmoid-router", "shared-experts", "dense-first-without-qk-norm",
        "qk-norm-to-llama"])
def test_export_refuses_what_the_architecture_cannot_express(tmp_path, cfg, fragment):
    save_run(tmp_path / "run", cfg, random_params(cfg), RUN_GIN, TRAIN_STEPS)
    with pytest.raises(ConfigError, match=fragment) as error:  # exit 2 from the CLI
        export.export(tmp_path / "run", tmp_path / "hf")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "hf").exists() and not leftovers(tmp_path / "hf")
