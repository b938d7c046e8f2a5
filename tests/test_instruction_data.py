"""Instruction data: Flan-style Tasks and Mixtures, the loss-on-targets converter, JSONL Tasks."""

import importlib
import inspect
import itertools
import json
import math
import re
from pydoc_data import topics

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5x_lite.config import gin_config
from t5x_lite.models.decoder.converters import InstructionFeatureConverter
from t5x_lite.pipeline import input_pipeline
from t5x_lite.data import (
    arithmetic,
    instruction_tasks,
    jsonl_instruction_task,
    stdlib_functions,
    templates,
)
from t5x_lite.data.instruction_metrics import final_answer
from t5x_lite.data.pydoc_paragraphs import topic_paragraphs
from t5x_lite.models.decoder.family import FEATURES as BATCH_KEYS
from tests.helpers import assert_same_batches, take

LENGTHS = {"inputs": 512, "targets": 384}
BYTE_VOCABULARY = seqio.ByteVocabulary()
EOS = BYTE_VOCABULARY.eos_id


def _config(name, lengths=LENGTHS, **overrides):
    fields = {"mixture_or_task_name": name, "task_feature_lengths": lengths,
              "global_batch_size": 4, "seed": 0, "num_data_shards": 2}
    return input_pipeline.DataConfig(**{**fields, **overrides})


def _examples(task_name, split="train", count=200, lengths=None):
    task = seqio.get_mixture_or_task(task_name)
    dataset = task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1)
    return [{key: ex[f"{key}_pretokenized"].decode() for key in ("inputs", "targets")}
            for ex in itertools.islice(dataset.as_numpy_iterator(), count)]


def _segments(batch, row):
    """(inputs text, targets text) of each packed example in a row, split by loss weight."""
    tokens, weights = batch["decoder_target_tokens"][row], batch["decoder_loss_weights"][row]
    segments = batch["decoder_segment_ids"][row]
    found = []
    for segment in sorted(set(segments[segments != 0])):
        where = segments == segment
        assert tokens[where][-1] == EOS and weights[where][-1] == 1
        inputs, targets = tokens[where & (weights == 0)], tokens[where & (weights == 1)]
        found.append((BYTE_VOCABULARY.decode(inputs.tolist()),
                      BYTE_VOCABULARY.decode(targets[:-1].tolist())))
    return found


# --- the feature converter -------------------------------------------------------------------

def _converted(examples, lengths, pack):
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(examples), output_signature={
            key: tf.TensorSpec([None], tf.int32) for key in ("inputs", "targets")})
    converted = InstructionFeatureConverter(pack=pack)(dataset, lengths)
    return list(converted.as_numpy_iterator())


def test_converter_packs_inputs_then_targets_with_loss_on_targets_only():
    examples = [{"inputs": [7, 8], "targets": [3, EOS]}, {"inputs": [6], "targets": [4, 5, EOS]},
                {"inputs": [9, 9, 9], "targets": [EOS]}]
    rows = _converted(examples, {"inputs": 4, "targets": 4}, pack=True)
    assert len(rows) == 2 and all(set(row) == set(BATCH_KEYS) for row in rows)
    expected = {
        "decoder_target_tokens": [7, 8, 3, 1, 6, 4, 5, 1],
        "decoder_input_tokens": [0, 7, 8, 3, 0, 6, 4, 5],
        "decoder_loss_weights": [0, 0, 1, 1, 0, 1, 1, 1],
        "decoder_segment_ids": [1, 1, 1, 1, 2, 2, 2, 2],
        "decoder_positions": [0, 1, 2, 3, 0, 1, 2, 3],
    }
    for key, values in expected.items():
        np.testing.assert_array_equal(rows[0][key], values, err_msg=key)
    np.testing.assert_array_equal(rows[1]["decoder_loss_weights"], [0, 0, 0, 1, 0, 0, 0, 0])


def test_unpacked_converter_gives_the_same_features():
    rows = _converted([{"inputs": [7, 8], "targets": [3, EOS]}], {"inputs": 3, "targets": 3},
                      pack=False)
    assert set(rows[0]) == set(BATCH_KEYS)
    np.testing.assert_array_equal(rows[0]["decoder_target_tokens"], [7, 8, 3, 1, 0, 0])
    np.testing.assert_array_equal(rows[0]["decoder_input_tokens"], [0, 7, 8, 3, 1, 0])
    np.testing.assert_array_equal(rows[0]["decoder_loss_weights"], [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(rows[0]["decoder_segment_ids"], [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(rows[0]["decoder_positions"], np.arange(6))


# --- the training mixture through train_batches ----------------------------------------------

@pytest.fixture(scope="module")
def train_batches():
    """The first 4 global batches of `instruct_train` (4 rows of 896 tokens, 2 data shards)."""
    return take(input_pipeline.train_batches(_config("instruct_train"), 0, 0, 1), 4)


def test_batches_have_exactly_the_train_step_features(train_batches):
    row_length = _config("instruct_train").sequence_length
    assert row_length == 896
    for batch in train_batches:
        assert set(batch) == set(BATCH_KEYS)
        for value in batch.values():
            assert value.shape == (4, row_length) and value.dtype == np.int32


def test_packed_rows_line_up_tokens_segments_and_positions(train_batches):
    segment_counts = []
    for batch in train_batches:
        for row in range(4):
            targets, inputs = batch["decoder_target_tokens"][row], batch["decoder_input_tokens"][row]
            segments, positions = batch["decoder_segment_ids"][row], batch["decoder_positions"][row]
            np.testing.assert_array_equal(segments == 0, targets == 0)
            assert np.all(batch["decoder_loss_weights"][row][targets == 0] == 0)
            used = segments[segments != 0]
            assert np.all(np.diff(used) >= 0) and set(used) == set(range(1, used.max() + 1))
            for j in np.flatnonzero(segments):
                starts = j == 0 or segments[j] != segments[j - 1]
                assert positions[j] == (0 if starts else positions[j - 1] + 1)
                assert inputs[j] == (0 if starts else targets[j - 1])
            segment_counts.append(len(set(used)))
    assert max(segment_counts) >= 3


def test_every_packed_example_is_a_training_example_split_at_the_loss_boundary(train_batches):
    known = {}
    for example in itertools.chain(instruction_tasks.stdlib_signature_examples("train"),
                                   instruction_tasks.pydoc_topic_examples("train")):
        known.setdefault(example["inputs"], set()).add(example["targets"])
    families = set()
    for batch in train_batches:
        for row in range(4):
            for inputs, targets in _segments(batch, row):
                assert inputs and targets
                if inputs in known:
                    assert targets in known[inputs]
                    families.add("stdlib" if "def " in targets else "pydoc")
                else:
                    families.add(_check_arithmetic(inputs, targets, operations=("+", "-")))
    assert len(families) >= 3, families


_OPERATION_WORDS = {"+": ("+", "sum of"), "-": ("-", "minus"), "*": ("*", "product of")}


def _check_arithmetic(inputs, targets, operations=("+", "-", "*")):
    """Asserts the answer (and each worked step) is right; returns the family's name."""
    a, b = map(int, re.findall(r"\d+", inputs)[:2])
    symbol = next(s for s in operations if any(word in inputs for word in _OPERATION_WORDS[s]))
    answer = {"+": a + b, "-": a - b, "*": a * b}[symbol]
    if "\n" not in targets:
        assert targets == str(answer), (inputs, targets)
        return f"direct {symbol}"
    assert final_answer(targets) == str(answer) and targets.endswith(f"The answer is {answer}.")
    _assert_steps_hold(targets)
    return f"cot {symbol}"


def _assert_steps_hold(solution):
    """Each 'x op y ... = z = ...' in a worked solution is true arithmetic."""
    for line in solution.splitlines():
        claim = line.rsplit(":", 1)[-1].split(",")[0]
        if "=" not in claim or re.search(r"[A-Za-z]", claim):
            continue
        sides = [_evaluate(side) for side in claim.split("=")]
        assert len(set(sides)) == 1, line
    assert sum("=" in line for line in solution.splitlines()) >= 2


def _evaluate(expression):
    """The value of '12 * 3 + 4 - 5': integers, +, - and * with the usual precedence."""
    total = 0
    for sign, term in re.findall(r"([+-]?)\s*([\d\s*]+)", expression.strip()):
        product = math.prod(int(factor) for factor in term.split("*"))
        total += -product if sign == "-" else product
    return total


def test_same_seed_and_position_resume_the_same_stream(train_batches):
    resumed = take(input_pipeline.train_batches(_config("instruct_train"), 2, 0, 1), 2)
    assert_same_batches(resumed, train_batches[2:4])


def test_rows_are_split_between_processes_and_seeds_change_the_data():
    cfg = _config("arithmetic_add_direct", lengths={"inputs": 64, "targets": 8})
    whole = take(input_pipeline.train_batches(cfg, 3, 0, 1), 2)
    halves = [take(input_pipeline.train_batches(cfg, 3, p, 2), 2) for p in range(2)]
    for i in range(2):
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(
                whole[i][key], np.concatenate([halves[0][i][key], halves[1][i][key]]))
    other_seed = take(input_pipeline.train_batches(_config(
        "arithmetic_add_direct", lengths={"inputs": 64, "targets": 8}, seed=1), 3, 0, 1), 1)
    assert not np.array_equal(other_seed[0]["decoder_target_tokens"],
                              whole[0]["decoder_target_tokens"])


def test_eval_batches_read_the_validation_problems():
    cfg = _config("arithmetic_subtract_cot")
    batch = take(input_pipeline.eval_batches(cfg, 1, 0, 1), 1)[0]
    for row in range(4):
        for inputs, targets in _segments(batch, row):
            a, b = map(int, re.findall(r"\d+", inputs)[:2])
            assert arithmetic.problem_split(arithmetic.Problem("subtract", a, b)) == "validation"
            assert _check_arithmetic(inputs, targets) == "cot -"


def test_feature_lengths_must_name_the_task_features():
    with pytest.raises(ValueError, match=r"has features \['inputs', 'targets'\]") as error:
        input_pipeline.train_batches(_config("instruct_train", lengths={"targets": 256}), 0, 0, 1)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"has features \['targets'\]"):
        input_pipeline.train_batches(_config("embedded"), 0, 0, 1)
    assert input_pipeline.feature_converter(_config("arithmetic_add_cot")).loss_on_targets_only
    assert isinstance(input_pipeline.feature_converter(_config("embedded", lengths={"targets": 8})),
                      seqio.DecoderFeatureConverter)


# --- the task families -----------------------------------------------------------------------

@pytest.mark.parametrize("operation", arithmetic.OPERATIONS)
@pytest.mark.parametrize("style", ["direct", "cot"])
def test_arithmetic_tasks_give_right_answers_and_true_steps(operation, style):
    symbol = arithmetic.SYMBOLS[operation]
    for split in ("train", "validation"):
        examples = _examples(f"arithmetic_{operation}_{style}", split, count=60)
        assert len(examples) == 60
        for example in examples:
            assert _check_arithmetic(example["inputs"], example["targets"]) == f"{style} {symbol}"


def test_arithmetic_problems_are_2_to_3_digits_and_splits_are_disjoint():
    problems = {split: {arithmetic.nth_problem("add", "test", split, i) for i in range(300)}
                for split in ("train", "validation")}
    assert not problems["train"] & problems["validation"]
    assert all(10 <= p.a <= 999 and 10 <= p.b <= 999 for p in problems["train"])
    assert {len(str(p.a)) for p in problems["train"]} == {2, 3}
    assert all(arithmetic.problem_split(p) == "validation" for p in problems["validation"])
    validation_share = np.mean([arithmetic.problem_split(arithmetic.Problem("add", a, b))
                                == "validation" for a in range(10, 100) for b in range(10, 100)])
    assert 0.08 < validation_share < 0.12


def test_signatures_are_the_real_function_headers():
    checked = 0
    for function in stdlib_functions.stdlib_functions("train"):
        assert function.source.startswith(function.signature)
        assert re.match(r"(async\s+)?def\s+\w+\s*\(", function.signature)
        assert function.signature.endswith(":")
        if function.module in ("fnmatch", "shlex", "colorsys", "textwrap", "glob", "calendar",
                               "difflib"):
            obj = _lookup(function.module, function.qualname)
            if obj is None:
                continue
            source = inspect.cleandoc("\n" + inspect.getsource(obj))
            source = "\n".join(line for line in source.splitlines() if not line.startswith("@"))
            assert source.startswith(function.signature), function.qualname
            assert function.summary in ("", inspect.getdoc(obj).splitlines()[0])
            checked += 1
    assert checked >= 20
    [shlex_quote] = [ex for ex in _examples("stdlib_signature", count=None)
                     if ex["targets"] == "def quote(s):" and "shlex" in ex["inputs"]]
    assert "Return a shell-escaped version of the string *s*." in shlex_quote["inputs"]


def _lookup(module, qualname):
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if obj is None or getattr(obj, "__qualname__", None) != qualname:
        return None
    return obj if getattr(obj, "__module__", None) == module else None


def test_summary_task_asks_for_the_first_docstring_line_of_code_without_it():
    examples = _examples("stdlib_summary", count=None)
    by_summary = {ex["targets"]: ex["inputs"] for ex in examples}
    inputs = by_summary["Test whether FILENAME matches PATTERN."]
    assert "def fnmatch(name, pat):" in inputs and "FILENAME" not in inputs
    assert "return fnmatchcase(name, pat)" in inputs
    assert all("\n" not in ex["targets"] for ex in examples)
    assert np.mean([ex["targets"] not in ex["inputs"] for ex in examples]) > 0.99


def test_pydoc_task_gives_the_opening_paragraph_of_a_topic():
    examples = _examples("pydoc_topic_paragraph", count=None)
    assert_topic = [ex for ex in examples if "'assert'" in ex["inputs"]
                    or '"assert" statement' in ex["inputs"]]
    assert len(assert_topic) == 1
    assert assert_topic[0]["targets"] == ("Assert statements are a convenient way to insert "
                                          "debugging assertions into a program:")
    for record in topic_paragraphs("train"):
        assert record.paragraph in " ".join(topics.topics[record.topic].split())


def test_templates_vary_and_are_chosen_by_example():
    examples = _examples("arithmetic_add_direct", count=200)
    phrasings = {re.sub(r"\d+", "N", ex["inputs"]) for ex in examples}
    assert len(phrasings) == 4
    signature_inputs = [ex["inputs"] for ex in _examples("stdlib_signature", count=200)]
    for phrase in ("Signature:\n", "What is its function header?", "Give the def statement",
                   "Declare this function in Python."):
        assert 10 < sum(phrase in inputs for inputs in signature_inputs) < 100, phrase
    table = instruction_tasks.phrasings.ARITHMETIC_DIRECT
    chosen = {templates.choose(table, f"key {i}") for i in range(100)}
    assert chosen == set(table)
    assert templates.choose(table, "key 7") == templates.choose(table, "key 7")
    assert _examples("arithmetic_add_direct", count=20) == examples[:20]


def test_held_out_tasks_are_in_no_training_mixture():
    train = {task.name for task in seqio.get_mixture_or_task("instruct_train").tasks}
    held_out = {task.name for task in seqio.get_mixture_or_task("instruct_heldout").tasks}
    assert held_out == set(instruction_tasks.HELD_OUT_TASKS)
    assert not train & held_out
    assert len(train) >= 4
    mixture = seqio.get_mixture_or_task("instruct_train")
    assert {task.name: mixture.get_rate(task) for task in mixture.tasks} == (
        instruction_tasks.TRAIN_RATES)
    spm = seqio.get_mixture_or_task("instruct_train_spm")
    assert {task.name for task in spm.tasks} == {name + "_spm" for name in train}
    assert isinstance(input_pipeline.output_vocabulary("instruct_train_spm"),
                      seqio.SentencePieceVocabulary)


# --- zero-shot evaluation with seqio ---------------------------------------------------------

def _target_tokens(features):
    """A perfect model's output: the target tokens, without EOS."""
    tokens = features["decoder_target_tokens"][features["decoder_loss_weights"] == 1]
    return [int(t) for t in tokens if t != EOS]


def _predictions(make_text, length=384):
    """A predict_fn decoding `make_text(target)`, padded to `length` as a decoder's output is."""
    def predict(dataset):
        outputs = []
        for index, features in dataset.as_numpy_iterator():
            tokens = BYTE_VOCABULARY.encode(make_text(BYTE_VOCABULARY.decode(
                _target_tokens(features))))
            outputs.append((index, tokens + [0] * (length - len(tokens))))
        return outputs
    return predict


def _scores(value: float):
    """A score_fn giving every example the log-likelihood `value`."""
    def score(dataset):
        return [(index, value) for index, _ in dataset.as_numpy_iterator()]
    return score


@pytest.fixture(scope="module")
def held_out_evaluator():
    evaluator = seqio.Evaluator(
        "arithmetic_multiply_cot", feature_converter=InstructionFeatureConverter(pack=False),
        eval_split="validation", num_examples=12, sequence_length={"inputs": 96, "targets": 384},
        async_compute_metrics=False)
    yield evaluator
    evaluator.close()


@pytest.mark.parametrize("prediction,expected", [
    (lambda target: target, 100.0),                                     # the worked solution
    (lambda target: f"I believe the answer is {final_answer(target)}.", 100.0),
    (lambda target: f"The answer is {int(final_answer(target)) + 1}.", 0.0),
])
def test_evaluator_scores_the_final_answer_of_worked_solutions(held_out_evaluator, prediction,
                                                               expected):
    metrics, _ = held_out_evaluator.evaluate(compute_metrics=True,
                                             predict_fn=_predictions(prediction),
                                             score_fn=_scores(-2.5))
    assert metrics.result()["arithmetic_multiply_cot"] == {
        "accuracy": pytest.approx(expected), "log_likelihood": pytest.approx(-2.5)}


def test_direct_answers_are_stripped_and_summaries_get_token_f1():
    task = seqio.get_mixture_or_task("arithmetic_add_direct")
    assert task.postprocess_fn(b" 834\n", is_target=True) == "834"
    summary = seqio.get_mixture_or_task("stdlib_summary")
    scores = {}
    for metric_fn in summary.predict_metric_fns:
        scores.update(metric_fn(["Return the sum of a and b."], ["Return the sum."]))
    assert scores["exact_match"] == 0.0
    assert scores["token_f1"] == pytest.approx(60.0)  # precision 3/3, recall 3/7


# --- user JSONL Tasks ------------------------------------------------------------------------

@pytest.fixture()
def qa_file(tmp_path):
    records = [{"question": f"What is the capital of country {i}?", "answer": f"City {i}",
                "id": i} for i in range(60)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_jsonl_task_via_gin(qa_file):
    try:
        gin.parse_config(rf"""
            jsonl_instruction_task.name = 'test_qa'
            jsonl_instruction_task.files = ['{qa_file}']
            jsonl_instruction_task.input_key = 'question'
            jsonl_instruction_task.target_key = 'answer'
            jsonl_instruction_task.validation_fraction = 0.25
            jsonl_instruction_task.templates = [('Q: {{input}}\nA: ', '{{target}}'),
                                                ('Question {{id}}: {{input}}\nAnswer: ',
                                                 '{{target}}')]
            DataConfig.mixture_or_task_name = @jsonl_instruction_task()
            DataConfig.task_feature_lengths = {{'inputs': 64, 'targets': 16}}
            DataConfig.global_batch_size = 4
            DataConfig.num_data_shards = 1
        """)
        cfg = input_pipeline.DataConfig()
    finally:
        gin.clear_config()
    assert cfg.mixture_or_task_name == "test_qa"
    pairs = {split: [p for batch in batches for row in range(4) for p in _segments(batch, row)]
             for split, batches in (
                 ("train", take(input_pipeline.train_batches(cfg, 0, 0, 1), 3)),
                 ("validation", take(input_pipeline.eval_batches(cfg, 2, 0, 1), 2)))}
    numbers, phrasings = {}, set()
    for split, split_pairs in pairs.items():
        for inputs, targets in split_pairs:
            match = re.fullmatch(r"(Q|Question (\d+)): What is the capital of country (\d+)\?\n"
                                 r"(A|Answer): ", inputs)
            assert match and targets == f"City {match[3]}"
            assert match[2] in (None, match[3])
            numbers.setdefault(split, set()).add(match[3])
            phrasings.add(match[1][0:2])
    assert phrasings == {"Q", "Qu"}
    assert not numbers["train"] & numbers["validation"]
    assert 5 <= len(numbers["validation"]) <= 25


def test_jsonl_task_with_validation_files_and_default_template(qa_file, tmp_path):
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(json.dumps({"input": "2 + 2", "target": "4"}) + "\n")
    (tmp_path / "train.jsonl").write_text(json.dumps({"input": "1 + 1", "target": "2"}) + "\n")
    name = jsonl_instruction_task("test_qa_files", files=[str(tmp_path / "train.jsonl")],
                                  validation_files=[str(held_out)])
    assert _examples(name, "validation") == [{"inputs": "2 + 2", "targets": "4"}]
    assert _examples(name, "train") == [{"inputs": "1 + 1", "targets": "2"}]


def test_jsonl_task_errors_are_one_clear_line(qa_file, tmp_path):
    with pytest.raises(ValueError, match=r"qa.jsonl:1 has no string field 'input'") as error:
        jsonl_instruction_task("test_bad", files=[str(qa_file)])
    message, _, gin_context = str(error.value).partition("\n  In call to configurable")
    assert "\n" not in message and (not gin_context or "jsonl_instruction_task" in gin_context)
    with pytest.raises(ValueError, match="a template does not fit .*qa.jsonl:1"):
        jsonl_instruction_task("test_bad", files=[str(qa_file)], input_key="question",
                               target_key="answer", templates=[("{missing}", "{target}")])
    with pytest.raises(ValueError, match="file not found"):
        jsonl_instruction_task("test_bad", files=[str(tmp_path / "none.jsonl")])


def test_examples_longer_than_the_lengths_are_dropped_not_cut(qa_file):
    name = jsonl_instruction_task("test_qa_lengths", files=[str(qa_file)], input_key="question",
                                  target_key="answer", validation_fraction=0.0)
    kept = _examples(name, count=None, lengths={"inputs": 33, "targets": 8})
    assert sorted(int(ex["targets"].split()[1]) for ex in kept) == list(range(10))
    with pytest.raises(tf.errors.InvalidArgumentError, match="raise the lengths"):
        _examples("arithmetic_add_cot", count=1, lengths={"inputs": 64, "targets": 32})


# --- gin files -------------------------------------------------------------------------------

@pytest.mark.parametrize("gin_file,task,lengths", [
    ("runs/instruct.gin", "instruct_train", {"inputs": 512, "targets": 384}),
    ("experiments/arithmetic_tiny.gin", "arithmetic_add_direct", {"inputs": 96, "targets": 32}),
])
def test_instruction_gin_files_configure_the_data(gin_file, task, lengths):
    gin.clear_config()
    try:
        gin.add_config_file_search_path(gin_config.installed_gin_dir())
        gin.parse_config_files_and_bindings([gin_file], ["MODEL_DIR = '/tmp/unused'"],
                                            skip_unknown=True, finalize_config=False)
        cfg = input_pipeline.DataConfig()
    finally:
        gin.clear_config()
    assert (cfg.mixture_or_task_name, dict(cfg.task_feature_lengths)) == (task, lengths)
    assert isinstance(input_pipeline.feature_converter(cfg), InstructionFeatureConverter)
