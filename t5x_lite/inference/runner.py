"""`t5x_lite infer` and `t5x_lite eval`: a trained checkpoint, restored onto a mesh,
continues prompts or is evaluated on seqio Tasks.

Prompts come from `--prompt` (repeatable) or `--prompts_file`: a `.txt` file holds one
prompt per line, a `.jsonl` file one object per line with an `inputs` (or `prompt`)
string. Each output line holds the prompt, the decoded continuation (up to EOS), its
token ids and its score (the sum of the generated tokens' log-probs).
"""

import dataclasses
import json

import jax

from t5x_lite import storage
from t5x_lite.inference import decoding, evaluation
from t5x_lite.parallel import partitioning
from t5x_lite.errors import ConfigError
from t5x_lite.hf import checkpoint_reader
from t5x_lite.models.spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    checkpoint: checkpoint_reader.RunCheckpoint
    spec: ModelSpec
    params: dict
    mesh: jax.sharding.Mesh


def load(model_dir: str, step: int | None, mesh_shape, param_rules) -> LoadedModel:
    """The params of a run's checkpoint (default: the newest), sharded over `mesh_shape`."""
    checkpoint = checkpoint_reader.locate(model_dir, step)
    mesh = partitioning.create_mesh(mesh_shape)
    params = checkpoint_reader.restore_sharded_params(checkpoint, mesh, param_rules)
    return LoadedModel(checkpoint, ModelSpec.create(checkpoint.cfg), params, mesh)


def read_prompts(prompts: list[str], prompts_file: str | None) -> list[str]:
    """The prompts given on the command line, then those of `prompts_file`."""
    prompts = list(prompts)
    if prompts_file:
        prompts += _prompts_from_file(prompts_file)
    if not prompts:
        raise ConfigError("no prompts: pass --prompt=TEXT (repeatable) or --prompts_file=PATH "
                          "(.txt, one per line, or .jsonl with an 'inputs' field).")
    return prompts


def _prompts_from_file(path: str) -> list[str]:
    if not storage.path(path).is_file():
        raise ConfigError(f"--prompts_file={path} does not exist.")
    lines = [line for line in storage.read_text(path).splitlines() if line.strip()]
    if not path.endswith(".jsonl"):
        return lines
    prompts = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}:{number} is not JSON ({error.msg}); write one object "
                              "per line, e.g. {\"inputs\": \"...\"}.") from None
        text = record.get("inputs", record.get("prompt")) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise ConfigError(f"{path}:{number} has no 'inputs' (or 'prompt') string.")
        prompts.append(text)
    return prompts


def infer(model: LoadedModel, vocabulary, prompts: list[str], max_decode_len: int,
          sampling: decoding.SamplingConfig, batch_size: int, seed: int, rules) -> list[dict]:
    """One record per prompt: prompt, output text, output token ids and score."""
    _check_vocabulary(model, vocabulary.vocab_size)
    token_ids = [vocabulary.encode(prompt) for prompt in prompts]
    prompt_length = max(len(ids) for ids in token_ids)
    records = []
    for start in range(0, len(prompts), batch_size):
        rows = token_ids[start:start + batch_size]
        result = decoding.decode(model.spec, model.params, rows, max_decode_len,
                                 vocabulary.eos_id, sampling, jax.random.key(seed + start),
                                 model.mesh, prompt_length=prompt_length, rules=rules)
        for offset, (tokens, length) in enumerate(zip(result.tokens, result.lengths)):
            generated = [int(t) for t in tokens[:length]]
            records.append({"prompt": prompts[start + offset],
                            "output": vocabulary.decode(generated), "tokens": generated,
                            "score": float(result.scores[offset])})
    return records


def _check_vocabulary(model: LoadedModel, vocab_size: int) -> None:
    if vocab_size > model.spec.cfg.vocab_size:
        raise ConfigError(f"the vocabulary has {vocab_size} ids but the model in "
                          f"{model.checkpoint.step_dir} only {model.spec.cfg.vocab_size}; "
                          "evaluate Tasks with the vocabulary the model was trained with.")


def infer_command(model_dir: str | None, step: int | None, prompts: list[str],
                  prompts_file: str | None, output: str | None, max_decode_len: int,
                  batch_size: int, seed: int, mesh_shape) -> None:
    """Decodes the prompts with the run's checkpoint and vocabulary; writes `output`."""
    from t5x_lite.hf.vocabulary import run_vocabulary
    if not model_dir or not output:
        raise ConfigError("infer needs --model_dir=MODEL_DIR and --out=PATH.jsonl.")
    prompts = read_prompts(prompts, prompts_file)
    sampling, rules = decoding.SamplingConfig(), partitioning.axis_rules()
    model = load(model_dir, step, mesh_shape, rules[0])
    vocabulary = run_vocabulary(model.checkpoint.record, model.checkpoint.model_dir,
                                model.checkpoint.step_dir).seqio_vocabulary
    if vocabulary is None:
        raise ConfigError(f"{model.checkpoint.step_dir} has no t5x_lite vocabulary (an "
                          "imported model): use transformers with its tokenizer files.")
    records = infer(model, vocabulary, prompts, max_decode_len, sampling, batch_size, seed, rules)
    storage.write_atomic(output, "".join(json.dumps(record) + "\n" for record in records))
    print(f"wrote {len(records)} outputs of step {model.checkpoint.step} to {output}")


def eval_command(model_dir: str | None, step: int | None, tasks: str | None,
                 num_examples: int | None, mesh_shape) -> dict:
    """Evaluates the run's checkpoint on `tasks`; appends to MODEL_DIR/eval_results.jsonl."""
    if not model_dir or not tasks:
        raise ConfigError("eval needs --model_dir=MODEL_DIR and --tasks=TASK_OR_MIXTURE.")
    overrides = {} if num_examples is None else {"num_examples": num_examples}
    cfg = evaluation.EvalConfig(mixture_or_task_name=tasks, **overrides)
    evaluator = evaluation.evaluator(cfg)
    sampling, rules = decoding.SamplingConfig(), partitioning.axis_rules()
    model = load(model_dir, step, mesh_shape, rules[0])
    for task in evaluator.eval_tasks:
        _check_vocabulary(model, task.output_features["targets"].vocabulary.vocab_size)
    results = evaluation.evaluate(model.spec, model.params, model.mesh, cfg,
                                  model.checkpoint.step, sampling, evaluator)
    evaluation.write_results(model.checkpoint.model_dir, model.checkpoint.step, results)
    print("\n".join(evaluation.summary_lines(model.checkpoint.step, results)))
    return results
