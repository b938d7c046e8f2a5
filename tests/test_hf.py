"""Hugging Face export and import, checked against `transformers` itself.

Exports of a CLI-trained run and of checkpoints written from an 8-device mesh (GQA;
tied and untied; scanned and unscanned) load with no missing, unexpected or
mismatched keys, give t5x_lite's logits at every position and the same greedy
tokens; tokenizers encode and decode as the seqio vocabularies do; a random
`LlamaForCausalLM` survives import and export; bad input ends in one line, exit 2.
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

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
import seqio
import torch
import transformers

from t5x_lite.checkpoints import manager as checkpointing
from t5x_lite.parallel import partitioning
from t5x_lite.pipeline import vocabularies
from t5x_lite.checkpoints.manager import CheckpointConfig, Checkpointer
from t5x_lite.checkpoints.record import CheckpointRecord
from t5x_lite.errors import ConfigError
from t5x_lite.hf import export, import_
from t5x_lite.hf.vocabulary import RunVocabulary
from t5x_lite.models.decoder.config import DecoderConfig
from t5x_lite.models.spec import ModelSpec
from tests.cli import assert_one_line_error, run_cli, train_command

torch.manual_seed(0)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A run's gin record as the trainer writes it, naming the byte-vocabulary mixture.
RUN_GIN = """
MIXTURE_OR_TASK_NAME = 'embedded'
TASK_FEATURE_LENGTHS = {'targets': 64}
DataConfig.mixture_or_task_name = %MIXTURE_OR_TASK_NAME
DataConfig.task_feature_lengths = %TASK_FEATURE_LENGTHS
DataConfig.global_batch_size = 8
"""
SYNTHETIC = DecoderConfig(num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
                          mlp_dim=64, vocab_size=384, rope_theta=500.0, norm_eps=1e-6,
                          init_std=0.15)
TEXTS = ["def greedy(tokens):\n\treturn [t + 1 for t in tokens]  # 42\n",
         "  two leading spaces, trailing ones   ", "héllo wörld, 日本語 🙂 ünïcödé",
         "literal </s> and <pad> and <unk> stay text", "12345 67.89e-10\r\n", "", " ", "\n\n"]


# --- t5x_lite and transformers side by side ---------------------------------------------

@functools.cache
def _jitted_logits(cfg: DecoderConfig):
    spec = ModelSpec.create(cfg)

    def logits(params, tokens):
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        return spec.logits(params, {"decoder_input_tokens": tokens,
                                    "decoder_positions": positions,
                                    "decoder_segment_ids": jnp.ones_like(positions)})

    return jax.jit(logits)


def t5x_logits(cfg: DecoderConfig, params, tokens: np.ndarray) -> np.ndarray:
    return np.asarray(_jitted_logits(cfg)(params, tokens.astype(np.int32)))


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens.astype(np.int64))).logits.float().numpy()


def t5x_greedy(cfg: DecoderConfig, params, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding that recomputes the whole sequence for every new token.

    The sequence lives in a fixed 64-slot buffer (one compilation); the causal mask
    keeps the empty slots after the cursor from mattering.
    """
    tokens = np.zeros((1, 64), np.int32)
    tokens[0, :len(prompt)] = prompt
    for cursor in range(len(prompt), len(prompt) + steps):
        tokens[0, cursor] = int(np.argmax(t5x_logits(cfg, params, tokens)[0, cursor - 1]))
    return tokens[0, len(prompt):len(prompt) + steps].tolist()


def hf_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """`generate` with an explicit mask: the leading id 0 is the pad id, and not padding."""
    input_ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                             max_new_tokens=steps, do_sample=False, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def load_hf(directory, dtype=torch.float32):
    """The exported model; every loading-info list must be empty."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        directory, output_loading_info=True, dtype=dtype)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info[key], (key, info[key])
    return model.eval()


def random_tokens(rows: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
    tokens = np.random.default_rng(seed).integers(3, vocab, size=(rows, length))
    tokens[:, 0] = 0  # t5x_lite's inputs start with id 0
    return tokens


def assert_logits_match(cfg, params, model, atol=1e-4, length=40):
    tokens = random_tokens(3, length, cfg.vocab_size)
    ours, theirs = t5x_logits(cfg, params, tokens), hf_logits(model, tokens)
    assert ours.shape == theirs.shape
    diff = np.abs(ours - theirs).max(axis=(0, 2))  # per position
    assert diff.max() <= atol, diff
    assert np.abs(ours).max() > 100 * atol  # the logits say something


def assert_greedy_matches(cfg, params, model, prompts):
    for prompt in prompts:
        ours, theirs = t5x_greedy(cfg, params, prompt, 32), hf_greedy(model, prompt, 32)
        assert ours == theirs, (prompt, ours, theirs)


# --- checkpoints ---------------------------------------------------------------------

def synthetic_params(cfg: DecoderConfig, seed: int) -> dict:
    """Random params of the model's shapes; norm scales random too, so a swapped norm
    would show."""
    abstract = jax.eval_shape(lambda: ModelSpec.create(cfg).init_params(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.standard_normal(leaf.shape)
        if "scale" in jax.tree_util.keystr(path):
            return (1 + 0.3 * noise).astype(np.float32)
        return (cfg.init_std * noise).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract)


def save_run(model_dir, cfg, params, gin_config=RUN_GIN, step=7):
    """A checkpoint of any family's `cfg` as the trainer writes it, saved from a (1, 4, 2)
    mesh."""
    spec = ModelSpec.create(cfg)
    mesh = partitioning.create_mesh((1, 4, 2), devices=jax.devices()[:8])
    shardings = partitioning.tree_shardings(spec.logical_axes, params, mesh,
                                            partitioning.DEFAULT_PARAM_RULES)
    meta = CheckpointRecord(spec.family.name, dataclasses.asdict(cfg), data_position=step,
                            gin_config=gin_config).to_json()
    checkpointer = Checkpointer(str(model_dir), CheckpointConfig(async_save=False))
    checkpointer.save(step, {"step": np.int32(step), "params": jax.device_put(params, shardings)},
                      meta, force=True)
    checkpointer.wait()
    checkpointer.close()


def restore_host_params(model_dir, cfg) -> dict:
    spec = ModelSpec.create(cfg)
    abstract = jax.eval_shape(lambda: spec.init_params(0))
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = checkpointing.restore_params(str(model_dir), abstract,
                                          jax.tree.map(lambda _: one_device, abstract))
    return jax.tree.map(np.asarray, params)


def leftovers(path) -> list[str]:
    """Temporary directories an export or import left beside `path`."""
    parent, name = os.path.split(os.path.abspath(path))
    return [entry for entry in os.listdir(parent) if entry.startswith(f".{name}.")]


# --- a run trained through the CLI, exported through the CLI -------------------------------

TRAINED_CFG = DecoderConfig(num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
                            head_dim=8, mlp_dim=64, vocab_size=384)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("trained")
    tiny = [f"--gin.DecoderConfig.{name}={getattr(TRAINED_CFG, name)}"
            for name in ("num_layers", "embed_dim", "head_dim", "mlp_dim")]
    result = run_cli(train_command(model_dir, 30, *tiny, "--gin.create_schedule.warmup_steps=5",
                                   "--gin.create_schedule.peak_value=0.01"))
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


@pytest.fixture(scope="module")
def cli_export(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "hf"
    result = run_cli([sys.executable, "-m", "t5x_lite", "export-hf", f"--model_dir={trained_run}",
                      f"--out={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"exported step 30 of {trained_run} to {out}" in result.stdout
    return out


def test_cli_export_of_a_trained_run_matches_transformers(trained_run, cli_export):
    config = json.loads((cli_export / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 10000.0
    assert config["tie_word_embeddings"] is False
    assert config["max_position_embeddings"] == 32  # the run's sequence length
    model = load_hf(cli_export)
    assert model.config.num_key_value_heads == 2
    assert model.generation_config.eos_token_id == 1 and model.generation_config.pad_token_id == 0
    params = restore_host_params(trained_run, TRAINED_CFG)
    assert_logits_match(TRAINED_CFG, params, model)
    tokenizer = transformers.AutoTokenizer.from_pretrained(cli_export)
    prompts = [[0, *tokenizer.encode(text, add_special_tokens=False)] for text in (
        "import os\n", "def main(", "class ", "The")]
    assert_greedy_matches(TRAINED_CFG, params, model, prompts)


def test_byte_tokenizer_matches_seqio(cli_export):
    tokenizer = transformers.AutoTokenizer.from_pretrained(cli_export)
    vocabulary = vocabularies.byte_vocabulary()
    assert type(tokenizer).__name__ == "ByT5Tokenizer"
    assert len(tokenizer) == TRAINED_CFG.vocab_size  # every id the model emits decodes
    for text in TEXTS:
        ids = vocabulary.encode(text)
        assert tokenizer.encode(text, add_special_tokens=False) == ids, text
        assert tokenizer.encode(text) == ids + [1]  # EOS, as the tasks append it
        assert tokenizer.decode(ids) == vocabulary.decode(ids) == text
        with_unused = [*ids[:3], 300, 383, *ids[3:], 1]
        assert tokenizer.decode(with_unused, skip_special_tokens=True) == vocabulary.decode(
            with_unused) == text


# --- checkpoints from a mesh: layouts, sharding, dtype --------------------------------------

@pytest.mark.parametrize("scan_layers,tie_embeddings", [(True, False), (False, True),
                                                        (True, True), (False, False)])
def test_export_layouts_match_transformers(tmp_path, scan_layers, tie_embeddings):
    cfg = dataclasses.replace(SYNTHETIC, scan_layers=scan_layers, tie_embeddings=tie_embeddings)
    params = synthetic_params(cfg, seed=int(scan_layers) + 2 * int(tie_embeddings))
    save_run(tmp_path / "run", cfg, params)
    summary = export.export(tmp_path / "run", tmp_path / "hf")
    assert summary.weight_files == ["model.safetensors"] and summary.step == 7
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["tie_word_embeddings"] is tie_embeddings
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 500.0
    model = load_hf(tmp_path / "hf")
    assert_logits_match(cfg, params, model)
    assert_greedy_matches(cfg, params, model, [[0, 75, 104, 108], [0, 50], [0, 7, 200, 9, 31]])


def test_sharded_and_bfloat16_exports(tmp_path):
    cfg = SYNTHETIC
    params = synthetic_params(cfg, seed=5)
    save_run(tmp_path / "run", cfg, params)
    sharded = export.export(tmp_path / "run", tmp_path / "sharded", max_shard_size="20KB")
    assert len(sharded.weight_files) > 2
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == sharded.weight_files
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    assert_logits_match(cfg, params, load_hf(tmp_path / "sharded"))

    export.export(tmp_path / "run", tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    model = load_hf(tmp_path / "bf16", dtype="auto")
    assert model.dtype == torch.bfloat16
    q_DNH = params["blocks"]["attn"]["q_DNH"][1]
    expected = torch.from_numpy(q_DNH.reshape(32, -1).T.copy()).to(torch.bfloat16)
    assert torch.equal(model.model.layers[1].self_attn.q_proj.weight, expected)
    tokens = random_tokens(2, 40, cfg.vocab_size)
    ours, theirs = t5x_logits(cfg, params, tokens), hf_logits(model, tokens)
    assert np.abs(ours - theirs).max() <= 0.05 * np.abs(ours).max()


# --- SentencePiece ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def spm_vocabulary(tmp_path_factory):
    """A small model trained here with the project's trainer options."""
    lines = [line for path in sorted(pathlib.Path(REPO, "t5x_lite").glob("*.py"))
             for line in path.read_text().splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                   vocab_size=700, **vocabularies._SPM_TRAINER_OPTIONS)
    path = tmp_path_factory.mktemp("spm") / "small.model"
    path.write_bytes(model.getvalue())
    return seqio.SentencePieceVocabulary(str(path))


def test_sentencepiece_tokenizer_matches_seqio(tmp_path, spm_vocabulary):
    cfg = dataclasses.replace(SYNTHETIC, vocab_size=768)
    save_run(tmp_path / "run", cfg, synthetic_params(cfg, seed=3))
    summary = export.export(tmp_path / "run", tmp_path / "hf",
                            vocabulary=RunVocabulary(seqio_vocabulary=spm_vocabulary))
    assert summary.tokenizer == "LlamaTokenizer"
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert len(tokenizer) == spm_vocabulary.vocab_size == 700
    sources = [pathlib.Path(REPO, name).read_text() for name in ("README.md", "setup.py")]
    for text in TEXTS + sources:
        ids = spm_vocabulary.encode(text)
        assert tokenizer.encode(text) == ids, text[:60]
        assert tokenizer.decode(ids) == spm_vocabulary.decode(ids) == text
        assert tokenizer.decode([*ids, 750]) == text  # ids past the pieces decode to nothing
    assert any(tokenizer.convert_ids_to_tokens(i).startswith("<0x")
               for i in tokenizer.encode(TEXTS[2]))  # byte fallback was exercised


# --- import ----------------------------------------------------------------------------

def random_llama(directory, tie: bool, seed: int):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 2000.0}, initializer_range=0.1,
        tie_word_embeddings=tie, bos_token_id=None, eos_token_id=1, pad_token_id=0,
        max_position_embeddings=256)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norm weights, so a swapped norm would show
        for name, weight in model.named_parameters():
            if name.endswith("norm.weight"):
                weight.copy_(1 + 0.3 * torch.randn_like(weight))
    model.save_pretrained(directory)
    transformers.ByT5Tokenizer(extra_ids=0).save_pretrained(directory)
    return model


def model_config_from_gin(path, config_class=DecoderConfig):
    """The `config_class` that a written model.gin binds."""
    gin.clear_config()
    try:
        gin.parse_config_file(str(path), skip_unknown=True)
        return config_class()
    finally:
        gin.clear_config()


@pytest.mark.parametrize("through_cli,scan_layers,tie", [(True, True, False),
                                                         (False, False, True)])
def test_import_then_export_round_trip(tmp_path, through_cli, scan_layers, tie):
    original = random_llama(tmp_path / "llama", tie, seed=int(tie))
    out = tmp_path / "imported"
    if through_cli:
        result = run_cli([sys.executable, "-m", "t5x_lite", "import-hf", f"--hf_dir={tmp_path / 'llama'}",
                          f"--out={out}", f"--scan_layers={str(scan_layers).lower()}"])
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"--gin_file={out}/model.gin" in result.stdout
    else:
        import_.import_checkpoint(tmp_path / "llama", out, scan_layers=scan_layers)
    cfg = model_config_from_gin(out / "model.gin")
    assert (cfg.scan_layers, cfg.tie_embeddings, cfg.num_kv_heads, cfg.rope_theta) == (
        scan_layers, tie, 2, 2000.0)
    params = restore_host_params(out, cfg)  # what INITIAL_CHECKPOINT_PATH restores
    assert ("blocks" in params) == scan_layers and ("lm_head_DV" in params) != tie
    assert_logits_match(cfg, params, original)

    assert_exports_as(original, out, tmp_path / "again")


def assert_exports_as(original, model_dir, out_dir, tokenizer_class=transformers.AutoTokenizer):
    """`model_dir` (imported from `original`) exports as `original`'s architecture with
    its logits, and its byte tokenizer."""
    export.export(model_dir, out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    assert config["architectures"] == [type(original).__name__]
    tokens = random_tokens(2, 40, 300, seed=1)
    assert np.abs(hf_logits(load_hf(out_dir), tokens) - hf_logits(original, tokens)).max() <= 1e-5
    tokenizer = tokenizer_class.from_pretrained(out_dir)
    assert tokenizer.encode("abc", add_special_tokens=False) == [100, 101, 102]


@pytest.mark.parametrize("change,fragment", [
    ({"attention_bias": True}, "attention_bias is set"),
    ({"mlp_bias": True}, "mlp_bias is set"),
    ({"hidden_act": "gelu"}, "hidden_act is 'gelu'"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}}, "llama3"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_parameters": None}, "linear"),
    ({"model_type": "mistral"}, "not 'llama'"),
])
def test_import_refuses_what_it_cannot_compute(tmp_path, change, fragment):
    config = {"model_type": "llama", "vocab_size": 300, "hidden_size": 48,
              "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 6,
              "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}, **change}
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=fragment):
        import_.import_checkpoint(tmp_path / "llama", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path / "out")


# --- errors ----------------------------------------------------------------------------

def test_cli_export_of_a_missing_checkpoint(tmp_path):
    out = tmp_path / "hf"
    result = run_cli([sys.executable, "-m", "t5x_lite", "export-hf",
                      f"--model_dir={tmp_path / 'nothing'}", f"--out={out}"])
    assert_one_line_error(result, "export-hf", "no checkpoint found")
    assert not out.exists() and not leftovers(out)


def test_cli_import_of_an_unsupported_architecture(tmp_path):
    original = tmp_path / "llama"
    random_llama(original, tie=False, seed=0)
    config = json.loads((original / "config.json").read_text())
    (original / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
    out = tmp_path / "imported"
    result = run_cli([sys.executable, "-m", "t5x_lite", "import-hf", f"--hf_dir={original}",
                      f"--out={out}"])
    assert_one_line_error(result, "import-hf", "attention_bias")
    assert not out.exists() and not leftovers(out)


def test_cli_refuses_a_non_empty_output_without_overwrite(trained_run, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli([sys.executable, "-m", "t5x_lite", "export-hf", f"--model_dir={trained_run}",
                      f"--out={out}"])
    assert_one_line_error(result, "export-hf", "not empty", "--overwrite")
    assert os.listdir(out) == ["keep.txt"] and not leftovers(out)


def test_overwrite_replaces_the_output(tmp_path):
    save_run(tmp_path / "run", SYNTHETIC, synthetic_params(SYNTHETIC, seed=0))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "stale.txt").write_text("old")
    export.export(tmp_path / "run", tmp_path / "hf", overwrite=True)
    assert "stale.txt" not in os.listdir(tmp_path / "hf")
    assert "model.safetensors" in os.listdir(tmp_path / "hf") and not leftovers(tmp_path / "hf")
    with pytest.raises(ConfigError, match=r"has no step 8; it has steps \[7\]"):
        export.export(tmp_path / "run", tmp_path / "other", step=8)


def test_a_failure_while_writing_leaves_nothing(tmp_path):
    save_run(tmp_path / "run", SYNTHETIC, synthetic_params(SYNTHETIC, seed=0))
    pass_through = RunVocabulary(seqio_vocabulary=seqio.PassThroughVocabulary(size=300))
    with pytest.raises(ConfigError, match="byte and SentencePiece vocabularies only"):
        # raised after the weights are written
        export.export(tmp_path / "run", tmp_path / "hf", vocabulary=pass_through)
    assert not (tmp_path / "hf").exists() and not leftovers(tmp_path / "hf")


@pytest.mark.parametrize("change,fragment", [
    ({"embed_dim": 30, "num_heads": 4}, "hidden_size divisible"),
])
def test_export_refuses_what_llama_cannot_express(tmp_path, change, fragment):
    cfg = dataclasses.replace(SYNTHETIC, **change)
    save_run(tmp_path / "run", cfg, synthetic_params(cfg, seed=0))
    with pytest.raises(ConfigError, match=fragment):
        export.export(tmp_path / "run", tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and not leftovers(tmp_path / "hf")


def test_export_refuses_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="--dtype"):
        export.export(tmp_path, tmp_path / "hf", dtype="float16")
    with pytest.raises(ConfigError, match="--max_shard_size"):
        export.export(tmp_path, tmp_path / "hf", max_shard_size="lots")
    with pytest.raises(ConfigError, match="would replace the input"):
        export.export(tmp_path / "run", tmp_path, overwrite=True)
