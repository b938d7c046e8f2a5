"""The data layer: embedded corpus, vocabularies, text-file Tasks and the sharded batch stream."""

import json
import os
import pathlib
import re
import time

import gin
import numpy as np
import pytest
import seqio

from t5x_lite.models.decoder.family import FEATURES as MODEL_FEATURES
from t5x_lite.pipeline import data_position, input_pipeline, vocabularies
from t5x_lite.data import embedded_corpus, text_file_task
from t5x_lite.data.embedded_corpus import documents
from tests.helpers import assert_same_batches, take

LENGTH = 64


def _config(name, **overrides):
    """The seqio (skip) stream: the store stream has its own tests (test_token_store)."""
    fields = dict(mixture_or_task_name=name, task_feature_lengths={"targets": LENGTH},
                  global_batch_size=8, seed=0, num_data_shards=1, stream="skip")
    return input_pipeline.DataConfig(**{**fields, **overrides})


def _decoded_rows(batches, vocabulary):
    rows = []
    for batch in batches:
        for tokens in batch["decoder_target_tokens"]:
            ids = [int(t) for t in tokens if t not in (0, vocabulary.eos_id)]
            rows.append(vocabulary.decode(ids))
    return rows


@pytest.fixture(scope="module")
def short_records_task(tmp_path_factory):
    """A jsonl Task of 40 short records; the last 4 are the validation split."""
    path = tmp_path_factory.mktemp("jsonl") / "records.jsonl"
    records = [{"text": f"record {i}: " + "ab" * (i % 7), "id": i} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return text_file_task(files=[str(path)], name="test_short_records")


# --- embedded corpus -------------------------------------------------------------------------

def test_embedded_corpus_builds_offline_with_disjoint_nonempty_splits():
    builder = embedded_corpus.prepared_builder()
    for kind in documents.KINDS:
        names = {}
        for split in ("train", "validation"):
            dataset = builder.as_dataset(split=embedded_corpus.split_name(kind, split))
            names[split] = {example["name"].decode() for example in dataset.as_numpy_iterator()}
            assert names[split], f"{kind} {split} is empty"
        assert not names["train"] & names["validation"]
        assert len(names["validation"]) < 0.1 * len(names["train"])


def test_embedded_corpus_shards_are_disjoint_and_complete():
    source = seqio.get_mixture_or_task("embedded_prose").source
    names_by_shard = [
        [example["name"].decode() for example in source.get_dataset(
            "validation", shuffle=True, seed=shard, shard_info=seqio.ShardInfo(shard, 3))
         .as_numpy_iterator()] for shard in range(3)]
    all_names = sum(names_by_shard, [])
    assert len(all_names) == len(set(all_names))
    assert set(all_names) == {d.name for d in documents.split_documents("prose")["validation"]}


def test_embedded_split_is_a_stable_function_of_the_document_names():
    docs = documents.documents("prose")
    held_out = documents.validation_names(docs)
    assert held_out == documents.validation_names(list(reversed(docs)))
    assert held_out == {d.name for d in documents.split_documents("prose")["validation"]}


# --- vocabularies ----------------------------------------------------------------------------

def test_byte_vocabulary_follows_the_byt5_layout():
    vocabulary = vocabularies.byte_vocabulary()
    assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
    assert vocabulary.encode("Aé") == [ord("A") + 3, 0xC3 + 3, 0xA9 + 3]
    assert vocabulary.decode([ord("A") + 3, 0xC3 + 3, 0xA9 + 3]) == "Aé"
    assert vocabulary.vocab_size == 256 + 3


def test_sentencepiece_vocabulary_is_cached_and_round_trips():
    size = vocabularies.DEFAULT_SPM_VOCAB_SIZE
    path = vocabularies.build_sentencepiece_vocab(vocab_size=size)
    modified = os.stat(path).st_mtime_ns
    started = time.perf_counter()
    assert vocabularies.build_sentencepiece_vocab(vocab_size=size) == path
    assert time.perf_counter() - started < 1.0
    assert os.stat(path).st_mtime_ns == modified

    vocabulary = vocabularies.sentencepiece_vocabulary(size)
    assert vocabulary.sentencepiece_model_file == path
    assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id, vocabulary.vocab_size) == (
        0, 1, 2, size)
    text = "def area(r):\n\treturn  3.14159 * r ** 2  # ∂ü\n\n    pass\n"
    ids = vocabulary.encode(text)
    assert len(ids) < len(text.encode())
    assert vocabulary.decode(ids) == text


def test_build_vocab_command_copies_the_model_to_the_output_path(tmp_path, capsys):
    size = vocabularies.DEFAULT_SPM_VOCAB_SIZE
    output = tmp_path / "vocab" / "spm.model"
    path = vocabularies.build_vocab_command(size, str(output))
    assert path == str(output)
    cached = pathlib.Path(vocabularies.build_sentencepiece_vocab(size))
    assert output.read_bytes() == cached.read_bytes()
    assert str(output) in capsys.readouterr().out


def test_sentencepiece_vocabulary_trains_itself_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("T5X_LITE_CACHE_DIR", str(tmp_path))
    vocabulary = vocabularies.sentencepiece_vocabulary(512)
    assert not os.path.exists(vocabulary.sentencepiece_model_file)
    assert vocabulary.vocab_size == 512
    assert vocabulary.sentencepiece_model_file.startswith(str(tmp_path))
    assert os.path.exists(vocabulary.sentencepiece_model_file)


# --- determinism, resume, sharding -----------------------------------------------------------

@pytest.fixture(scope="module")
def mixture_batches():
    """The first 6 global batches of the byte mixture, seed 0, 2 data shards."""
    cfg = _config("embedded", num_data_shards=2)
    return take(input_pipeline.train_batches(cfg, 0, 0, 1), 6)


def test_same_seed_and_position_give_identical_batches_and_resume_matches(mixture_batches,
                                                                         capsys):
    cfg = _config("embedded", num_data_shards=2)
    resumed = take(input_pipeline.train_batches(cfg, start_position=4, process_index=0,
                                                 process_count=1), 2)
    assert_same_batches(resumed, mixture_batches[4:6])
    said = capsys.readouterr().err
    assert "replaying 4 batches" in said and re.search(r"replayed 4 batches in [\d.]+ s", said)


def test_different_seeds_give_different_batches(mixture_batches):
    cfg = _config("embedded", num_data_shards=2, seed=1)
    other = take(input_pipeline.train_batches(cfg, 0, 0, 1), 1)[0]
    assert not np.array_equal(other["decoder_target_tokens"],
                              mixture_batches[0]["decoder_target_tokens"])


def test_batches_have_the_model_features(mixture_batches):
    for batch in mixture_batches:
        assert set(batch) == set(MODEL_FEATURES)
        for value in batch.values():
            assert value.shape == (8, LENGTH) and value.dtype == np.int32
        assert (batch["decoder_target_tokens"] != 0).mean() > 0.9
        for row in range(8):
            _check_packed_row(*_row_features(batch, row))


def test_global_batch_is_the_same_for_any_process_count(short_records_task):
    cfg = _config(short_records_task, num_data_shards=4)
    global_batches = {}
    for process_count in (1, 2, 4):
        per_process = [take(input_pipeline.train_batches(cfg, 1, p, process_count), 2)
                       for p in range(process_count)]
        for rows in per_process[0][0].values():
            assert rows.shape[0] == 8 // process_count
        global_batches[process_count] = [
            {key: np.concatenate([batches[i][key] for batches in per_process])
             for key in MODEL_FEATURES} for i in range(2)]
    assert_same_batches(global_batches[1], global_batches[2])
    assert_same_batches(global_batches[1], global_batches[4])


def test_bad_layouts_raise_one_clear_line():
    with pytest.raises(ValueError, match="not a multiple") as error:
        input_pipeline.train_batches(_config("embedded", num_data_shards=3), 0, 0, 2)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="not divisible"):
        input_pipeline.train_batches(_config("embedded", num_data_shards=3), 0, 0, 1)
    with pytest.raises(ValueError, match="No seqio Task or Mixture"):
        input_pipeline.output_vocabulary("no_such_task")


# --- packing ---------------------------------------------------------------------------------

def test_resume_checks_the_recorded_batch_shape_when_there_is_one():
    cfg = _config("embedded")
    meta = {"data_position": 5, **data_position.position_meta(cfg)}
    data_position.resume_config(cfg, 5, meta, "/run")
    data_position.resume_config(cfg, 5, {"data_position": 5}, "/run")  # an older checkpoint
    longer = _config("embedded", task_feature_lengths={"targets": 2 * LENGTH})
    with pytest.raises(input_pipeline.ConfigError, match=(
            r"batches of 8 x 64 tokens; this config has 8 x 128: resume with "
            r"TASK_FEATURE_LENGTHS=\{'targets': 64\}, or start a new MODEL_DIR")):
        data_position.resume_config(longer, 5, meta, "/run")


def test_packed_rows_restart_positions_per_segment(short_records_task):
    cfg = _config(short_records_task)
    batches = take(input_pipeline.train_batches(cfg, 0, 0, 1), 2)
    segment_counts = []
    for batch in batches:
        for row in range(8):
            segment_counts.append(_check_packed_row(*_row_features(batch, row)))
    assert max(segment_counts) >= 2


def _row_features(batch, row):
    keys = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
            "decoder_segment_ids", "decoder_positions")
    return [batch[key][row] for key in keys]


def _check_packed_row(targets, inputs, weights, segments, positions):
    """Checks one packed row and returns its number of segments."""
    np.testing.assert_array_equal(weights, (targets != 0).astype(np.int32))
    np.testing.assert_array_equal(segments == 0, targets == 0)
    for j in range(len(targets)):
        if segments[j] == 0:
            continue
        starts_segment = j == 0 or segments[j] != segments[j - 1]
        assert positions[j] == (0 if starts_segment else positions[j - 1] + 1)
        assert inputs[j] == (0 if starts_segment else targets[j - 1])
    return len(set(segments[segments != 0]))


def test_unpacked_rows_get_segment_ids_and_positions(short_records_task):
    cfg = _config(short_records_task, pack=False)
    batch = take(input_pipeline.train_batches(cfg, 0, 0, 1), 1)[0]
    np.testing.assert_array_equal(batch["decoder_segment_ids"],
                                  (batch["decoder_target_tokens"] != 0).astype(np.int32))
    np.testing.assert_array_equal(batch["decoder_positions"],
                                  np.broadcast_to(np.arange(LENGTH), (8, LENGTH)))


# --- text files ------------------------------------------------------------------------------

def test_txt_task_splits_each_file_by_position(tmp_path):
    text = "".join(f"line {i:05d} of the test stream\n" for i in range(400))
    path = tmp_path / "stream.txt"
    path.write_text(text)
    cut = int(len(text) * 0.85)
    train_text, validation_text = text[:cut], text[cut:]
    name = text_file_task(files=[str(path)], validation_fraction=0.15, name="test_stream",
                          chunk_chars=256)
    vocabulary = input_pipeline.output_vocabulary(name)
    cfg = _config(name, pack=False, num_data_shards=2)

    validation_rows = _decoded_rows(input_pipeline.eval_batches(cfg, 6, 0, 1), vocabulary)
    train_rows = _decoded_rows(take(input_pipeline.train_batches(cfg, 0, 0, 1), 6), vocabulary)
    assert all(0 < len(row) <= LENGTH - 1 for row in validation_rows + train_rows)
    assert all(row in validation_text and row not in train_text for row in validation_rows)
    assert all(row in train_text and row not in validation_text for row in train_rows)
    assert "".join(sorted(set(validation_rows), key=validation_text.index)) == validation_text


def test_txt_task_uses_given_validation_files(tmp_path):
    (tmp_path / "train.txt").write_text("training text " * 50)
    (tmp_path / "held_out.txt").write_text("validation text " * 50)
    name = text_file_task(files=[str(tmp_path / "train.txt")], name="test_given_validation",
                          validation_files=[str(tmp_path / "held_out.txt")])
    rows = _decoded_rows(input_pipeline.eval_batches(_config(name, pack=False), 1, 0, 1),
                         input_pipeline.output_vocabulary(name))
    assert all(row in "validation text " * 50 for row in rows)


def test_jsonl_task_reads_one_example_per_line(short_records_task):
    cfg = _config(short_records_task, pack=False)
    vocabulary = input_pipeline.output_vocabulary(short_records_task)
    rows = _decoded_rows(input_pipeline.eval_batches(cfg, 1, 0, 1), vocabulary)
    expected = [f"record {i}: " + "ab" * (i % 7) for i in range(36, 40)]
    assert rows == expected * 2


def test_eval_rows_are_split_between_processes(short_records_task):
    cfg = _config(short_records_task, num_data_shards=2)
    whole = take(input_pipeline.eval_batches(cfg, 2, 0, 1), 2)
    halves = [take(input_pipeline.eval_batches(cfg, 2, p, 2), 2) for p in range(2)]
    for i in range(2):
        for key in MODEL_FEATURES:
            np.testing.assert_array_equal(
                whole[i][key], np.concatenate([halves[0][i][key], halves[1][i][key]]))


def test_text_task_is_gin_configurable_and_reregistering_replaces(tmp_path):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("first text\n")
    second.write_text("second text\n")
    text_file_task(files=[str(first)], validation_fraction=0.0, name="test_gin_task")
    try:
        gin.parse_config(f"""
            text_file_task.files = ['{second}']
            text_file_task.validation_fraction = 0.0
            text_file_task.name = 'test_gin_task'
            DataConfig.mixture_or_task_name = @text_file_task()
            DataConfig.task_feature_lengths = {{'targets': 32}}
            DataConfig.global_batch_size = 2
        """)
        assert input_pipeline.DataConfig().mixture_or_task_name == "test_gin_task"
    finally:
        gin.clear_config()
    source = seqio.get_mixture_or_task("test_gin_task").source
    texts = [ex["text"].decode() for ex in source.get_dataset("train", shuffle=False)
             .as_numpy_iterator()]
    assert texts == ["second text\n"]


def test_text_task_errors_are_one_clear_line(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(ValueError) as error:
        text_file_task(files=[str(missing)], name="test_missing")
    assert re.fullmatch(r"text_file_task: file not found: .*missing.txt .*existing file\.",
                        _own_line(error.value))

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text key"}\n')
    with pytest.raises(ValueError) as error:
        text_file_task(files=[str(bad)], name="test_bad_jsonl")
    assert re.fullmatch(r"text_file_task: .*bad.jsonl:2 has no 'text' field; .*text\.",
                        _own_line(error.value))


def _own_line(error):
    """The message without the call context gin appends to errors in configurables."""
    message, _, gin_context = str(error).partition("\n  In call to configurable")
    assert "\n" not in message and (not gin_context or "text_file_task" in gin_context)
    return message


def test_missing_eval_split_raises(tmp_path):
    (tmp_path / "only_train.txt").write_text("some text\n" * 20)
    name = text_file_task(files=[str(tmp_path / "only_train.txt")], validation_fraction=0.0,
                          name="test_no_validation")
    with pytest.raises(ValueError, match="has no 'validation' split"):
        input_pipeline.eval_batches(_config(name), 1, 0, 1)


def test_too_many_shards_for_the_eval_split_raises(short_records_task):
    cfg = _config(short_records_task, num_data_shards=8)
    with pytest.raises(ValueError, match="gave no batch to data shard 4 of 8"):
        next(input_pipeline.eval_batches(cfg, 1, process_index=1, process_count=2))


# --- SentencePiece tasks ---------------------------------------------------------------------

def test_spm_mixture_yields_batches_in_the_spm_vocabulary():
    cfg = _config("embedded_spm")
    vocabulary = input_pipeline.output_vocabulary("embedded_spm")
    batch = take(input_pipeline.train_batches(cfg, 0, 0, 1), 1)[0]
    assert batch["decoder_target_tokens"].max() < vocabulary.vocab_size
    assert vocabulary.vocab_size == vocabularies.DEFAULT_SPM_VOCAB_SIZE
