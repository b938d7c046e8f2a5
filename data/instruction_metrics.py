"""Postprocessors and metrics for instruction Tasks, in the forms `seqio.Evaluator` calls.

A postprocessor maps a decoded model output (or a target, with `is_target=True`) to
the value that is scored; a metric maps (targets, predictions) to {name: value}.
Scores are percentages.
"""

import collections
import re
from collections.abc import Callable, Sequence

from t5x_lite.errors import ConfigError

_ANSWER = re.compile(r"answer is\s*(-?[\d,]*\d)")
_NUMBER = re.compile(r"-?\d[\d,]*")
_NON_WORD = re.compile(r"[^\w\s]")


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def strip_text(output: str | bytes, example=None, is_target: bool = False) -> str:
    """The output without surrounding whitespace."""
    del example, is_target
    return _text(output).strip()


def final_answer(output: str | bytes, example=None, is_target: bool = False) -> str:
    """The number after the last 'answer is', else the last number, else the stripped text.

    Thousands separators are dropped, so '1,024' and '1024' score the same.
    """
    del example, is_target
    text = _text(output)
    answers = _ANSWER.findall(text) or _NUMBER.findall(text)
    return answers[-1].replace(",", "") if answers else text.strip()


def _percent_equal(targets: Sequence[str], predictions: Sequence[str]) -> float:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions.")
    if not targets:
        return 0.0
    return 100.0 * sum(t == p for t, p in zip(targets, predictions)) / len(targets)


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Percent of predictions equal to their target."""
    return {"exact_match": _percent_equal(targets, predictions)}


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Percent of right answers (for answers already extracted by a postprocessor)."""
    return {"accuracy": _percent_equal(targets, predictions)}


def token_f1(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Mean F1 of the word multisets (lowercased, punctuation dropped) of prediction and target."""
    scores = [_word_f1(t, p) for t, p in zip(targets, predictions, strict=True)]
    return {"token_f1": 100.0 * sum(scores) / len(scores) if scores else 0.0}


def _words(text: str) -> collections.Counter:
    """Lowercased words, punctuation dropped."""
    return collections.Counter(_NON_WORD.sub(" ", text.lower()).split())


def _word_f1(target: str, prediction: str) -> float:
    target_words, predicted_words = _words(target), _words(prediction)
    common = sum((target_words & predicted_words).values())
    if not target_words and not predicted_words:
        return 1.0
    if common == 0:
        return 0.0
    precision = common / sum(predicted_words.values())
    recall = common / sum(target_words.values())
    return 2 * precision * recall / (precision + recall)


def log_likelihood(targets: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """Mean log-likelihood of the target after the inputs (a score metric: seqio passes
    the model's scores, not decoded predictions)."""
    del targets
    return {"log_likelihood": sum(scores) / len(scores) if len(scores) else 0.0}


POSTPROCESSORS: dict[str, Callable] = {"strip": strip_text, "final_answer": final_answer}
METRICS: dict[str, Callable] = {"exact_match": exact_match, "accuracy": accuracy,
                                "token_f1": token_f1, "log_likelihood": log_likelihood}


def postprocessor(name: str) -> Callable:
    if name not in POSTPROCESSORS:
        raise ConfigError(f"Unknown postprocessor {name!r}: use one of {sorted(POSTPROCESSORS)}.")
    return POSTPROCESSORS[name]


def metric_fns(names: Sequence[str]) -> list[Callable]:
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ConfigError(f"Unknown metrics {unknown}: use names from {sorted(METRICS)}.")
    return [METRICS[name] for name in names]
