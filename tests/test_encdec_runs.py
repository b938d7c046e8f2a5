"""The encoder-decoder through the command line: a run killed with SIGKILL resumes
bit-identically, fine-tuning a pretrained tiny T5 raises exact match by the `eval`
command, and `infer` continues prompts of its run directory."""

import json
import sys

import pytest

from t5x_lite.inference import decoding, runner
from t5x_lite.parallel import partitioning
from tests.cli import assert_bitwise_resume, hang_then_kill, run_cli

T5_TINY = "--gin_file=models/encdec/tiny.gin"


def _t5x_lite(*args: str, num_devices: int = 2):
    return run_cli([sys.executable, "-m", "t5x_lite", *args], num_devices=num_devices)


# --- SIGKILL and resume ----------------------------------------------------------------------

STEPS = 12
INSTRUCTION_RUN = [T5_TINY, "--gin_file=runs/instruct.gin",
                   "--gin.MIXTURE_OR_TASK_NAME='arithmetic_add_direct'",
                   "--gin.TASK_FEATURE_LENGTHS={'inputs': 40, 'targets': 8}",
                   "--gin.BATCH_SIZE=8", "--gin.MESH_SHAPE=(2, 2, 1)",
                   "--gin.train.eval_every=None", "--gin.train.log_every=1",
                   "--gin.CheckpointConfig.save_every=4", f"--gin.TRAIN_STEPS={STEPS}"]


def _instruction_train(model_dir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "t5x_lite", "train", *INSTRUCTION_RUN,
            f"--gin.MODEL_DIR='{model_dir}'", *extra]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """An uninterrupted instruction run: the reference of the resume, and the pretrained
    model of the fine-tune."""
    model_dir = tmp_path_factory.mktemp("pretrained")
    result = run_cli(_instruction_train(model_dir), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


def test_sigkill_then_restart_replays_identical_losses(pretrained, tmp_path):
    reference_dir, resumed_dir = pretrained, tmp_path / "resumed"

    killed_at = hang_then_kill(
        _instruction_train(resumed_dir, "--gin.FaultInjector.hang_at_step=7"), resumed_dir)
    result = run_cli(_instruction_train(resumed_dir), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "restored step 4" in result.stderr, f"no resume (killed after step {killed_at})"
    assert_bitwise_resume(resumed_dir, reference_dir, STEPS, repeated_step=5)


# --- fine-tuning, eval and infer ---------------------------------------------------------------

INCREMENT = "arithmetic_increment_direct"
FINETUNE_STEPS = 600
FINETUNE = [T5_TINY, "--gin_file=runs/finetune.gin", f"--gin.MIXTURE_OR_TASK_NAME='{INCREMENT}'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 40, 'targets': 8}", "--gin.BATCH_SIZE=32",
            "--gin.create_schedule.peak_value=3e-3", "--gin.create_schedule.warmup_steps=50",
            "--gin.train.eval_every=None", "--gin.train.log_every=50",
            f"--gin.EvalConfig.mixture_or_task_name='{INCREMENT}'",
            "--gin.EvalConfig.num_examples=64", f"--gin.train.task_eval_every={FINETUNE_STEPS}",
            f"--gin.TRAIN_STEPS={FINETUNE_STEPS}"]


def _eval_accuracy(model_dir) -> tuple[float, float]:
    """(exact match %, mean log-likelihood) of the run's newest checkpoint on the increment
    Task, by the `eval` command."""
    result = _t5x_lite("eval", f"--model_dir={model_dir}", f"--tasks={INCREMENT}",
                       "--num_examples=64")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((model_dir / "eval_results.jsonl").read_text().splitlines()[-1])
    assert record["task"] == INCREMENT
    return record["accuracy"], record["log_likelihood"]


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("finetuned")
    result = run_cli([sys.executable, "-m", "t5x_lite", "train", *FINETUNE,
                      f"--gin.MODEL_DIR='{model_dir}'",
                      f"--gin.INITIAL_CHECKPOINT_PATH='{pretrained}'"], num_devices=1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"initialized params from {pretrained}" in result.stderr
    return model_dir


def test_finetuning_on_increments_raises_exact_match(pretrained, finetuned):
    before, before_likelihood = _eval_accuracy(pretrained)
    after, after_likelihood = _eval_accuracy(finetuned)
    in_loop = json.loads((finetuned / "eval_results.jsonl").read_text().splitlines()[0])
    assert in_loop["step"] == FINETUNE_STEPS and in_loop["accuracy"] == after
    assert before <= 5.0, before
    assert after >= 50.0 and after >= before + 40.0, (before, after)
    assert after_likelihood > before_likelihood + 5.0, (before_likelihood, after_likelihood)


def _byte_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode()]


def test_infer_continues_prompts_as_the_model_does_alone(finetuned, tmp_path):
    """A short prompt beside a long one (left-padded to its length) is continued and
    scored as when it is decoded alone, in process, from the same checkpoint."""
    prompts = ["Q: What is the sum of 868 and 1?\nA: ", "41 + 1 = "]
    output = tmp_path / "outputs.jsonl"
    result = _t5x_lite("infer", f"--model_dir={finetuned}", *[f"--prompt={p}" for p in prompts],
                       f"--out={output}", "--max_decode_len=6")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["prompt"] for r in records] == prompts
    for record in records:
        assert 1 <= len(record["tokens"]) <= 6 and record["score"] < 0
        assert record["output"] == bytes(t - 3 for t in record["tokens"] if t > 2).decode(
            "utf-8", errors="ignore")

    rules = partitioning.axis_rules()
    model = runner.load(str(finetuned), None, (-1, 1, 1), rules[0])
    short = records[1]
    alone = decoding.decode(model.spec, model.params, [_byte_ids(prompts[1])], 6, eos_id=1,
                            mesh=model.mesh, rules=rules)
    assert alone.tokens[0, :alone.lengths[0]].tolist() == short["tokens"]
    assert float(alone.scores[0]) == pytest.approx(short["score"], rel=1e-4)
    scored = decoding.score(model.spec, model.params, [_byte_ids(prompts[1])], [short["tokens"]],
                            model.mesh, rules=rules)
    assert float(scored[0]) == pytest.approx(short["score"], rel=1e-4)
