"""Rows of whole examples (inputs and targets) read from token stores: the rows seqio
packs, continued from a checkpoint's window cursor, the same for every process count,
and each example once per epoch."""

import itertools
import json
import shutil

import numpy as np
import pytest
import seqio

from t5x_lite.data import jsonl_instruction_task
from t5x_lite.models import family as family_lib
from t5x_lite.pipeline import input_pipeline
from t5x_lite.pipeline.example_rows import WindowCursor, next_fit
from t5x_lite.pipeline.input_pipeline import DataConfig
from tests.helpers import assert_same_batches

LENGTHS = {"inputs": 40, "targets": 8}  # rows of 48 tokens, packed in windows of 48 examples
BATCH = 4


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    """About 110 training examples of 6 to 40 tokens: a few windows per epoch."""
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    pairs = [{"input": f"{i} plus {i % 7} is" + " so" * (i % 9), "target": str(i + i % 7)}
             for i in range(120)]
    path.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    return path


@pytest.fixture(scope="module")
def qa_task(qa_file) -> str:
    return jsonl_instruction_task("example_rows_qa", files=[str(qa_file)])


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return tmp_path_factory.mktemp("stores")


def _config(task, stores, **overrides) -> DataConfig:
    fields = {"global_batch_size": BATCH, "store_dir": str(stores), **overrides}
    return DataConfig(task, LENGTHS, **fields)


def _stream(cfg, family=None):
    return input_pipeline._store_stream(cfg, "train", cfg.shuffle, cfg.seed,  # noqa: SLF001
                                        family)


@pytest.fixture(scope="module")
def continuous(qa_task, stores):
    """The first 60 batches (more than two epochs), and the cursor after each."""
    batches = input_pipeline.train_batches(_config(qa_task, stores), 0, 0, 1)
    assert input_pipeline.uses_store(_config(qa_task, stores))
    taken = [(next(batches), batches.cursor) for _ in range(60)]
    return [batch for batch, _ in taken], [cursor for _, cursor in taken]


def test_next_fit_starts_a_row_when_the_next_example_does_not_fit():
    lengths_E1 = np.array([3, 4, 2, 5, 5, 1])[:, None]
    np.testing.assert_array_equal(next_fit(lengths_E1, [8]), [0, 2, 4, 6])


def test_two_sided_next_fit_starts_a_row_when_either_side_does_not_fit():
    lengths_E2 = np.array([[3, 1], [2, 5], [1, 1], [4, 1], [2, 2]])
    np.testing.assert_array_equal(next_fit(lengths_E2, [6, 6]), [0, 2, 4, 5])


@pytest.mark.parametrize("family_name", ["decoder", "encdec"])
def test_rows_are_the_rows_seqio_packs_from_the_same_examples(qa_task, stores, family_name):
    """The decoder's rows hold each example's inputs then targets; the encoder-decoder's
    hold the inputs and the targets apart, each side packed as seqio packs both."""
    family = family_lib.by_name(family_name)
    cfg = _config(qa_task, stores, shuffle=False)
    stream = _stream(cfg, family)
    windows = stream.sources[0].num_examples // stream.window_examples
    assert windows >= 2
    rows = sum(stream.window(w).num_rows for w in range(windows))
    ours = family.packed_features(stream.packed_rows(0, rows, WindowCursor()))
    task = seqio.get_mixture_or_task(qa_task)
    examples = task.get_dataset(LENGTHS, split="train", shuffle=False).take(
        windows * stream.window_examples)
    converter = family.feature_converter(has_inputs=True, pack=True)
    packed = list(converter(examples, LENGTHS).as_numpy_iterator())
    assert len(packed) == rows
    assert_same_batches([{key: np.stack([row[key] for row in packed]) for key in ours}], [ours])


@pytest.mark.parametrize("consumed", [1, 5, 20, 33])
def test_a_stream_resumed_at_its_cursor_continues_it(qa_task, stores, continuous, consumed):
    batches, cursors = continuous
    resumed = input_pipeline.train_batches(_config(qa_task, stores), consumed, 0, 1,
                                           cursor=cursors[consumed - 1])
    assert_same_batches(list(itertools.islice(resumed, 3)), batches[consumed:consumed + 3])


@pytest.mark.parametrize("window", [1, 2, 3])
def test_rows_from_a_window_boundary_are_the_same_from_any_earlier_cursor(qa_task, stores,
                                                                         continuous, window):
    batches, _ = continuous
    stream = _stream(_config(qa_task, stores))
    starts = np.cumsum([0] + [stream.window(w).num_rows for w in range(window)])
    rows = {key: np.concatenate([batch[key] for batch in batches])[starts[-1]:starts[-1] + 6]
            for key in batches[0]}
    for earlier, first_row in enumerate(starts):
        packed = stream.packed_rows(int(starts[-1]), 6, WindowCursor(earlier, int(first_row)))
        assert_same_batches([family_lib.default().packed_features(packed)], [rows])


def test_the_cursors_cross_windows_and_epochs(qa_task, stores, continuous):
    _, cursors = continuous
    stream = _stream(_config(qa_task, stores))
    windows_per_epoch = stream.sources[0].num_examples / stream.window_examples
    assert cursors[-1].window > 2 * windows_per_epoch
    assert all(cursor.first_row <= BATCH * i for i, cursor in enumerate(cursors))


def test_a_batch_size_change_continues_at_the_next_unread_row(qa_task, stores, continuous):
    batches, cursors = continuous
    half = _config(qa_task, stores, global_batch_size=BATCH // 2)
    resumed = input_pipeline.train_batches(half, 0, 0, 1, row_offset=7 * BATCH,
                                           cursor=cursors[6])
    rows = [{key: value[:BATCH // 2] for key, value in batches[7].items()},
            {key: value[BATCH // 2:] for key, value in batches[7].items()}]
    assert_same_batches(list(itertools.islice(resumed, 2)), rows)


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_read_their_own_rows_of_the_same_global_batches(qa_task, stores, continuous,
                                                                   process_count):
    batches, cursors = continuous
    parts = [list(itertools.islice(input_pipeline.train_batches(
        _config(qa_task, stores), 9, p, process_count, cursor=cursors[8]), 2))
        for p in range(process_count)]
    joined = [{key: np.concatenate([part[i][key] for part in parts]) for key in batches[0]}
              for i in range(2)]
    assert_same_batches(joined, batches[9:11])


def test_one_epoch_holds_every_example_once(qa_task, stores):
    stream = _stream(_config(qa_task, stores))
    epoch = stream.sources[0].num_examples
    windows = [stream.window(w) for w in range(-(-epoch // stream.window_examples))]
    examples = np.concatenate([window.examples for window in windows])[:epoch]
    np.testing.assert_array_equal(np.sort(examples), np.arange(epoch))
    assert not np.array_equal(examples, np.arange(epoch))  # shuffled


def test_eval_reads_the_validation_store_unshuffled(qa_task, stores):
    cfg = _config(qa_task, stores)
    first = list(input_pipeline.eval_batches(cfg, 2, 0, 1))
    other_seed = list(input_pipeline.eval_batches(_config(qa_task, stores, seed=5), 2, 0, 1))
    assert_same_batches(first, other_seed)
    validation = input_pipeline._store_stream(cfg, "validation", False, 0)  # noqa: SLF001
    assert np.array_equal(validation.window(0).examples[:5], np.arange(5))


def test_a_run_resumed_from_a_checkpoint_repeats_its_losses_bitwise(qa_file, stores, tmp_path):
    from tests.cli import losses_by_step, run_cli, train_command
    flags = ["--gin.MIXTURE_OR_TASK_NAME=@jsonl_instruction_task()",
             "--gin.jsonl_instruction_task.name='example_rows_cli'",
             f"--gin.jsonl_instruction_task.files=['{qa_file}']",
             f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.DataConfig.store_dir='{stores}'",
             "--gin.CheckpointConfig.save_every=2"]
    model_dir = tmp_path / "run"
    first = run_cli(train_command(model_dir, 4, *flags))
    assert first.returncode == 0, first.stderr[-2000:]
    meta = json.loads((model_dir / "checkpoints/2/meta/metadata").read_text())
    assert meta["data_rows"] == 16 and meta["data_window"][1] <= 8
    shutil.rmtree(model_dir / "checkpoints/4")
    second = run_cli(train_command(model_dir, 4, *flags))
    assert second.returncode == 0 and "restored step 2" in second.stderr, second.stderr[-2000:]
    losses = losses_by_step(model_dir)
    assert [len(losses[step]) for step in (1, 2, 3, 4)] == [1, 1, 2, 2]
    assert losses[3][0] == losses[3][1] and losses[4][0] == losses[4][1]
