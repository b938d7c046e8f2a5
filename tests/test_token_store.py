"""The token-store stream: batch i is a pure function of (seed, i, the stores), reached in
constant time, the same for every process count, covering each Task once per epoch,
mixing by exact row counts, and cutting whole documents into the rows seqio packs."""

import dataclasses
import hashlib
import itertools
import pathlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import seqio

from t5x_lite.data import text_file_task
from t5x_lite.models import family as family_lib
from t5x_lite.pipeline import data_position, input_pipeline, store_stream
from t5x_lite.pipeline.input_pipeline import DataConfig
from t5x_lite.pipeline.token_store import TokenStore
from tests.helpers import assert_same_batches

LENGTH = 16
BATCH = 8


def _lines(prefix: str, count: int) -> str:
    return "".join(f"{prefix} {i}: {'xyz' * (i % 5)}\n" for i in range(count))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return tmp_path_factory.mktemp("stores")


@pytest.fixture(scope="module")
def text_task(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(_lines("line", 300))
    return text_file_task(files=[str(path)], name="store_test_text", chunk_chars=64)


def _config(name, stores, **overrides) -> DataConfig:
    return DataConfig(name, {"targets": LENGTH}, BATCH, stream="store",
                      store_dir=str(stores), **overrides)


def _batches(cfg, start, count, process_index=0, process_count=1) -> list[dict]:
    return list(itertools.islice(input_pipeline.train_batches(
        cfg, start, process_index, process_count), count))


SCRIPT = textwrap.dedent("""
    import hashlib, sys
    from t5x_lite.data import text_file_task
    from t5x_lite.pipeline import input_pipeline
    from t5x_lite.pipeline.input_pipeline import DataConfig
    corpus, stores, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    name = text_file_task(files=[corpus], name="store_test_fresh", chunk_chars=64)
    cfg = DataConfig(name, {"targets": 16}, 8, seed=seed, stream="store", store_dir=stores)
    batch = next(input_pipeline.train_batches(cfg, 5, 0, 1))
    print(hashlib.sha256(b"".join(batch[k].tobytes() for k in sorted(batch))).hexdigest())
""")


def _digest(batch: dict) -> str:
    return hashlib.sha256(b"".join(batch[k].tobytes() for k in sorted(batch))).hexdigest()


def test_a_batch_is_byte_identical_in_fresh_processes_and_depends_on_the_seed(tmp_path):
    (tmp_path / "corpus.txt").write_text(_lines("line", 300))
    digests = [subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "corpus.txt"),
                               str(tmp_path / "stores"), "0"], capture_output=True,
                              text=True, check=True).stdout.split()[-1] for _ in range(2)]
    name = text_file_task(files=[str(tmp_path / "corpus.txt")], name="store_test_fresh",
                          chunk_chars=64)
    here = [_digest(_batches(_config(name, tmp_path / "stores", seed=seed), 5, 1)[0])
            for seed in (0, 1)]
    assert digests[0] == digests[1] == here[0] != here[1]


@pytest.mark.parametrize("where", ["start", "second batch", "epoch boundary", "10**9"])
def test_a_stream_started_anywhere_continues_the_stream_started_earlier(text_task, stores,
                                                                      where):
    cfg = _config(text_task, stores)
    rows_per_epoch = _stream(cfg).sources[0].num_rows
    assert rows_per_epoch % BATCH  # a batch holds the end of one epoch and the next's start
    position = {"start": 0, "second batch": 1, "epoch boundary": rows_per_epoch // BATCH,
                "10**9": 10**9}[where]
    earlier = max(position - 3, 0)
    assert_same_batches(_batches(cfg, position, 2),
                        _batches(cfg, earlier, position - earlier + 2)[position - earlier:])


def _stream(cfg) -> store_stream.StoreStream:
    return input_pipeline._store_stream(cfg, "train", cfg.shuffle, cfg.seed)  # noqa: SLF001


def test_reaching_any_position_reads_no_more_than_the_first_batch(text_task, stores):
    cfg = _config(text_task, stores)
    stream = _stream(cfg)
    store = stream.sources[0].store
    reads = []
    for position in (0, 10**9):
        before = store.tokens_read
        stream.packed_rows(np.arange(position * BATCH, (position + 1) * BATCH))
        reads.append(store.tokens_read - before)
    assert reads == [BATCH * LENGTH, BATCH * LENGTH]


def test_processes_read_their_own_rows_of_the_same_global_batches(text_task, stores):
    cfg = _config(text_task, stores)
    (global_batch,) = _batches(cfg, 7, 1)
    for process_count in (2, 4, 8):
        parts = [_batches(cfg, 7, 1, index, process_count)[0] for index in range(process_count)]
        joined = {key: np.concatenate([part[key] for part in parts]) for key in global_batch}
        assert_same_batches([joined], [global_batch])


def test_one_epoch_holds_every_row_once(text_task, stores):
    stream = _stream(_config(text_task, stores))
    rows = stream.sources[0].num_rows
    first, second = (stream.packed_rows(np.arange(epoch * rows, (epoch + 1) * rows))["targets"]
                     for epoch in (0, 1))
    in_order = stream.sources[0].packed(np.arange(rows))["targets"]
    for epoch in (first, second):
        assert sorted(map(bytes, epoch)) == sorted(map(bytes, in_order))
    assert not np.array_equal(first, second) and not np.array_equal(first, in_order)


def test_a_mixture_takes_exact_row_counts_per_block(tmp_path):
    names = []
    for letter in "ab":
        (tmp_path / f"{letter}.txt").write_text(letter * 5000)
        names.append(text_file_task(files=[str(tmp_path / f"{letter}.txt")],
                                    name=f"store_test_{letter}", validation_fraction=0.0))
    seqio.MixtureRegistry.remove("store_test_mixture")
    seqio.MixtureRegistry.add("store_test_mixture", [(names[0], 3.0), (names[1], 1.0)])
    cfg = _config("store_test_mixture", tmp_path / "stores")
    blocks = 2 * store_stream.MIXTURE_BLOCK_ROWS // BATCH
    targets = np.concatenate([b["decoder_target_tokens"] for b in _batches(cfg, 0, blocks)])
    from_a, from_b = ((targets == ord(letter) + 3).any(axis=1) for letter in "ab")  # bytes
    assert not (from_a & from_b).any()
    assert from_a.sum() == 2 * 768 and from_b.sum() == 2 * 256


def test_rows_of_whole_documents_are_the_rows_seqio_packs(tmp_path):
    # Every example is 15 bytes and EOS: two fill a row, as seqio packs them.
    lines = [json.dumps({"text": f"document {i:06d}"}) for i in range(64)]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    name = text_file_task(files=[str(tmp_path / "docs.jsonl")], name="store_test_docs",
                          validation_fraction=0.0)
    cfg = _config(name, tmp_path / "stores", shuffle=False)
    ours = _batches(cfg, 0, 4)
    task = seqio.get_mixture_or_task(name)
    dataset = task.get_dataset({"targets": LENGTH}, split="train", shuffle=False)
    converter = family_lib.default().feature_converter(has_inputs=False, pack=True)
    packed = list(converter(dataset, {"targets": LENGTH}).batch(BATCH).take(4)
                  .as_numpy_iterator())
    assert_same_batches([{k: np.asarray(b[k], np.int32) for k in ours[0]} for b in packed],
                        ours)


def test_a_store_is_reused_and_rebuilt_when_its_text_changes(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(_lines("first", 200))
    cfg = _config(text_file_task(files=[str(path)], name="store_test_changes"),
                  tmp_path / "stores")
    first = _stream(cfg).sources[0].store.directory
    assert _stream(cfg).sources[0].store.directory == first  # found, not rebuilt
    path.write_text(_lines("second", 200))
    cfg = _config(text_file_task(files=[str(path)], name="store_test_changes"),
                  tmp_path / "stores")
    second = _stream(cfg).sources[0].store.directory
    assert second != first and TokenStore(first).manifest.fingerprint != TokenStore(
        second).manifest.fingerprint
    digest = hashlib.sha256((second / "part-00000/targets.tokens").read_bytes()).hexdigest()
    assert digest != hashlib.sha256((first / "part-00000/targets.tokens").read_bytes()).hexdigest()


def test_a_checkpoint_of_the_seqio_stream_continues_on_it(text_task, stores):
    auto = dataclasses.replace(_config(text_task, stores), stream="auto")
    assert input_pipeline.uses_store(auto)
    meta = {"data_position": 4, **data_position.position_meta(auto)}  # no stores recorded
    assert data_position.resume_config(auto, 4, meta, "run").stream == "skip"
    with pytest.raises(input_pipeline.ConfigError, match="trained on the seqio stream"):
        data_position.resume_config(_config(text_task, stores), 4, meta, "run")
    skip = dataclasses.replace(auto, stream="skip")
    stored = {**meta, "stream": data_position.stream_identity(auto)}
    with pytest.raises(input_pipeline.ConfigError, match="trained on token stores"):
        data_position.resume_config(skip, 4, stored, "run")


def test_a_tfds_task_is_stored_and_read_like_the_same_text_elsewhere(tmp_path):
    """The embedded prose through seqio's TFDS source gives the rows of the same corpus
    through the built-in Task."""
    from t5x_lite.data import embedded_corpus, lm_task, tasks
    builder = embedded_corpus.prepared_builder()
    source = seqio.TfdsDataSource(
        f"{builder.name}/{builder.builder_config.name}:{builder.version}",
        tfds_data_dir=str(pathlib.Path(builder.data_dir).parents[2]),  # above name/config/version
        splits={"train": embedded_corpus.split_name("prose", "train")})
    name = lm_task.register_lm_task("store_test_tfds", source, "byte")
    from_tfds = _stream(_config(name, tmp_path / "stores", shuffle=False))
    builtin = _stream(_config(tasks.task_name("prose"), tmp_path / "stores", shuffle=False))
    rows = np.arange(50)
    assert_same_batches([from_tfds.packed_rows(rows)], [builtin.packed_rows(rows)])
    identity = from_tfds.sources[0].store.manifest.description["source"]
    assert identity["version"] == str(builder.version)
    assert identity["split"] == embedded_corpus.split_name("prose", "train")


def test_a_batch_size_change_continues_at_the_next_unread_row(text_task, stores):
    cfg = _config(text_task, stores)
    half = dataclasses.replace(cfg, global_batch_size=4)
    before = _batches(cfg, 0, 3)  # rows 0-23 as 3 batches of 8
    offset = 3 * BATCH - 3 * 4  # rows consumed minus data position x the new batch size
    after = list(itertools.islice(input_pipeline.train_batches(half, 3, 0, 1, row_offset=offset),
                                  2))  # rows 24-31
    expected = family_lib.default().packed_features(_stream(cfg).packed_rows(np.arange(32)))
    joined = {key: np.concatenate([b[key] for b in before + after]) for key in expected}
    assert_same_batches([joined], [expected])


def test_a_resumed_run_counts_rows_and_refuses_changed_data(tmp_path, stores):
    from tests.cli import assert_one_line_error, run_cli, train_command
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(_lines("first", 400))
    text = ["--gin.MIXTURE_OR_TASK_NAME=@text_file_task()",
            f"--gin.text_file_task.files=['{corpus}']", f"--gin.DataConfig.store_dir='{stores}'"]
    assert run_cli(train_command(tmp_path / "run", 2, *text)).returncode == 0
    result = run_cli(train_command(tmp_path / "run", 3, *text, "--gin.BATCH_SIZE=4"))
    assert result.returncode == 0 and "restored step 2" in result.stderr, result.stderr[-2000:]
    meta = json.loads((tmp_path / "run/checkpoints/3/meta/metadata").read_text())
    assert (meta["data_position"], meta["data_rows"]) == (3, 2 * 8 + 4)

    corpus.write_text(_lines("second", 400))
    result = run_cli(train_command(tmp_path / "run", 4, *text, "--gin.BATCH_SIZE=4"))
    assert_one_line_error(result, "train", "checkpoint step 3", "Task 'text_files' reads other "
                          "data than it did", "DataConfig.allow_data_change = True")


def test_another_seed_is_refused_unless_allowed(text_task, stores):
    meta = {"stream": data_position.stream_identity(_config(text_task, stores))}
    data_position.resume_config(_config(text_task, stores), 2, meta, "run")  # the same data
    with pytest.raises(input_pipeline.ConfigError, match="DataConfig.seed was 0 and is 1"):
        data_position.resume_config(_config(text_task, stores, seed=1), 2, meta, "run")
    data_position.resume_config(_config(text_task, stores, seed=1, allow_data_change=True), 2,
                                meta, "run")


def test_a_corpus_of_files_streams_into_a_store(tmp_path):
    import gzip
    from t5x_lite.data import corpus_task
    shards = tmp_path / "corpus"
    shards.mkdir()
    documents = [f"document {i} " + "words " * (i % 7) for i in range(30)]
    with gzip.open(shards / "part-0.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in documents[:20])
    (shards / "part-1.jsonl").write_text("".join(json.dumps({"text": d}) + "\n"
                                                 for d in documents[20:]))
    (shards / "notes.txt").write_text("a line\n" * 50)  # 350 characters: 2 pieces of 256
    name = corpus_task(train_files=[str(shards / "part-*.jsonl*"), str(shards / "notes.txt")],
                       name="store_test_corpus", chunk_chars=256)
    store = _stream(_config(name, tmp_path / "stores")).sources[0].store
    expected = [b"a line\n" * 36, b"a line\n" * 14] + [d.encode() for d in documents]
    offsets = store.offsets("targets")
    assert store.num_examples == len(expected)  # files in sorted order: notes.txt first
    for index, document in enumerate(expected):
        tokens = store.tokens("targets", offsets[index], offsets[index + 1])
        assert bytes((tokens[:-1] - 3).astype(np.uint8)) == document and tokens[-1] == 1
    assert store.manifest.parts == ["part-00000", "part-00001", "part-00002"]  # one a file
    with pytest.raises(input_pipeline.ConfigError, match="no file matches"):
        corpus_task(train_files=[str(shards / "absent-*.jsonl")], name="store_test_none")


def _corpus_of_files(directory, count: int) -> str:
    from t5x_lite.data import corpus_task
    directory.mkdir()
    for index in range(count):
        (directory / f"shard-{index}.txt").write_text(_lines(f"shard {index}", 40 + index))
    return corpus_task(train_files=[str(directory / "shard-*.txt")], name="store_test_shards",
                       chunk_chars=64)


def _store_bytes(store: TokenStore) -> bytes:
    return store.tokens("targets", 0, int(store.offsets("targets")[-1])).tobytes() + \
        store.offsets("targets").tobytes()


def test_builders_share_a_stores_parts_and_make_the_store_one_builder_makes(tmp_path):
    from t5x_lite.pipeline import store_build
    task = seqio.get_mixture_or_task(_corpus_of_files(tmp_path / "corpus", 5))
    alone = store_build.store_for(task, "train", None, tmp_path / "alone")
    assert store_build.store_for(task, "train", None, tmp_path / "shared", builder=(0, 2)) is None
    written = sorted(p.name for p in (tmp_path / "shared").glob("*/*/*/part-*"))
    assert written == ["part-00000", "part-00002", "part-00004"]
    kept = os.stat(next((tmp_path / "shared").glob("*/*/*/part-00002/targets.tokens")))
    shared = store_build.store_for(task, "train", None, tmp_path / "shared", builder=(1, 2))
    assert shared is not None and _store_bytes(shared) == _store_bytes(alone)
    assert len(alone.manifest.parts) == 5 and shared.manifest == alone.manifest
    assert os.stat(str(shared.directory / "part-00002/targets.tokens")).st_mtime_ns == \
        kept.st_mtime_ns  # a part already written is kept


def test_build_data_in_two_processes_builds_one_store(tmp_path):
    from tests.cli import run_processes
    task_flags = [f"--gin.corpus_task.train_files=['{tmp_path / 'corpus'}/shard-*.txt']",
                  "--gin.corpus_task.name='store_test_shards'", "--gin.corpus_task.chunk_chars=64",
                  "--gin.MIXTURE_OR_TASK_NAME=@corpus_task()", "--gin.DataConfig.eval_split='train'",
                  f"--gin.DataConfig.store_dir='{tmp_path / 'stores'}'"]
    name = _corpus_of_files(tmp_path / "corpus", 4)
    command = [sys.executable, "-m", "t5x_lite", "build-data", "--gin_file=quickstart.gin",
               *task_flags]
    results = run_processes(command, num_processes=2, devices_each=1)
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    first_builder = results[0][1]  # parts 1 and 3 of 4; the other process built 2 and 4
    assert "part 1/4" in first_builder and "part 3/4" in first_builder
    assert "part 2/4" not in first_builder and "part 4/4" not in first_builder
    alone = store_build_alone(name, tmp_path / "alone")
    built = TokenStore(next((tmp_path / "stores").glob("*/train/*")))
    assert _store_bytes(built) == _store_bytes(alone)


def store_build_alone(name: str, root) -> TokenStore:
    from t5x_lite.pipeline import store_build
    return store_build.store_for(seqio.get_mixture_or_task(name), "train", None, root)
