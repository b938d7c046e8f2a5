"""`t5x_lite import-hf`: a local `transformers` checkpoint as a t5x_lite checkpoint.

The config's `model_type` picks the family mapping (`mappings`): Llama for the decoder,
T5 (v1.1) for the encoder-decoder, Mixtral and Qwen3-MoE for the MoE decoder.

Writes, all or nothing (`output_dir`):

    MODEL_DIR/checkpoints/0/state   {"params": ...}, float32, in the scanned or unscanned layout
    MODEL_DIR/checkpoints/0/meta    model config, layer layout, and an `hf` record
    MODEL_DIR/model.gin             the gin bindings of the model config
    MODEL_DIR/hf_tokenizer/         the source's tokenizer files, if it has any

A fine-tune starts from it with `--gin_file=MODEL_DIR/model.gin` (in place of a
`models/<family>/*.gin` file) and `--gin.INITIAL_CHECKPOINT_PATH="'MODEL_DIR'"` in a new
run directory. The config and tensor names and shapes are checked before any weight is
read; the weights (safetensors only) are then read one tensor at a time and held once,
in float32, in host memory.
"""

import dataclasses
import json
import os

from t5x_lite import storage
from t5x_lite.errors import ConfigError
from t5x_lite.hf import mappings, output_dir, tokenizer_files
from t5x_lite.hf.mapping import HFMapping, token_ids_from_hf
from t5x_lite.checkpoints.record import CheckpointRecord

TOKENIZER_DIR = "hf_tokenizer"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers older checkpoints saved


def read_hf_config(hf_dir: str) -> dict:
    path = storage.join(hf_dir, "config.json")
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; --hf_dir must be a transformers "
                          "checkpoint directory (config.json and safetensors weights).")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} is not readable JSON: {error}") from None


def weight_files(hf_dir: str, shown_as: str) -> dict[str, str]:
    """Tensor name -> safetensors file that holds it; errors name `shown_as`."""
    index_path = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        return {name: os.path.join(hf_dir, file) for name, file in weight_map.items()}
    single = os.path.join(hf_dir, "model.safetensors")
    if not os.path.isfile(single):
        raise ConfigError(f"{shown_as} has no model.safetensors or model.safetensors.index.json"
                          "; import-hf reads safetensors weights only.")
    from safetensors import safe_open
    with safe_open(single, framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


def _check_names(files: dict[str, str], expected: dict, optional: set[str], hf_dir: str,
                 architecture: str) -> None:
    present = {name for name in files if not name.endswith(_IGNORED_SUFFIXES)}
    missing = [name for name in expected if name not in present]
    unexpected = sorted(present - set(expected) - optional)
    if not missing and not unexpected:
        return
    biases = [name for name in unexpected if name.endswith(".bias")]
    if biases:
        what = f"biases {biases[:3]} (t5x_lite imports models without biases)"
    elif missing:
        what = f"missing {missing[:3]}"
    else:
        what = f"unsupported tensors {unexpected[:3]}"
    raise ConfigError(f"the weights in {hf_dir} do not match a plain {architecture} of its "
                      f"config: {what}.")


def read_tensors(files: dict[str, str], expected: dict[str, tuple]) -> dict:
    """The expected tensors as float32 numpy arrays, shapes checked before reading."""
    import torch
    from safetensors import safe_open
    tensors = {}
    for path in sorted({files[name] for name in expected}):
        with safe_open(path, framework="pt") as f:
            for name in (n for n in expected if files[n] == path):
                shape = tuple(f.get_slice(name).get_shape())
                if shape != expected[name]:
                    raise ConfigError(f"{name} in {path} has shape {shape}, but the config "
                                      f"implies {expected[name]}.")
                tensors[name] = f.get_tensor(name).to(torch.float32).numpy()
    return tensors


def _save_checkpoint(directory: str, params: dict, meta: dict) -> None:
    from t5x_lite.checkpoints.manager import CheckpointConfig, Checkpointer
    checkpointer = Checkpointer(directory, CheckpointConfig(async_save=False))
    checkpointer.save(0, {"params": params}, meta, force=True)
    checkpointer.wait()
    checkpointer.close()


def _record(family: str, cfg, gin_text: str, hf_dir: str, hf_config: dict,
            tokenizer_dir: str | None) -> dict:
    hf = {"source": hf_dir, "tokenizer_dir": tokenizer_dir,
          "token_ids": dataclasses.asdict(token_ids_from_hf(hf_config)),
          "max_position_embeddings": hf_config.get("max_position_embeddings")}
    return CheckpointRecord(family, dataclasses.asdict(cfg), gin_config=gin_text,
                            hf=hf).to_json()


def _read_params(hf: HFMapping, cfg, hf_dir: str) -> dict:
    """The checkpoint's params as the family's tree, names and shapes checked first."""
    with storage.local_copy(hf_dir) as local_dir:
        files = weight_files(local_dir, hf_dir)
        _check_names(files, hf.hf_tensor_shapes(cfg), hf.optional_tensors(cfg), hf_dir,
                     hf.architecture)
        return hf.params_from_hf(read_tensors(files, hf.tensors_to_read(cfg, set(files))), cfg)


def import_checkpoint(hf_dir: str, out: str, *, scan_layers: bool = True,
                      overwrite: bool = False):
    """Imports the checkpoint in `hf_dir` as the t5x_lite model dir `out`."""
    hf_dir = str(storage.path(hf_dir))
    out = output_dir.check_writable(out, overwrite, protected=(hf_dir,))
    hf_config = read_hf_config(hf_dir)
    where = f"{hf_dir}/config.json"
    hf = mappings.for_model_type(hf_config.get("model_type"), where)
    cfg = hf.config_from_hf(hf_config, scan_layers, where)
    gin_text = hf.model_gin(cfg, hf_dir, out)
    params = _read_params(hf, cfg, hf_dir)
    with output_dir.atomic_directory(out, overwrite) as partial:
        copied = tokenizer_files.copy_tokenizer_files(hf_dir,
                                                      storage.join(partial, TOKENIZER_DIR))
        tokenizer_dir = TOKENIZER_DIR if copied else None
        _save_checkpoint(partial, params,
                         _record(hf.family, cfg, gin_text, hf_dir, hf_config, tokenizer_dir))
        storage.write_atomic(storage.join(partial, "model.gin"), gin_text)
    return cfg


def import_command(hf_dir: str | None, out: str | None, scan_layers: bool,
                   overwrite: bool):
    """`t5x_lite import-hf`: checks the flags, imports, and says what it wrote."""
    if not hf_dir or not out:
        raise ConfigError("import-hf needs --hf_dir (a transformers Llama, T5, Mixtral or "
                          "Qwen3-MoE checkpoint, local or gs://) and --out (the t5x_lite "
                          "model directory to write).")
    cfg = import_checkpoint(hf_dir, out, scan_layers=scan_layers, overwrite=overwrite)
    out = storage.path(out)
    print(f"imported {storage.path(hf_dir)} ({type(cfg).__name__}, "
          f"{'scanned' if cfg.scan_layers else 'unscanned'} layers) to {out}; fine-tune with "
          f"--gin_file={out}/model.gin --gin.INITIAL_CHECKPOINT_PATH=\"'{out}'\"")
    return cfg
