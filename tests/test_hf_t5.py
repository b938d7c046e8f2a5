"""Hugging Face T5 export and import of the encoder-decoder, checked against `transformers`.

Exports of a model trained on a (1, 4, 2) mesh (scanned and unscanned, tied and untied
heads) load as `T5ForConditionalGeneration` with no missing, unexpected or mismatched
keys, give t5x_lite's logits at every decoder position and its greedy continuations;
the exported tokenizers encode and decode as the seqio vocabularies with T5's extra
ids do; random T5 v1.1 models survive import and export; what t5x_lite cannot compute
(original T5's ReLU, biases, other architectures) ends in one line and writes nothing.
"""

import dataclasses
import functools
import io
import json
import os
import pathlib
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import jax
import numpy as np
import pytest
import sentencepiece as spm
import seqio
import tensorflow as tf
import torch
import transformers
from safetensors.torch import load_file, save_file

from t5x_lite.data import lm_task
from t5x_lite.errors import ConfigError
from t5x_lite.hf import export, import_, tokenizer_files
from t5x_lite.inference import decoding
from t5x_lite.models.encdec.config import EncDecConfig
from t5x_lite.models.spec import ModelSpec
from t5x_lite.pipeline import vocabularies
from tests.cli import assert_one_line_error, run_cli
from tests.helpers import TINY_ENCDEC, packed_encdec_batch, tiny_training
from tests.test_hf import leftovers, model_config_from_gin, restore_host_params, save_run

REPO = pathlib.Path(__file__).resolve().parents[1]
TASK = "hf_t5_test_byte_t5"  # registered below: inputs and targets in the byte_t5 vocabulary
RUN_GIN = f"""
MIXTURE_OR_TASK_NAME = '{TASK}'
TASK_FEATURE_LENGTHS = {{'inputs': 48, 'targets': 40}}
DataConfig.mixture_or_task_name = %MIXTURE_OR_TASK_NAME
DataConfig.task_feature_lengths = %TASK_FEATURE_LENGTHS
train.model_config = @EncDecConfig()
"""
BYTE_T5_IDS = 384  # 3 special ids, 256 bytes, 125 extra ids: ByT5's layout
TRAINED = dataclasses.replace(TINY_ENCDEC, vocab_size=BYTE_T5_IDS)
TRAIN_STEPS = 6
PROMPT_LENGTHS = (5, 19, 40)
TEXTS = ["def greedy(tokens):\n\treturn [t + 1 for t in tokens]  # 42\n",
         "  two leading spaces, trailing ones   ", "héllo wörld, 日本語 🙂 ünïcödé",
         "literal </s> <pad> <unk> <extra_id_0> stay text", "fill <extra_id_0> and <extra_id_1>.",
         "a<extra_id_99>b  <extra_id_7>\n<extra_id_2>", "12345 67.89e-10\r\n", "", " "]


def _register_task() -> None:
    vocabulary = lm_task.vocabulary("byte_t5")
    seqio.TaskRegistry.remove(TASK)
    seqio.TaskRegistry.add(
        TASK,
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files: tf.data.Dataset.from_tensors(
                {"inputs": "a", "targets": "b"}), splits=["train"]),
        preprocessors=[seqio.preprocessors.tokenize],
        output_features={name: seqio.Feature(vocabulary, add_eos=False)
                         for name in ("inputs", "targets")})


_register_task()


# --- t5x_lite and transformers side by side ---------------------------------------------

@functools.cache
def _jitted_logits(cfg: EncDecConfig):
    return jax.jit(ModelSpec.create(cfg).logits)


def _batch(rows: list[tuple[list[int], list[int]]]) -> dict[str, np.ndarray]:
    """Right-padded rows of (inputs, targets), as the family builds them."""
    inputs, targets = zip(*rows)
    return ModelSpec.create(TRAINED).family.example_batch(inputs, targets)


def t5x_logits(cfg: EncDecConfig, params, batch) -> np.ndarray:
    return np.asarray(_jitted_logits(cfg)(params, batch))


def hf_logits(model, batch) -> np.ndarray:
    def tensor(name):
        return torch.from_numpy(batch[name].astype(np.int64))

    with torch.no_grad():
        return model(input_ids=tensor("encoder_input_tokens"),
                     attention_mask=(tensor("encoder_segment_ids") != 0).long(),
                     decoder_input_ids=tensor("decoder_input_tokens")).logits.float().numpy()


def random_rows(vocab: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Rows of (inputs, targets) of different lengths, every side at least 32 tokens."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(3, vocab, size=n).tolist(), rng.integers(3, vocab, size=m).tolist())
            for n, m in ((48, 40), (33, 32), (40, 35))]


def assert_logits_match(cfg, params, model, atol=1e-4):
    batch = _batch(random_rows(cfg.vocab_size, seed=0))
    ours, theirs = t5x_logits(cfg, params, batch), hf_logits(model, batch)
    real = batch["decoder_segment_ids"] != 0
    assert ours.shape == theirs.shape and real.sum(axis=1).min() >= 32
    diff_by_position = np.abs(ours - theirs).max(axis=(0, 2), where=real[..., None],
                                                  initial=0.0)
    assert diff_by_position.max() <= atol, diff_by_position
    assert np.abs(ours[real]).max() > 100 * atol  # the logits say something


def hf_greedy(model, prompt: list[int], steps: int) -> list[int]:
    input_ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                             max_new_tokens=steps, do_sample=False, eos_token_id=None)
    assert out[0, 0] == 0  # the decoder starts from id 0, as t5x_lite's
    return out[0, 1:].tolist()


def assert_greedy_matches(cfg, params, model, steps=32):
    rng = np.random.default_rng(7)
    prompts = [rng.integers(3, cfg.vocab_size, size=n).tolist() for n in PROMPT_LENGTHS]
    ours = decoding.decode(ModelSpec.create(cfg), params, prompts, steps, eos_id=None).tokens
    for prompt, tokens in zip(prompts, ours):
        assert hf_greedy(model, prompt, steps) == tokens.tolist(), len(prompt)
    assert len({tuple(tokens) for tokens in ours.tolist()}) == len(prompts)


def load_hf(directory):
    """The exported model; every loading-info list must be empty."""
    model, info = transformers.T5ForConditionalGeneration.from_pretrained(
        directory, output_loading_info=True, dtype=torch.float32)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info[key], (key, info[key])
    return model.eval()


# --- checkpoints ---------------------------------------------------------------------

def initial_params(cfg: EncDecConfig, seed: int) -> dict:
    """The model's own initialization, norm scales made random (so a swapped norm would
    show), on the host."""
    params = jax.jit(lambda: ModelSpec.create(cfg).init_params(seed))()
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        leaf = np.asarray(leaf)
        if "scale" in jax.tree_util.keystr(path):
            return leaf * (1 + 0.3 * rng.standard_normal(leaf.shape)).astype(np.float32)
        return leaf

    return jax.tree_util.tree_map_with_path(draw, params)


@functools.cache
def trained_params() -> dict:
    """Host params (scanned, untied) of the tiny model after a few steps on a (1, 4, 2)
    mesh."""
    with tiny_training((1, 4, 2), 2, TRAIN_STEPS, TRAINED,
                       params=initial_params(TRAINED, 0)) as (state, train_step, batch_sharding):
        for step in range(TRAIN_STEPS):
            batch = packed_encdec_batch(8, 48, 40, BYTE_T5_IDS, seed=step)
            state, _ = train_step(state, jax.device_put(batch, batch_sharding), step)
        return jax.tree.map(np.asarray, state["params"])


def in_layout(params: dict, cfg: EncDecConfig) -> dict:
    """The trained params as `cfg` holds them: unstacked if unscanned, without the head
    if tied (the embedding, scaled, is the head then)."""
    params = {key: value for key, value in params.items()
              if key != "lm_head_DV" or not cfg.tie_embeddings}
    if cfg.scan_layers:
        return params
    for stack, count in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
        stacked = params.pop(f"{stack}_blocks")
        for i in range(count):
            params[f"{stack}_layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return params


@pytest.fixture(scope="module")
def byte_t5_export(tmp_path_factory):
    """An export of the trained (scanned, untied) run, tokenizer found from its gin record."""
    root = tmp_path_factory.mktemp("byte_t5")
    save_run(root / "run", TRAINED, trained_params(), RUN_GIN, TRAIN_STEPS)
    summary = export.export(root / "run", root / "hf")
    assert summary.tokenizer == "ByT5Tokenizer" and summary.step == TRAIN_STEPS
    return root / "hf"


@pytest.mark.parametrize("scan_layers,tie,greedy", [(True, False, True), (False, True, True),
                                                    (True, True, False), (False, False, False)])
def test_trained_export_matches_transformers(tmp_path, byte_t5_export, scan_layers, tie,
                                             greedy):
    cfg = dataclasses.replace(TRAINED, scan_layers=scan_layers, tie_embeddings=tie)
    params = in_layout(trained_params(), cfg)
    if scan_layers and not tie:
        out = byte_t5_export
    else:
        save_run(tmp_path / "run", cfg, params, RUN_GIN, TRAIN_STEPS)
        out = export.export(tmp_path / "run", tmp_path / "hf").out
    config = json.loads((pathlib.Path(out) / "config.json").read_text())
    assert config["tie_word_embeddings"] is tie and config["vocab_size"] == BYTE_T5_IDS
    assert (config["feed_forward_proj"], config["is_gated_act"]) == ("gated-gelu", True)
    assert (config["decoder_start_token_id"], config["pad_token_id"],
            config["eos_token_id"]) == (0, 0, 1)
    model = load_hf(out)
    generation = model.generation_config
    assert (generation.decoder_start_token_id, generation.eos_token_id,
            generation.pad_token_id) == (0, 1, 0)
    assert (model.lm_head.weight is model.shared.weight) == tie
    assert_logits_match(cfg, params, model)
    if greedy:  # once per layout and once per head: each case compiles its own decoder
        assert_greedy_matches(cfg, params, model)


def test_byte_t5_tokenizer_matches_seqio(byte_t5_export):
    tokenizer = transformers.AutoTokenizer.from_pretrained(byte_t5_export)
    vocabulary = lm_task.vocabulary("byte_t5")
    assert type(tokenizer).__name__ == "ByT5Tokenizer"
    assert len(tokenizer) == vocabulary.vocab_size == BYTE_T5_IDS
    for k in (0, 1, 124):
        assert tokenizer.convert_tokens_to_ids(f"<extra_id_{k}>") == BYTE_T5_IDS - 1 - k
    for text in TEXTS:
        ids = vocabulary.encode(text)
        assert tokenizer.encode(text, add_special_tokens=False) == ids, text
        assert tokenizer.encode(text) == ids + [1], text
        assert tokenizer.decode(ids) == vocabulary.decode(ids) == text
        with_sentinels = [383, *ids[:3], 382, *ids[3:], 259, 1]
        assert tokenizer.decode(with_sentinels, skip_special_tokens=True) == vocabulary.decode(
            with_sentinels) == text


def test_spm_t5_tokenizer_matches_seqio(tmp_path):
    """A small SentencePiece model trained here with the project's options, with T5's
    100 extra ids after its 700 pieces, as `spm_t5` has them after its 8192; its
    tokenizer written as export writes it for a model of 896 ids."""
    lines = [line for path in sorted((REPO / "t5x_lite" / "hf").glob("*.py"))
             for line in path.read_text().splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                   vocab_size=700, **vocabularies._SPM_TRAINER_OPTIONS)
    (tmp_path / "small.model").write_bytes(model.getvalue())
    vocabulary = seqio.SentencePieceVocabulary(str(tmp_path / "small.model"),
                                               extra_ids=vocabularies.T5_EXTRA_IDS["spm"])
    assert tokenizer_files.write_tokenizer(vocabulary, tmp_path / "hf", 896) == "LlamaTokenizer"
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert len(tokenizer) == vocabulary.vocab_size == 800
    assert tokenizer.convert_tokens_to_ids([" <extra_id_0>", " <extra_id_99>"]) == [799, 700]
    source = (REPO / "setup.py").read_text()
    for text in [*TEXTS, source, source.replace("\n\n", " <extra_id_3>\n")]:
        ids = vocabulary.encode(text)
        assert tokenizer.encode(text) == ids, text[:60]
        assert tokenizer.decode(ids) == vocabulary.decode(ids), text[:60]
    sentinels = vocabulary.encode("fill <extra_id_0> and <extra_id_1>.")
    assert 799 in sentinels and 798 in sentinels
    assert tokenizer.decode([5, 799, 700]) == vocabulary.decode([5, 799, 700])


# --- import ---------------------------------------------------------------------------

def random_t5(directory, head: str, seed: int):
    """A random T5 v1.1 saved by transformers. `head`: 'own' (untied, its own weights, and
    the config as transformers 4 wrote it for google/t5-v1_1-*), 'shared' (untied and
    unscaled, but the embedding's weights: what transformers 5 makes of
    tie_word_embeddings=False), or 'tied' (tied and scaled)."""
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=300, d_model=48, d_kv=8, d_ff=96, num_layers=3, num_decoder_layers=2,
        num_heads=6, relative_attention_num_buckets=16, relative_attention_max_distance=64,
        layer_norm_epsilon=1e-5, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        tie_word_embeddings=head == "tied", decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():  # random norms, so a swapped norm would show
        for name, weight in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                weight.copy_(1 + 0.3 * torch.randn_like(weight))
    if head == "own":
        model.lm_head.weight = torch.nn.Parameter(torch.randn(300, 48))
    model.save_pretrained(directory)
    if head == "own":
        config = json.loads((directory / "config.json").read_text())
        for derived in ("scale_decoder_outputs", "is_gated_act", "dense_act_fn"):
            del config[derived]
        (directory / "config.json").write_text(json.dumps({**config,
                                                           "tie_word_embeddings": False}))
    transformers.ByT5Tokenizer(extra_ids=0).save_pretrained(directory)
    return model


@pytest.mark.parametrize("head,scan_layers", [("own", True), ("shared", False), ("tied", True)])
def test_import_then_export_round_trip(tmp_path, head, scan_layers):
    original = random_t5(tmp_path / "t5", head, seed=len(head))
    out = tmp_path / "imported"
    import_.import_checkpoint(tmp_path / "t5", out, scan_layers=scan_layers)
    cfg = model_config_from_gin(out / "model.gin", EncDecConfig)
    assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.relative_buckets,
            cfg.relative_max_distance, cfg.norm_eps) == (3, 2, 16, 64, 1e-5)
    assert (cfg.scan_layers, cfg.tie_embeddings) == (scan_layers, head == "tied")
    params = restore_host_params(out, cfg)  # what INITIAL_CHECKPOINT_PATH restores
    assert ("encoder_blocks" in params) == scan_layers
    assert_logits_match(cfg, params, original)

    export.export(out, tmp_path / "again")
    again = load_hf(tmp_path / "again")
    batch = _batch(random_rows(300, seed=1))
    assert np.abs(hf_logits(again, batch) - hf_logits(original, batch)).max() <= 1e-5
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "again")
    assert tokenizer.encode("abc", add_special_tokens=False) == [100, 101, 102]


@pytest.mark.parametrize("change,fragment", [
    ({"feed_forward_proj": "relu"}, "feed_forward_proj is 'relu'"),
    ({"feed_forward_proj": "gated-silu"}, "activation is 'silu'"),
    ({"is_gated_act": False}, "is_gated_act is false"),
    ({"model_type": "mt5"}, "not 'llama' or 't5'"),
])
def test_import_refuses_what_it_cannot_compute(tmp_path, change, fragment):
    config = {"model_type": "t5", "vocab_size": 300, "d_model": 48, "d_kv": 8, "d_ff": 96,
              "num_layers": 1, "num_heads": 6, "feed_forward_proj": "gated-gelu", **change}
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=fragment) as error:
        import_.import_checkpoint(tmp_path / "t5", tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path / "out")


def test_import_refuses_biases(tmp_path):
    random_t5(tmp_path / "t5", "own", seed=0)
    weights = tmp_path / "t5" / "model.safetensors"
    tensors = load_file(weights)
    tensors["encoder.block.0.layer.1.DenseReluDense.wo.bias"] = torch.zeros(48)
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"biases \['encoder.block.0.layer.1.DenseReluDense"
                                          r".wo.bias'\]") as error:
        import_.import_checkpoint(tmp_path / "t5", tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path / "out")


def test_cli_import_of_original_t5(tmp_path):
    original = tmp_path / "t5"
    original.mkdir()
    (original / "config.json").write_text(json.dumps({
        "model_type": "t5", "vocab_size": 300, "d_model": 48, "d_kv": 8, "d_ff": 96,
        "num_layers": 1, "num_heads": 6, "feed_forward_proj": "relu"}))
    out = tmp_path / "imported"
    result = run_cli([sys.executable, "-m", "t5x_lite", "import-hf", f"--hf_dir={original}",
                      f"--out={out}"])
    assert_one_line_error(result, "import-hf", "feed_forward_proj is 'relu'", "T5 v1.1")
    assert not out.exists() and not leftovers(out)
