"""seqio evaluation of the decoder: decode, postprocess and score each Task's examples.

`seqio.Evaluator` reads each Task's `inputs` and `targets` token ids unpacked. The
prompts are the inputs; predictions are their continuations (greedy unless
`SamplingConfig` says otherwise) of up to the longest target's length; the score of
an example is the log-likelihood of its target after its inputs. The Evaluator then
applies each Task's postprocessor and metric functions (metrics whose functions take
`scores` use the scores). Results go to MODEL_DIR/eval_results.jsonl (one line per
Task and evaluation) and to TensorBoard as `eval/<task>/<metric>`.
"""

import dataclasses
from collections.abc import Mapping

import gin
import jax
import seqio
import tensorflow as tf

from t5x_lite import storage
from t5x_lite.observe.metrics import tensorboard_writer
from t5x_lite.inference import decoding
from t5x_lite.errors import ConfigError


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Which Tasks (a Task or Mixture name), which split, how many examples per Task.
    Examples longer than `task_feature_lengths` are left out (default: the training
    run's lengths in the loop, `DEFAULT_LENGTHS` from the command line)."""

    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int] | None = None
    split: str = "validation"
    num_examples: int | None = None
    batch_size: int = 32
    seed: int = 0


DEFAULT_LENGTHS = {"inputs": 512, "targets": 384}


class _TokenIds(seqio.PassThroughFeatureConverter):
    """Hands the Tasks' token ids to the model functions as they are, unpacked."""

    pack = False
    TASK_FEATURES = {"inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),  # noqa: RUF012
                     "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}


def evaluator(cfg: EvalConfig, default_lengths: Mapping[str, int] = DEFAULT_LENGTHS):
    """The seqio.Evaluator of `cfg`'s Tasks (their examples are read and cached now)."""
    if cfg.mixture_or_task_name not in seqio.TaskRegistry.names() | seqio.MixtureRegistry.names():
        raise ConfigError(f"unknown Task or Mixture {cfg.mixture_or_task_name!r}; registered "
                          f"instruction Tasks include {sorted(seqio.TaskRegistry.names())[:8]}.")
    lengths = dict(cfg.task_feature_lengths or default_lengths)
    return seqio.Evaluator(cfg.mixture_or_task_name, _TokenIds(), eval_split=cfg.split,
                           num_examples=cfg.num_examples, seed=cfg.seed,
                           sequence_length=lengths)


def evaluate(spec, params, mesh, cfg: EvalConfig, step: int,
             sampling: decoding.SamplingConfig | None = None,
             evaluator_: seqio.Evaluator | None = None) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of the model with `params` on every Task of `cfg`
    (greedy decoding unless `sampling` says otherwise)."""
    evaluator_ = evaluator_ or evaluator(cfg)
    sampling = sampling or decoding.SamplingConfig()
    vocabulary = evaluator_.eval_tasks[0].output_features["targets"].vocabulary
    model = _ModelFns(spec, params, mesh, cfg.batch_size, sampling, vocabulary.eos_id)
    metrics, _ = evaluator_.evaluate(compute_metrics=True, step=step, predict_fn=model.predict,
                                     score_fn=model.score)
    return {task: {name: _scalar(value) for name, value in task_metrics.items()}
            for task, task_metrics in metrics.result().items()}


def write_results(model_dir: storage.PathLike, step: int,
                  results: dict[str, dict[str, float]]) -> None:
    """Appends to MODEL_DIR/eval_results.jsonl and writes TensorBoard scalars (process 0)."""
    if jax.process_index() != 0:
        return
    storage.JsonlAppender(storage.join(model_dir, "eval_results.jsonl")).append(
        *({"step": step, "task": task, **task_metrics} for task, task_metrics in results.items()))
    with tensorboard_writer(model_dir) as writer:
        for task, task_metrics in results.items():
            for name, value in task_metrics.items():
                writer.add_scalar(f"eval/{task}/{name}", value, step)


def summary_lines(step: int, results: dict[str, dict[str, float]]) -> list[str]:
    return [f"step {step}: {task}: " + ", ".join(f"{name} {value:.2f}"
                                                 for name, value in task_metrics.items())
            for task, task_metrics in results.items()]


def _scalar(value) -> float:
    return float(value.value if isinstance(value, seqio.metrics.Scalar) else value)


@dataclasses.dataclass
class _ModelFns:
    """The predict and score functions `seqio.Evaluator` calls, over fixed-shape batches
    (the last one filled with copies of its first row), so each compiles once."""

    spec: object
    params: dict
    mesh: object
    batch_size: int
    sampling: decoding.SamplingConfig
    eos_id: int

    def predict(self, dataset) -> list[tuple[int, list[int]]]:
        indices, inputs, targets = _read(dataset)
        max_decode_len = max(len(target) for target in targets)
        prompt_length = max(len(x) for x in inputs)
        outputs = []
        for start in range(0, len(inputs), self.batch_size):
            rows = _fill(inputs[start:start + self.batch_size], self.batch_size)
            result = decoding.decode(self.spec, self.params, rows, max_decode_len,
                                     eos_id=self.eos_id, sampling=self.sampling,
                                     rng=jax.random.key(start), mesh=self.mesh,
                                     prompt_length=prompt_length)
            # Full rows (pad after EOS): seqio stacks the outputs into one array.
            outputs += [list(tokens) for tokens in result.tokens][:len(inputs) - start]
        return list(zip(indices, outputs))

    def score(self, dataset) -> list[tuple[int, float]]:
        indices, inputs, targets = _read(dataset)
        length = max(len(x) + len(y) for x, y in zip(inputs, targets))
        scores = []
        for start in range(0, len(inputs), self.batch_size):
            rows_in = _fill(inputs[start:start + self.batch_size], self.batch_size)
            rows_out = _fill(targets[start:start + self.batch_size], self.batch_size)
            batch_scores = decoding.score(self.spec, self.params, rows_in, rows_out, self.mesh,
                                          length=length)
            scores += [float(s) for s in batch_scores][:len(inputs) - start]
        return list(zip(indices, scores))


def _read(dataset) -> tuple[list[int], list[list[int]], list[list[int]]]:
    indices, inputs, targets = [], [], []
    for index, example in dataset.as_numpy_iterator():
        indices.append(int(index))
        inputs.append([int(t) for t in example["inputs"]])
        targets.append([int(t) for t in example["targets"]])
    return indices, inputs, targets


def _fill(rows: list, size: int) -> list:
    return rows + [rows[0]] * (size - len(rows))

