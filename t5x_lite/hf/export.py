"""`t5x_lite export-hf`: a run's checkpoint as a Hugging Face directory.

The directory holds `config.json`, the weights as safetensors (sharded with an
index above `max_shard_size`), `generation_config.json` and the tokenizer files, in
the architecture of the checkpoint family's mapping (`mappings`: the decoder as
`LlamaForCausalLM`, the encoder-decoder as `T5ForConditionalGeneration`, the MoE
decoder as `Qwen3MoeForCausalLM` with qk_norm, else `MixtralForCausalLM`), and loads
offline with `transformers`' Auto classes and `AutoTokenizer` (except a Mixtral
export's byte tokenizer: `AutoTokenizer` reads every Mixtral tokenizer as a
`tokenizer.json` one, so load it with `ByT5Tokenizer`). Params are
restored onto the local devices and copied to the host one layer at a time (see
`checkpoint_reader`); the host never holds more than one layer plus one shard.
Everything is written beside the output and renamed at the end (`output_dir`).

t5x_lite's decoder trains on inputs shifted right with id 0 (pad) in front of every
example, so a prompt for the exported Llama starts with id 0, with an explicit all-ones
attention mask (else `generate` takes that id for padding); the tokenizer adds no BOS.
The T5 decoder starts from id 0 itself (`decoder_start_token_id`); its prompt is the
encoder's input as it is.
"""

import dataclasses
import json

import jax.numpy as jnp

from t5x_lite import storage
from t5x_lite.errors import ConfigError
from t5x_lite.hf import checkpoint_reader, mappings, output_dir, tokenizer_files
from t5x_lite.hf.mapping import HFMapping, TokenIds
from t5x_lite.hf.safetensors_writer import (
    DEFAULT_MAX_SHARD_SIZE,
    ShardedSafetensorsWriter,
    parse_size,
)
from t5x_lite.hf.vocabulary import RunVocabulary, run_vocabulary

EXPORT_DTYPES = ("float32", "bfloat16")
DEFAULT_MAX_POSITIONS = 2048


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    out: str
    step: int
    weight_files: list[str]
    tokenizer: str | None
    architecture: str


def _check_options(dtype: str, max_shard_size: str) -> int:
    if dtype not in EXPORT_DTYPES:
        raise ConfigError(f"--dtype={dtype}: use one of {EXPORT_DTYPES}.")
    max_shard_bytes = parse_size(max_shard_size)
    if max_shard_bytes is None:
        raise ConfigError(f"--max_shard_size={max_shard_size}: give a size such as 5GB, "
                          "500MB or a number of bytes.")
    return max_shard_bytes


def _token_ids(checkpoint, vocabulary: RunVocabulary) -> TokenIds:
    imported = checkpoint.record.hf
    if imported is not None:
        return TokenIds(**imported.get("token_ids", {}))
    seqio_vocabulary = vocabulary.seqio_vocabulary
    if seqio_vocabulary is None:
        return TokenIds()
    return TokenIds(bos=None, eos=seqio_vocabulary.eos_id, pad=seqio_vocabulary.pad_id)


def _check_vocab_size(cfg, vocabulary: RunVocabulary) -> None:
    seqio_vocabulary = vocabulary.seqio_vocabulary
    if seqio_vocabulary is not None and seqio_vocabulary.vocab_size > cfg.vocab_size:
        raise ConfigError(f"the run's vocabulary has {seqio_vocabulary.vocab_size} ids but "
                          f"the model only {cfg.vocab_size}; the checkpoint and its gin "
                          "config disagree.")


def write_weights(hf: HFMapping, params: dict, cfg, directory: str, dtype: str,
                  max_shard_bytes: int):
    """Streams the params, layer by layer, into safetensors files; returns their names."""
    writer = ShardedSafetensorsWriter(directory, max_shard_bytes)
    for tensors in hf.tensors_to_hf(params, cfg):
        for name, value in tensors.items():
            writer.add(name, value.astype(jnp.dtype(dtype)))
    return writer.close()


def _write_json(directory: str, name: str, value: dict) -> None:
    storage.write_atomic(storage.join(directory, name),
                         json.dumps(value, indent=2, sort_keys=True) + "\n")


def _write_tokenizer(vocabulary: RunVocabulary, directory: str,
                     model_vocab_size: int) -> str | None:
    if vocabulary.seqio_vocabulary is not None:
        return tokenizer_files.write_tokenizer(vocabulary.seqio_vocabulary, directory,
                                               model_vocab_size)
    if vocabulary.tokenizer_dir and tokenizer_files.copy_tokenizer_files(
            vocabulary.tokenizer_dir, directory):
        return "copied from the imported checkpoint"
    return None


def export(model_dir: str, out: str, *, step: int | None = None, dtype: str = "float32",
           max_shard_size: str = DEFAULT_MAX_SHARD_SIZE, overwrite: bool = False,
           vocabulary: RunVocabulary | None = None) -> ExportSummary:
    """Exports checkpoint `step` (default: the latest) of the run in `model_dir` to `out`.

    `vocabulary` replaces the one the checkpoint records (its run's task vocabulary).
    """
    max_shard_bytes = _check_options(dtype, max_shard_size)
    output_dir.check_writable(out, overwrite, protected=(model_dir,))
    checkpoint = checkpoint_reader.locate(model_dir, step)
    cfg = checkpoint.cfg
    hf = mappings.for_export(checkpoint.record.family, cfg)
    hf.check_expressible(cfg)
    if vocabulary is None:
        vocabulary = run_vocabulary(checkpoint.record, checkpoint.model_dir,
                                    checkpoint.step_dir)
    _check_vocab_size(cfg, vocabulary)
    token_ids = _token_ids(checkpoint, vocabulary)
    config = hf.config_to_hf(
        cfg, dtype=dtype, token_ids=token_ids,
        max_position_embeddings=vocabulary.sequence_length or DEFAULT_MAX_POSITIONS)
    params = checkpoint_reader.restore_sharded_params(checkpoint)
    with output_dir.atomic_directory(out, overwrite) as partial:
        weight_files = write_weights(hf, params, cfg, partial, dtype, max_shard_bytes)
        _write_json(partial, "config.json", config)
        _write_json(partial, "generation_config.json", hf.generation_config(token_ids))
        tokenizer = _write_tokenizer(vocabulary, partial, cfg.vocab_size)
    return ExportSummary(str(storage.path(out)), checkpoint.step, weight_files, tokenizer,
                         hf.architecture)


def export_command(model_dir: str | None, out: str | None, step: int | None, dtype: str,
                   max_shard_size: str, overwrite: bool) -> ExportSummary:
    """`t5x_lite export-hf`: checks the flags, exports, and says what it wrote."""
    if not model_dir or not out:
        raise ConfigError("export-hf needs --model_dir (a training run's MODEL_DIR) and "
                          "--out (the directory to write).")
    summary = export(model_dir, out, step=step, dtype=dtype, max_shard_size=max_shard_size,
                     overwrite=overwrite)
    tokenizer = summary.tokenizer or "none (the checkpoint records no vocabulary)"
    print(f"exported step {summary.step} of {storage.path(model_dir)} to {summary.out} as "
          f"{summary.architecture}: {dtype} weights in {len(summary.weight_files)} file(s); "
          f"tokenizer: {tokenizer}")
    return summary
