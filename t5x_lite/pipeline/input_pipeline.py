"""The batches the trainer reads: seqio Tasks packed, sharded and resumable.

Two streams, chosen by `DataConfig.stream`. `store`: each Task is written once to a
token store and batch i is computed from the stores by index arithmetic
(`store_stream`), so a resume or a rollback reaches any position at once and each
process reads only its own rows. `skip`: the seqio pipeline itself, replayed from the
start to reach a position, for Tasks that cannot be stored. `auto` (the default) is
`store` for packed data whose sources say what they read, else `skip`. On stores, rows of
whole examples with inputs and targets are packed window by window instead
(`example_rows`), found from the window cursor each checkpoint records; and rows of a
Task with an encoder-decoder objective are raw rows denoised each by its own key
(`objectives`).

The skip stream is made of S = `num_data_shards` shard pipelines. Shard s reads
the s-th of S slices of the data, shuffles it with a seed derived from (seed, s),
repeats it forever, packs it and batches it to B / S rows. Rows
[s * B / S, (s + 1) * B / S) of global batch i are batch i of shard s. Process p of
P reads only shards s with s // (S / P) == p, so the global batch is a pure function
of (seed, position) and is the same for every P that divides S.

Tasks with a `targets` feature only are language-modeling data; Tasks with `inputs`
and `targets` are instruction data. The model family's feature converter turns either
into the features its model reads (the decoder: rows of inputs then targets, with loss
on the targets only); the family defaults to the decoder.
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import itertools
import sys
import time
from collections.abc import Iterator, Mapping

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from t5x_lite import data  # Registers the built-in Tasks; hides accelerators from TF.
from t5x_lite.errors import ConfigError
from t5x_lite.models import family as family_lib
from t5x_lite.pipeline import objectives, store_build
from t5x_lite.pipeline.example_rows import ExampleSource, ExampleStream, WindowCursor
from t5x_lite.pipeline.objectives import Objective
from t5x_lite.pipeline.store_stream import MIXTURE_BLOCK_ROWS, DenoisedStream, LmRows, StoreStream
from t5x_lite.pipeline.token_store import TokenStore

data.hide_accelerators_from_tensorflow()

_EVAL_SEED = 0  # Eval data does not depend on the training seed.
STREAMS = ("auto", "skip", "store")
PREFETCH_BATCHES = 2


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data, how long, how many rows, and how the stream is laid out."""

    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]   # {'targets': 256} or {'inputs': 192, 'targets': 64}
    global_batch_size: int
    seed: int = 0
    pack: bool = True
    shuffle: bool = True
    num_data_shards: int | None = None   # None -> jax.process_count(); the skip stream's
    eval_split: str = "validation"
    stream: str = "auto"   # "store": token stores; "skip": the seqio pipeline; "auto"
    store_dir: str | None = None   # None -> $T5X_LITE_STORE_DIR, else the cache's stores/
    allow_data_change: bool = False   # resume on stores or a seed other than the checkpoint's

    @property
    def shard_count(self) -> int:
        return self.num_data_shards or jax.process_count()

    @property
    def sequence_length(self) -> int:
        """Tokens per row of a batch: `targets`, or `inputs + targets` for instruction data."""
        return sum(self.task_feature_lengths.values())


def validate(cfg: DataConfig, process_index: int, process_count: int) -> None:
    """Raises ConfigError for a batch size or feature length that is not a positive integer,
    and for a batch that the data shards and processes cannot split (before a run writes)."""
    batch_size = cfg.global_batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"BATCH_SIZE={batch_size!r} (DataConfig.global_batch_size) must be a "
                          "positive number of rows per step: set BATCH_SIZE to 1 or more, "
                          "e.g. --gin.BATCH_SIZE=32.")
    lengths = dict(cfg.task_feature_lengths)
    for name, length in lengths.items():
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ConfigError(f"TASK_FEATURE_LENGTHS={lengths} (DataConfig.task_feature_lengths) "
                              f"gives '{name}' the length {length!r}: each length must be a "
                              "positive number of tokens; set it like {'targets': 256}.")
    if cfg.stream not in STREAMS:
        raise ConfigError(f"DataConfig.stream={cfg.stream!r}: use one of {list(STREAMS)}.")
    if not uses_store(cfg):
        _owned_shards(cfg, process_index, process_count)
    elif batch_size % process_count:
        raise ConfigError(f"BATCH_SIZE={batch_size} is not divisible by the {process_count} "
                          "processes: make it a multiple of the process count.")


def output_vocabulary(mixture_or_task_name: str) -> seqio.Vocabulary:
    """The vocabulary of the 'targets' feature."""
    return _provider(mixture_or_task_name).output_features["targets"].vocabulary


def resolve_vocab(model_config, mixture_or_task_name: str):
    """The model config with what the task decides filled in; asks the task for its
    vocabulary only when the config has no size of its own."""
    if getattr(model_config, "vocab_size", None) is not None:
        return model_config
    vocab = output_vocabulary(mixture_or_task_name)
    return family_lib.for_config(model_config).resolve(model_config, vocab.vocab_size)


def feature_converter(cfg: DataConfig,
                      family: family_lib.ModelFamily | None = None) -> seqio.FeatureConverter:
    """The family's converter for the kind of data `cfg` reads (the decoder's by default)."""
    family = family or family_lib.default()
    return family.feature_converter(_is_instruction_data(cfg), cfg.pack)


class Batches:
    """This process's batches, in order. `cursor` is the window cursor of the last batch
    returned (rows of whole examples; None on other streams): its checkpoint records it."""

    def __init__(self, batches_and_cursors: Iterator[tuple[dict, WindowCursor | None]]):
        self._batches_and_cursors = batches_and_cursors
        self.cursor: WindowCursor | None = None

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch, self.cursor = next(self._batches_and_cursors)
        return batch


def train_batches(cfg: DataConfig, start_position: int, process_index: int, process_count: int,
                  family: family_lib.ModelFamily | None = None, row_offset: int = 0,
                  cursor: WindowCursor = WindowCursor()) -> Batches:
    """This process's rows of global batches `start_position`, `start_position + 1`, ..., in
    the features of `family` (default: the decoder). On token stores, global batch i holds
    rows `row_offset + i * B` on (a run resumed with another batch size B has an offset);
    rows of whole examples are found from `cursor`, at or before the first of them."""
    if start_position < 0:
        raise ConfigError(f"start_position={start_position}: the data position cannot be negative.")
    store = uses_store(cfg)
    _check_split(cfg, "train", cfg.shuffle and not store)
    if store:
        stream = _store_stream(cfg, "train", cfg.shuffle, cfg.seed, family)
        return Batches(_prefetched(_store_batches(
            stream, cfg, family, itertools.count(start_position), process_index, process_count,
            row_offset, cursor)))
    if start_position:
        print(f"data: replaying {start_position} batches of the seqio pipeline to reach data "
              f"position {start_position} (DataConfig.stream = 'skip'; a token store reaches "
              "it at once)", file=sys.stderr)
    shards = _owned_shards(cfg, process_index, process_count)
    converter = feature_converter(cfg, family)
    datasets = [_shard_batches(cfg, converter, shard, "train", cfg.shuffle,
                               _shard_seed(cfg.seed, shard)).skip(start_position)
                for shard in shards]
    batches = _process_rows(datasets, shards, cfg, "train")
    return Batches((batch, None) for batch in _timed_replay(batches, start_position))


def _timed_replay(batches: Iterator, start_position: int) -> Iterator:
    """`batches`, saying how long reaching `start_position` took once the first arrives."""
    started = time.perf_counter()
    for index, batch in enumerate(batches):
        if index == 0 and start_position:
            seconds = time.perf_counter() - started
            print(f"data: replayed {start_position} batches in {seconds:.1f} s "
                  f"({1000 * seconds / start_position:.2f} ms a batch; every resume and "
                  "rollback of this run pays it again, growing with the position)",
                  file=sys.stderr)
        yield batch


def eval_batches(cfg: DataConfig, num_batches: int, process_index: int, process_count: int,
                 family: family_lib.ModelFamily | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of the first `num_batches` global batches of the eval split."""
    _check_split(cfg, cfg.eval_split, shuffle=False)
    if uses_store(cfg):
        stream = _store_stream(cfg, cfg.eval_split, False, _EVAL_SEED, family)
        return (batch for batch, _ in _store_batches(stream, cfg, family, range(num_batches),
                                                     process_index, process_count))
    shards = _owned_shards(cfg, process_index, process_count)
    converter = feature_converter(cfg, family)
    datasets = [_shard_batches(cfg, converter, shard, cfg.eval_split, False,
                               _shard_seed(_EVAL_SEED, shard)).take(num_batches)
                for shard in shards]
    return _process_rows(datasets, shards, cfg, cfg.eval_split)


def build_stores(cfg: DataConfig, builder: tuple[int, int] = (0, 1)
                 ) -> list[tuple[str, str, TokenStore | None]]:
    """(Task, split, store) for the train and eval splits of `cfg`'s Tasks, built where
    missing (by builder i of n: its share of the parts; None for a store not whole yet)."""
    built = []
    for split in dict.fromkeys(("train", cfg.eval_split)):
        for task in tasks_of(cfg.mixture_or_task_name):
            if split in task.splits:
                built.append((task.name, split, _task_store(task, split, cfg, builder)))
    return built


def store_lengths(cfg: DataConfig) -> dict[str, int] | None:
    """The lengths a store of `cfg`'s Tasks is built with: none for documents
    (language-modeling data, or the documents an objective denoises: rows are cut from
    whole documents, so one store serves every length), the feature lengths for
    examples with inputs and targets (which the Tasks fit or drop)."""
    if _objective(cfg) or not _is_instruction_data(cfg):
        return None
    return dict(cfg.task_feature_lengths)


def _task_store(task: seqio.Task, split: str, cfg: DataConfig,
                builder: tuple[int, int] = (0, 1)) -> TokenStore | None:
    stored = objectives.document_task(task) if objectives.objective_of(task) else task
    try:
        return store_build.store_for(stored, split, store_lengths(cfg), cfg.store_dir,
                                     progress=jax.process_index() == 0, builder=builder)
    except store_build.NotMaterialisable as reason:
        raise ConfigError(f"Task '{task.name}' cannot be written to a token store: {reason}; "
                          "set DataConfig.stream = 'skip'.") from None


def for_family(cfg: DataConfig, family: family_lib.ModelFamily) -> DataConfig:
    """`cfg` as `family` can read it: a family that cannot read `cfg`'s token-store rows
    (any, or the encoder-decoder rows of a denoising objective) takes the seqio stream
    where `cfg` lets the stream be chosen, and refuses `store`."""
    readable = family.reads_token_stores and (family.encodes_inputs or not _objective(cfg))
    if readable or cfg.stream == "skip":
        return cfg
    if cfg.stream == "store":
        raise ConfigError(f"the {family.name} family does not read these Tasks' token-store "
                          "rows: set DataConfig.stream = 'skip' (or 'auto').")
    return dataclasses.replace(cfg, stream="skip")


def uses_store(cfg: DataConfig) -> bool:
    """Whether `cfg` reads token stores: `store`, or `auto` for packed data whose every
    Task's source says what it reads."""
    if cfg.stream != "auto":
        return cfg.stream == "store"
    if not cfg.pack:
        return False
    return all(store_build.materialisable(task) for task in tasks_of(cfg.mixture_or_task_name))


def _store_stream(cfg: DataConfig, split: str, shuffle: bool, seed: int,
                  family: family_lib.ModelFamily | None = None
                  ) -> StoreStream | ExampleStream | DenoisedStream:
    """The stream of the stores of the Tasks with rows in `split` (built if missing), in
    the layout `family` (default: the decoder) reads."""
    if not cfg.pack:
        raise ConfigError("Token stores give packed rows: set DataConfig.pack = True, or "
                          "DataConfig.stream = 'skip' for unpacked rows.")
    family = family or family_lib.default()
    feature_converter(cfg, family)  # Refuses data the family cannot read.
    provider = _provider(cfg.mixture_or_task_name)
    objective = _objective(cfg)
    examples = _is_instruction_data(cfg) and not objective
    lengths = dict(cfg.task_feature_lengths)
    vocabulary = output_vocabulary(cfg.mixture_or_task_name)
    row_length = objective.check(lengths, vocabulary) if objective else cfg.sequence_length
    sources, names, rates = [], [], []
    for task in tasks_of(cfg.mixture_or_task_name):
        if split not in task.splits:
            continue
        store = _task_store(task, split, cfg)
        source = ExampleSource(store) if examples else LmRows(store, row_length)
        if source.num_examples if examples else source.num_rows:
            sources.append(source)
            names.append(task.name)
            rates.append(provider.get_rate(task) if isinstance(provider, seqio.Mixture) else 1.0)
    if not sources:
        what = "no example that fits" if examples else "fewer tokens than one row"
        raise ConfigError(f"The '{split}' split of '{cfg.mixture_or_task_name}' has {what} "
                          f"for TASK_FEATURE_LENGTHS={dict(cfg.task_feature_lengths)}: add data "
                          "or change TASK_FEATURE_LENGTHS.")
    if examples:
        return ExampleStream(sources, names, rates, seed, shuffle, lengths,
                             family.encodes_inputs, MIXTURE_BLOCK_ROWS)
    rows = StoreStream(sources, names, rates, seed, shuffle)
    return DenoisedStream(rows, objective, vocabulary, lengths, seed) if objective else rows


def _store_batches(stream: StoreStream | ExampleStream | DenoisedStream, cfg: DataConfig,
                   family,
                   positions: Iterator[int], process_index: int, process_count: int,
                   row_offset: int = 0, cursor: WindowCursor = WindowCursor()
                   ) -> Iterator[tuple[dict[str, np.ndarray], WindowCursor | None]]:
    """(This process's rows of each global batch in `positions` as model features, the
    window cursor of the batch's first row, or None for language-modeling rows)."""
    family = family or family_lib.default()  # resolved here, not on a prefetch thread
    rows = cfg.global_batch_size // process_count
    for position in positions:
        first = row_offset + position * cfg.global_batch_size
        mine = first + process_index * rows
        if isinstance(stream, ExampleStream):
            cursor = stream.cursor_at(first, cursor)
            yield family.packed_features(stream.packed_rows(mine, rows, cursor)), cursor
        else:
            yield family.packed_features(stream.packed_rows(np.arange(mine, mine + rows))), None


def _prefetched(batches: Iterator, size: int = PREFETCH_BATCHES) -> Iterator:
    """`batches`, computed up to `size` ahead on a worker thread. The worker belongs to a
    thread pool, so an interpreter that exits first lets it finish its batch and stop."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="data-prefetch")
    finalizing = sys.is_finalizing  # held here: at exit, module globals are gone
    end = object()
    ahead = collections.deque(pool.submit(next, batches, end) for _ in range(size))
    try:
        while (batch := ahead.popleft().result()) is not end:
            ahead.append(pool.submit(next, batches, end))
            yield batch
    finally:
        if not finalizing():  # at exit, the pool's own exit hook stops it
            pool.shutdown(wait=False, cancel_futures=True)


def _provider(name: str) -> seqio.DatasetProviderBase:
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        raise ConfigError(f"No seqio Task or Mixture named '{name}'; registered: "
                         f"{sorted(seqio.TaskRegistry.names())} and mixtures "
                         f"{sorted(seqio.MixtureRegistry.names())}.") from None


def tasks_of(name: str) -> list[seqio.Task]:
    provider = _provider(name)
    return provider.tasks if isinstance(provider, seqio.Mixture) else [provider]


def _objective(cfg: DataConfig) -> Objective | None:
    """The encoder-decoder objective `cfg`'s Tasks denoise their documents with, if any;
    a Mixture's Tasks must share it."""
    found = {objectives.objective_of(task) for task in tasks_of(cfg.mixture_or_task_name)}
    if len(found) > 1:
        raise ConfigError(f"'{cfg.mixture_or_task_name}' mixes Tasks of different objectives "
                          f"({sorted(o.name if o else 'none' for o in found)}): use one "
                          "objective per Mixture.")
    return found.pop()


def _is_instruction_data(cfg: DataConfig) -> bool:
    """True for Tasks with `inputs`; checks that the feature lengths name the Tasks' features."""
    tasks = tasks_of(cfg.mixture_or_task_name)
    with_inputs = [task.name for task in tasks if "inputs" in task.output_features]
    if with_inputs and len(with_inputs) < len(tasks):
        raise ConfigError(f"'{cfg.mixture_or_task_name}' mixes Tasks with 'inputs' "
                          f"({with_inputs}) and Tasks without: use one kind per Mixture.")
    expected = ["inputs", "targets"] if with_inputs else ["targets"]
    if sorted(cfg.task_feature_lengths) != expected:
        example = "{'inputs': 192, 'targets': 64}" if with_inputs else "{'targets': 256}"
        raise ConfigError(f"'{cfg.mixture_or_task_name}' has features {expected} but "
                          f"task_feature_lengths names {sorted(cfg.task_feature_lengths)}: "
                          f"set TASK_FEATURE_LENGTHS like {example}.")
    return bool(with_inputs)


def _owned_shards(cfg: DataConfig, process_index: int, process_count: int) -> list[int]:
    """The shards process `process_index` reads, in global row order."""
    shard_count, batch_size = cfg.shard_count, cfg.global_batch_size
    if shard_count < 1 or process_count < 1 or not 0 <= process_index < process_count:
        raise ConfigError(f"Bad data layout: {shard_count} data shards, process {process_index} "
                         f"of {process_count}; all must be positive and the index below the count.")
    if shard_count % process_count:
        raise ConfigError(f"num_data_shards={shard_count} is not a multiple of the "
                         f"{process_count} processes: set DataConfig.num_data_shards to one.")
    if batch_size % shard_count:
        raise ConfigError(f"global_batch_size={batch_size} is not divisible by "
                         f"num_data_shards={shard_count}: change one of them.")
    per_process = shard_count // process_count
    return list(range(process_index * per_process, (process_index + 1) * per_process))


def _check_split(cfg: DataConfig, split: str, shuffle: bool) -> None:
    """The split must exist, and each source must shard the same way for every shard."""
    tasks = tasks_of(cfg.mixture_or_task_name)
    if not any(split in task.splits for task in tasks):
        raise ConfigError(f"'{cfg.mixture_or_task_name}' has no '{split}' split (it has "
                         f"{sorted({s for task in tasks for s in task.splits})}); choose another "
                         "DataConfig.eval_split or give the Task that split.")
    for task in tasks:
        if split in task.splits and shuffle and _shards_examples_of_shuffled_files(task, split,
                                                                                   cfg.shard_count):
            raise ConfigError(f"Task '{task.name}' split '{split}' has "
                             f"{len(task.source.list_shards(split))} files, fewer than the "
                             f"{cfg.shard_count} data shards: set num_data_shards to at most "
                             "the number of files, or to 1.")


def _shards_examples_of_shuffled_files(task: seqio.Task, split: str, shard_count: int) -> bool:
    """True if seqio would shard examples of several files read in a per-shard order."""
    source = task.source
    if source.supports_arbitrary_sharding:
        return False
    return 1 < len(source.list_shards(split)) < shard_count


def _shard_seed(seed: int, shard: int) -> int:
    digest = hashlib.sha256(f"t5x_lite data seed {seed} shard {shard}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


def _shard_batches(cfg: DataConfig, converter: seqio.FeatureConverter, shard: int, split: str,
                   shuffle: bool, seed: int) -> tf.data.Dataset:
    """Shard `shard`'s batches of B / S rows of model features, repeating forever."""
    dataset = seqio.get_dataset(
        cfg.mixture_or_task_name,
        task_feature_lengths=dict(cfg.task_feature_lengths),
        feature_converter=converter,
        dataset_split=split,
        shuffle=shuffle,
        num_epochs=None,
        shard_info=seqio.ShardInfo(index=shard, num_shards=cfg.shard_count),
        seed=seed,
        verbose=False)
    dataset = dataset.batch(cfg.global_batch_size // cfg.shard_count, drop_remainder=True)
    return dataset.with_options(_deterministic_options())


def _deterministic_options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    return options


def _process_rows(datasets: list[tf.data.Dataset], shards: list[int], cfg: DataConfig,
                  split: str) -> Iterator[dict[str, np.ndarray]]:
    """Concatenates the owned shards' batches, step by step, until one runs out."""
    iterators = [dataset.as_numpy_iterator() for dataset in datasets]
    for position in itertools.count():
        batches = []
        for shard, iterator in zip(shards, iterators):
            batch = next(iterator, None)
            if batch is None and position == 0:
                raise ConfigError(
                    f"The '{split}' split of '{cfg.mixture_or_task_name}' gave no batch to data "
                    f"shard {shard} of {cfg.shard_count}: too little data for that many shards; "
                    "lower DataConfig.num_data_shards or add data.")
            if batch is None:
                return
            batches.append(batch)
        yield {key: np.concatenate([batch[key] for batch in batches]).astype(np.int32)
               for key in batches[0]}


def build_data_command(cfg: DataConfig) -> None:
    """`t5x_lite build-data`: builds the stores a training run of `cfg` reads, and says
    where they are. Several processes share out the parts of each store; then the first
    writes what is left (all of it, where it cannot see the others' store directory)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        build_stores(cfg, (jax.process_index(), jax.process_count()))
        multihost_utils.sync_global_devices("token store parts built")
        if jax.process_index():
            return
    for task, split, store in build_stores(cfg):
        tokens = sum(sizes["tokens"] for sizes in store.manifest.features.values())
        print(f"{task}/{split}: {store.num_examples:,} examples, {tokens:,} tokens in "
              f"{store.directory}")
