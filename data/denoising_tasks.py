"""Encoder-decoder pretraining Tasks on the embedded corpus: span corruption, prefix LM, UL2.

Mixture `embedded_<objective>` (`_spm`: the SentencePiece vocabulary) mixes the corpus's
code and prose Tasks `embedded_<kind>_<objective>` at the rates of the `embedded`
Mixture. Both vocabularies carry T5's extra ids (`byte_t5` is ByT5's layout).
`denoising_mixture` registers one with other settings, from gin:

    MIXTURE_OR_TASK_NAME = @denoising_mixture()
    denoising_mixture.noise_density = 0.3
"""

import functools
from collections.abc import Sequence

import gin
import seqio
import tensorflow as tf

from t5x_lite.errors import ConfigError
from t5x_lite.pipeline.objectives import Denoise, Objective

from .lm_task import SHUFFLE_BUFFER_SIZE, vocabulary
from .tasks import MIXTURE_RATES, embedded_corpus_source, sample_until_all_empty

OBJECTIVES = ("span_corruption", "prefix_lm", "ul2")
_VOCABULARIES = {"byte": ("byte_t5", ""), "spm": ("spm_t5", "_spm")}
_DEFAULTS = {"noise_density": 0.15, "mean_span_length": 3.0, "ul2_rates": None}


def _objective(name: str, noise_density: float, mean_span_length: float,
               ul2_rates: Sequence[float] | None) -> Objective:
    if name == "span_corruption":
        return Objective.span_corruption(noise_density, mean_span_length)
    if name == "prefix_lm":
        return Objective.prefix_lm()
    if name == "ul2":
        return Objective.ul2(*([ul2_rates] if ul2_rates is not None else []))
    raise ConfigError(f"denoising_mixture.objective={name!r}: use one of {list(OBJECTIVES)}.")


def _settings_suffix(objective: str, noise_density: float, mean_span_length: float,
                     ul2_rates: Sequence[float] | None) -> str:
    """'' for the default settings, else a name part that tells the settings apart."""
    if objective == "span_corruption" and (noise_density, mean_span_length) != (
            _DEFAULTS["noise_density"], _DEFAULTS["mean_span_length"]):
        return f"_d{noise_density:g}_s{mean_span_length:g}"
    if objective == "ul2" and ul2_rates is not None:
        return "_r" + "-".join(f"{rate:g}" for rate in ul2_rates)
    return ""


def _register_task(name: str, kind: str, objective: Objective, vocabulary_name: str) -> None:
    vocab = vocabulary(vocabulary_name)
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=embedded_corpus_source(kind),
        preprocessors=[
            functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            Denoise(objective),
        ],
        output_features={feature: seqio.Feature(vocab, add_eos=False, dtype=tf.int32)
                         for feature in ("inputs", "targets")},
        shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
    )


@gin.configurable
def denoising_mixture(objective: str = "span_corruption",
                      noise_density: float = _DEFAULTS["noise_density"],
                      mean_span_length: float = _DEFAULTS["mean_span_length"],
                      ul2_rates: Sequence[float] | None = _DEFAULTS["ul2_rates"],
                      vocabulary_name: str = "byte") -> str:
    """Registers the Mixture of `objective` on the embedded corpus (span corruption with
    `noise_density` and `mean_span_length`; UL2 with `ul2_rates` over its seven
    denoisers) with the byte or SentencePiece vocabulary; returns its name."""
    if vocabulary_name not in _VOCABULARIES:
        raise ConfigError(f"denoising_mixture.vocabulary_name={vocabulary_name!r}: use one "
                          f"of {sorted(_VOCABULARIES)}.")
    settings = (noise_density, mean_span_length, ul2_rates)
    denoiser = _objective(objective, *settings)
    vocab_name, vocab_suffix = _VOCABULARIES[vocabulary_name]
    suffix = _settings_suffix(objective, *settings) + vocab_suffix
    tasks = []
    for kind, rate in MIXTURE_RATES.items():
        tasks.append((f"embedded_{kind}_{objective}{suffix}", rate))
        _register_task(tasks[-1][0], kind, denoiser, vocab_name)
    name = f"embedded_{objective}{suffix}"
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(
        name, tasks, sample_fn=sample_until_all_empty)
    return name


def register_denoising_tasks() -> None:
    for objective in OBJECTIVES:
        for vocabulary_name in _VOCABULARIES:
            denoising_mixture(objective, vocabulary_name=vocabulary_name)


register_denoising_tasks()
