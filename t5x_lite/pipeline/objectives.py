"""Encoder-decoder pretraining objectives: a raw row of tokens becomes one example.

An `Objective` is span corruption (T5), prefix LM, or UL2's mixture of denoisers
(`denoising`). `example` turns a row into (inputs, targets), each ending in EOS and
within the feature lengths, its noise drawn from a 64-bit key. Rows are `raw_length`
tokens of the Task's documents concatenated and cut, as T5 cuts its corpus.

Ids: sentinels are the vocabulary's extra ids counting down from the last id (as T5),
and UL2's paradigm tokens take the three lowest extra ids, so a vocabulary with extra
ids (`byte_t5`, `spm_t5`) serves every objective.

`Denoise` is the seqio preprocessor of a Task with an objective. The seqio stream keys
each row's noise by seqio's per-example seeds. On token stores the Task's documents are
stored as they are before `Denoise` (`document_task`), and row g of the stream is
denoised with the key of (seed, g), so a resume finds the same noise at once.
"""

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.errors import ConfigError
from t5x_lite.pipeline import denoising, stream_index
from t5x_lite.pipeline.denoising import UL2_DENOISERS, Denoiser

PARADIGM_TOKENS = ("[NLU]", "[S2S]", "[NLG]")
_SPAN_CORRUPTION, _PREFIX_LM, _UL2 = "span_corruption", "prefix_lm", "ul2"
UL2_RATES = (1.0,) * len(UL2_DENOISERS)  # Each of the seven denoisers equally often.


@dataclasses.dataclass(frozen=True)
class Objective:
    """Denoisers and the rates a row picks one by."""

    name: str
    denoisers: tuple[Denoiser, ...]
    rates: tuple[float, ...]

    @classmethod
    def span_corruption(cls, noise_density: float = 0.15,
                        mean_span_length: float = 3.0) -> "Objective":
        denoiser = Denoiser(f"span{mean_span_length:g}-d{noise_density:g}", None, "span",
                            noise_density, mean_span_length)
        return cls(_SPAN_CORRUPTION, (denoiser,), (1.0,))

    @classmethod
    def prefix_lm(cls) -> "Objective":
        return cls(_PREFIX_LM, (Denoiser("prefix", None, "prefix"),), (1.0,))

    @classmethod
    def ul2(cls, rates: Sequence[float] = UL2_RATES) -> "Objective":
        if len(rates) != len(UL2_DENOISERS):
            raise ConfigError(f"UL2 rates {list(rates)}: give one rate for each of the "
                              f"{len(UL2_DENOISERS)} denoisers "
                              f"{[d.name for d in UL2_DENOISERS]}.")
        return cls(_UL2, UL2_DENOISERS, tuple(float(rate) for rate in rates))

    @property
    def uses_paradigm_tokens(self) -> bool:
        return any(d.paradigm_token is not None for d in self.denoisers)

    def raw_length(self, lengths: Mapping[str, int]) -> int:
        """Tokens per raw row for feature lengths {'inputs': I, 'targets': T}: for span
        corruption alone, the longest row whose inputs fit I exactly (T5's
        `random_spans_helper`; T should then be at least its targets' length); otherwise
        I less room for EOS and the paradigm token (targets longer than T are cut)."""
        inputs = lengths["inputs"]
        if self.name == _SPAN_CORRUPTION:
            (denoiser,) = self.denoisers
            return denoising.t5_lengths(inputs, denoiser.noise_density,
                                        denoiser.mean_span_length)[0]
        return inputs - 1 - int(self.uses_paradigm_tokens)

    def check(self, lengths: Mapping[str, int], vocabulary: seqio.Vocabulary) -> int:
        """Raises ConfigError unless the vocabulary has ids for every sentinel and paradigm
        token a row of these lengths needs; returns the raw length."""
        where = f"the {self.name} objective with TASK_FEATURE_LENGTHS={dict(lengths)}"
        if set(lengths) != {"inputs", "targets"}:
            raise ConfigError(f"{where}: give lengths of 'inputs' and 'targets'.")
        raw_length = self.raw_length(lengths)
        if raw_length < 2:
            raise ConfigError(f"{where}: rows of {raw_length} tokens are too short to "
                              "denoise; raise the inputs' length.")
        free_ids = vocabulary.extra_ids - len(PARADIGM_TOKENS) * self.uses_paradigm_tokens
        most_spans = max([denoising.span_counts(raw_length, d.noise_density,
                                                d.mean_span_length)[1]
                          for d in self.denoisers if d.kind == "span"], default=0)
        if most_spans > free_ids:
            raise ConfigError(f"{where}: a row of {raw_length} tokens has up to {most_spans} "
                              f"noise spans, but the vocabulary has {free_ids} free extra ids "
                              "for sentinels; use a vocabulary with extra ids (byte_t5, "
                              "spm_t5) or shorter inputs.")
        return raw_length

    def example(self, tokens_L: np.ndarray, key: int, vocabulary: seqio.Vocabulary,
                lengths: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) of a raw row, each cut to its length less one, then EOS."""
        first_extra_id = vocabulary.vocab_size - vocabulary.extra_ids
        paradigm_ids = {token: first_extra_id + i for i, token in enumerate(PARADIGM_TOKENS)}
        inputs_I, targets_T = denoising.ul2_example(
            np.asarray(tokens_L, np.int32), key, self.denoisers, self.rates, paradigm_ids,
            vocabulary.vocab_size - 1)
        eos = np.asarray([vocabulary.eos_id], np.int32)
        return (np.concatenate([inputs_I[:lengths["inputs"] - 1], eos]),
                np.concatenate([targets_T[:lengths["targets"] - 1], eos]))


def row_key(seed: int, row: int, objective: Objective) -> int:
    """The key of global row `row`'s noise on token stores."""
    return denoising.row_key(seed, row, objective.name)


@dataclasses.dataclass(frozen=True)
class Denoise:
    """seqio preprocessor: tokenized `targets` documents, concatenated and cut into raw
    rows, each denoised by `objective` into `inputs` and `targets` (EOS included)."""

    objective: Objective
    sequence_length: Mapping[str, int] | None = None  # seqio sets these two
    output_features: Mapping[str, seqio.Feature] | None = None

    def __call__(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        sequence_length, output_features = self.sequence_length, self.output_features
        if not sequence_length:
            raise ConfigError(f"the {self.objective.name} objective cuts rows by the feature "
                              "lengths: read it with TASK_FEATURE_LENGTHS set.")
        lengths = {key: sequence_length[key] for key in ("inputs", "targets")}
        vocabulary = output_features["targets"].vocabulary
        raw_length = self.objective.check(lengths, vocabulary)
        rows = dataset.map(lambda example: example["targets"]).unbatch().batch(
            raw_length, drop_remainder=True)

        def denoise(tokens_L, seed_2):
            key = stream_index.derive_key(*(int(part) for part in seed_2), self.objective.name)
            return self.objective.example(tokens_L, key, vocabulary, lengths)

        @seqio.map_over_dataset(num_seeds=1)
        def to_example(tokens_L, seed):
            inputs, targets = tf.numpy_function(denoise, [tokens_L, seed], [tf.int32, tf.int32])
            return {"inputs": tf.ensure_shape(inputs, [None]),
                    "targets": tf.ensure_shape(targets, [None])}

        return to_example(rows.map(lambda tokens: tf.cast(tokens, tf.int32)))


def objective_of(task: seqio.Task) -> Objective | None:
    """The objective of a Task that denoises its documents, else None."""
    found = [p.objective for p in task.preprocessors if isinstance(p, Denoise)]
    return found[0] if found else None


def document_task(task: seqio.Task) -> seqio.Task:
    """A Task with an objective as its tokenized documents (`targets`, no EOS), as a token
    store holds them: its preprocessors before `Denoise` (not registered)."""
    preprocessors = list(task.preprocessors)
    cut = next(i for i, p in enumerate(preprocessors) if isinstance(p, Denoise))
    vocabulary = task.output_features["targets"].vocabulary
    return seqio.Task(task.name, task.source, preprocessors=preprocessors[:cut],
                      output_features={"targets": seqio.Feature(vocabulary, add_eos=False,
                                                                dtype=tf.int32)})
