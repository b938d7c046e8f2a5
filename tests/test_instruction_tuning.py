"""Instruction tuning end to end: the loss sees only targets, a fine-tuned model gets
better at its task by the real eval path, and `eval` / `infer` write their files."""

import json
import sys

import pytest
import tensorflow as tf

from t5x_lite.models.decoder.converters import InstructionFeatureConverter
from t5x_lite.models.losses import cross_entropy_sums
from t5x_lite.models.spec import ModelSpec
from tests.cli import assert_one_line_error, losses_by_step, read_metrics, run_cli
from tests.helpers import TINY

EOS = 1
EXAMPLES = [{"inputs": [7, 8, 9, 10], "targets": [3, 4, EOS]},
            {"inputs": [11, 12], "targets": [5, 6, 7, 8, EOS]}]


def _packed_row(examples) -> dict:
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={key: tf.TensorSpec([None], tf.int32) for key in ("inputs", "targets")})
    converted = InstructionFeatureConverter(pack=True)(dataset, {"inputs": 8, "targets": 8})
    return {key: value[None] for key, value in next(converted.as_numpy_iterator()).items()}


def _loss_sum(spec, params, batch) -> float:
    logits_BTV = spec.logits(params, batch)
    loss_sum, _, _ = cross_entropy_sums(logits_BTV, batch["decoder_target_tokens"],
                                        batch["decoder_loss_weights"], 0.0)
    return float(loss_sum)


@pytest.fixture(scope="module")
def tiny_model():
    spec = ModelSpec.create(TINY)
    return spec, spec.init_params(seed=0)


def test_loss_counts_target_tokens_only(tiny_model):
    spec, params = tiny_model
    row = _packed_row(EXAMPLES)
    weights = row["decoder_loss_weights"][0]
    assert weights.tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0]
    loss = _loss_sum(spec, params, row)

    changed_target = {**row, "decoder_target_tokens": row["decoder_target_tokens"].copy()}
    changed_target["decoder_target_tokens"][0, 4] = 20
    assert _loss_sum(spec, params, changed_target) != pytest.approx(loss, rel=1e-6)

    changed_input_labels = {**row, "decoder_target_tokens": row["decoder_target_tokens"].copy()}
    changed_input_labels["decoder_target_tokens"][0, [0, 1, 2, 3, 7, 8]] = 30
    assert _loss_sum(spec, params, changed_input_labels) == pytest.approx(loss, rel=1e-6)


def test_packed_examples_do_not_see_each_other(tiny_model):
    spec, params = tiny_model
    packed = _loss_sum(spec, params, _packed_row(EXAMPLES))
    alone = sum(_loss_sum(spec, params, _packed_row([example])) for example in EXAMPLES)
    assert packed == pytest.approx(alone, rel=1e-5)
    other_first = _packed_row([{"inputs": [40, 41, 42, 43], "targets": [44, 45, EOS]},
                               EXAMPLES[1]])
    second_alone = _loss_sum(spec, params, _packed_row([EXAMPLES[1]]))
    first_alone = _loss_sum(spec, params, _packed_row([{"inputs": [40, 41, 42, 43],
                                                        "targets": [44, 45, EOS]}]))
    assert _loss_sum(spec, params, other_first) == pytest.approx(first_alone + second_alone,
                                                                 rel=1e-5)


def _cli(*args: str, num_devices: int = 2):
    return run_cli([sys.executable, "-m", "t5x_lite", *args], num_devices=num_devices)


def _eval_accuracy(model_dir) -> float:
    result = _cli("eval", f"--model_dir={model_dir}", "--tasks=arithmetic_increment_direct",
                  "--num_examples=64")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (model_dir / "eval_results.jsonl").read_text()
               .splitlines()]
    return records[-1]["accuracy"], records[-1]["log_likelihood"]


FINETUNE = ["--gin_file=models/decoder/tiny.gin", "--gin_file=runs/finetune.gin",
            "--gin.MIXTURE_OR_TASK_NAME='arithmetic_increment_direct'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 40, 'targets': 8}", "--gin.BATCH_SIZE=32",
            "--gin.create_schedule.peak_value=2e-3", "--gin.create_schedule.warmup_steps=50",
            "--gin.train.eval_every=None", "--gin.train.log_every=50",
            "--gin.EvalConfig.mixture_or_task_name='arithmetic_increment_direct'",
            "--gin.EvalConfig.num_examples=64", "--gin.train.task_eval_every=400"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The tiny model after 100 quickstart steps on the embedded corpus (byte vocabulary)."""
    model_dir = tmp_path_factory.mktemp("pretrained")
    result = run_cli([sys.executable, "-m", "t5x_lite", "train", "--gin_file=quickstart.gin",
                      "--gin.TRAIN_STEPS=100", "--gin.train.eval_every=None",
                      f"--gin.MODEL_DIR='{model_dir}'"])
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


def test_finetuning_on_arithmetic_raises_its_accuracy(pretrained, tmp_path):
    before, before_likelihood = _eval_accuracy(pretrained)
    finetuned = tmp_path / "finetuned"
    result = run_cli([sys.executable, "-m", "t5x_lite", "train", *FINETUNE,
                      f"--gin.MODEL_DIR='{finetuned}'", "--gin.TRAIN_STEPS=400",
                      f"--gin.INITIAL_CHECKPOINT_PATH='{pretrained}'"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"initialized params from {pretrained}" in result.stderr
    # The gradient norm jumps 10x from step to step after the warmup on the new task while
    # the loss goes on falling: a healthy run, with nothing skipped or rolled back.
    assert not (finetuned / "recovery.jsonl").exists(), (finetuned / "recovery.jsonl").read_text()
    in_loop = json.loads((finetuned / "eval_results.jsonl").read_text().splitlines()[-1])
    after, after_likelihood = _eval_accuracy(finetuned)
    assert in_loop["step"] == 400 and in_loop["accuracy"] == after
    assert before <= 5.0, before
    assert after >= 50.0 and after >= before + 40.0, (before, after)
    assert after_likelihood > before_likelihood + 5.0, (before_likelihood, after_likelihood)


def test_a_divergence_before_the_first_checkpoint_returns_to_the_initial_checkpoint(
        pretrained, tmp_path):
    finetuned = tmp_path / "finetuned"
    result = run_cli([sys.executable, "-m", "t5x_lite", "train", *FINETUNE,
                      f"--gin.MODEL_DIR='{finetuned}'", "--gin.TRAIN_STEPS=8",
                      "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 32}",
                      "--gin.train.log_every=1", "--gin.train.task_eval=None",
                      f"--gin.INITIAL_CHECKPOINT_PATH='{pretrained}'",
                      "--gin.FaultInjector.nan_loss_at_steps=(2, 3, 4)",
                      "--gin.DivergenceConfig.max_consecutive_skips=3",
                      "--gin.DivergenceConfig.skip_batches=5"])
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (finetuned / "recovery.jsonl").read_text()
               .splitlines()]
    assert [(r["step"], r["action"]) for r in records][-1] == (4, "rollback_to_initial_state")
    assert records[-1]["batches_skipped"] == 5
    step_one = [r for r in read_metrics(finetuned) if r["step"] == 1 and "grad_norm" in r]
    assert len(step_one) == 2  # before and after the rollback, on other batches
    # From the checkpoint's params the first gradient norm is about 7.8 on this Task (rows of
    # 96 + 32 tokens); from a fresh init about 10.5.
    assert step_one[1]["grad_norm"] == pytest.approx(step_one[0]["grad_norm"], rel=0.1)
    assert step_one[1]["loss"] == pytest.approx(step_one[0]["loss"], rel=0.02)
    assert all(losses[-1] is not None for losses in losses_by_step(finetuned).values())


def test_infer_writes_outputs_and_scores(pretrained, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"inputs": "def main("}) + "\n"
                       + json.dumps({"inputs": "import"}) + "\n")
    output = tmp_path / "out" / "outputs.jsonl"
    result = _cli("infer", f"--model_dir={pretrained}", f"--prompts_file={prompts}",
                  "--prompt=class ", f"--output={output}", "--max_decode_len=12")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["class ", "def main(", "import"]
    for record in records:
        assert 1 <= len(record["tokens"]) <= 12 and record["score"] < 0
        assert record["output"] == bytes(t - 3 for t in record["tokens"] if t > 2).decode(
            "utf-8", errors="ignore")


def test_bad_prompts_and_unknown_tasks_fail_clearly(pretrained, tmp_path):
    output = tmp_path / "outputs.jsonl"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"inputs": "ok"}\nnot json\n')
    assert_one_line_error(_cli("infer", f"--model_dir={pretrained}", f"--prompts_file={bad}",
                                f"--output={output}"), "infer", "bad.jsonl:2 is not JSON")
    assert_one_line_error(_cli("infer", f"--model_dir={pretrained}",
                                f"--prompts_file={tmp_path / 'missing.txt'}",
                                f"--output={output}"), "infer", "does not exist")
    assert not output.exists()
    assert_one_line_error(_cli("eval", f"--model_dir={pretrained}", "--tasks=no_such_task"),
                           "eval", "unknown Task or Mixture 'no_such_task'")
    assert not (pretrained / "eval_results.jsonl").exists() or "no_such_task" not in (
        pretrained / "eval_results.jsonl").read_text()
