"""Hugging Face `transformers` export and import, generic over a model family's mapping.

`t5x_lite export-hf` writes a checkpoint (config, safetensors weights, generation
config, tokenizer) that `transformers` and `AutoTokenizer` load offline: the decoder
as `LlamaForCausalLM`, the encoder-decoder as `T5ForConditionalGeneration`, the MoE
decoder as `MixtralForCausalLM` or (with qk_norm) `Qwen3MoeForCausalLM`;
`t5x_lite import-hf` turns a local Llama, T5 v1.1, Mixtral or Qwen3-MoE checkpoint into
a t5x_lite one that `INITIAL_CHECKPOINT_PATH` starts a fine-tune from.

Modules: `mapping` (the interface a family's mapping implements) and `mappings` (the
table of them); `llama` (the decoder family's: `convert`, the parameter mapping both
ways, and `llama_config`, the model config both ways); `t5` (the encoder-decoder's:
`t5_tensors` and `t5_config`); `moe` (the MoE decoder's two: `moe_tensors` and
`moe_config`); `checkpoint_reader` (a run's checkpoint, restored
sharded, copied out piece by piece) and `layer_layout` (a layer stack, scanned or
not, one block at a time); `safetensors_writer` (streamed, sharded weights);
`vocabulary` (the run's vocabulary); `tokenizer_files` (HF tokenizer files for it);
`output_dir` (all-or-nothing writes); `export` and `import_` (the two commands).

Nothing here imports torch or transformers at module load: they come with the `hf`
extra and load only on these code paths.
"""
