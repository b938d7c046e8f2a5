"""The built-in instruction Tasks and Mixtures, Flan style, from material on the machine.

Task families (byte vocabulary; each has an `_spm` twin with the SentencePiece one):

* `stdlib_signature`: a standard-library docstring -> the function's signature;
* `stdlib_summary`: a function's source without its docstring -> the docstring's
  one-line summary;
* `pydoc_topic_paragraph`: a pydoc topic or section -> its opening paragraph;
* `arithmetic_{add,subtract,multiply}_{direct,cot}`: generated problems on 2-3 digit
  numbers (multiplication by a 1-2 digit number), answered directly or worked out
  step by step (chain of thought); unlimited train data, 1000 validation problems;
* `arithmetic_increment_direct`: a 2-3 digit number plus one, small enough for a tiny
  model to learn in a few hundred steps (quick fine-tuning checks; in no Mixture).

Mixture `instruct_train` mixes the training Tasks at `TRAIN_RATES`. The Tasks in
`HELD_OUT_TASKS` (a new code task and a new operation) are in no training mixture:
Mixture `instruct_heldout` evaluates them zero-shot, as Flan does.
"""

import dataclasses
import functools
from collections.abc import Callable

import seqio
import tensorflow as tf

from . import arithmetic
from . import instruction_templates as phrasings
from .generated_source import GeneratedSource
from .instruction_metrics import metric_fns, postprocessor
from .instruction_task import in_memory_source, register_instruction_task
from .pydoc_paragraphs import topic_paragraphs
from .stdlib_functions import stdlib_functions
from .templates import render

TRAIN_MIXTURE = "instruct_train"
HELD_OUT_MIXTURE = "instruct_heldout"
TRAIN_RATES = {
    "stdlib_signature": 1.0,
    "pydoc_topic_paragraph": 0.25,   # 187 examples; a higher rate would only repeat them.
    "arithmetic_add_direct": 1.0,
    "arithmetic_add_cot": 1.0,
    "arithmetic_subtract_direct": 1.0,
    "arithmetic_subtract_cot": 1.0,
}
HELD_OUT_TASKS = ("stdlib_summary", "arithmetic_multiply_direct", "arithmetic_multiply_cot")
VOCABULARY_SUFFIXES = {"byte": "", "spm": "_spm"}   # As the embedded corpus Tasks name them.
ARITHMETIC_VALIDATION_SIZE = 1000
SMALL_TASK, SMALL_TASK_RANGES = "arithmetic_increment_direct", ((10, 999), (1, 1))
SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class InstructionTaskSpec:
    name: str
    make_source: Callable[[], seqio.DataSource]
    postprocessor: str
    metrics: tuple[str, ...]


@functools.cache
def stdlib_signature_examples(split: str) -> list[dict[str, str]]:
    return [render(phrasings.STDLIB_SIGNATURE, dataclasses.asdict(function),
                   key=f"stdlib_signature:{function.module}.{function.qualname}")
            for function in stdlib_functions(split)]


@functools.cache
def stdlib_summary_examples(split: str) -> list[dict[str, str]]:
    return [render(phrasings.STDLIB_SUMMARY, dataclasses.asdict(function),
                   key=f"stdlib_summary:{function.module}.{function.qualname}")
            for function in stdlib_functions(split) if function.summary and function.body]


@functools.cache
def pydoc_topic_examples(split: str) -> list[dict[str, str]]:
    return [render(phrasings.PYDOC_TOPIC, {**dataclasses.asdict(record), "subject": record.subject},
                   key=f"pydoc_topic_paragraph:{record.topic}:{record.section}")
            for record in topic_paragraphs(split)]


def arithmetic_fields(problem: arithmetic.Problem) -> dict[str, str | int]:
    phrase = phrasings.ARITHMETIC_PHRASES[problem.operation].format(a=problem.a, b=problem.b)
    return {"a": problem.a, "b": problem.b, "symbol": problem.symbol, "phrase": phrase,
            "answer": problem.answer, "solution": arithmetic.worked_solution(problem)}


def arithmetic_example_fn(task: str, operation: str, step_by_step: bool,
                          operand_ranges: tuple | None = None):
    """make_example(split, stream, index) for a GeneratedSource."""
    templates = phrasings.ARITHMETIC_STEP_BY_STEP if step_by_step else phrasings.ARITHMETIC_DIRECT

    def make_example(split: str, stream: int, index: int) -> dict[str, str]:
        problem = arithmetic.nth_problem(operation, f"{task}:{stream}", split, index,
                                         operand_ranges)
        return render(templates, arithmetic_fields(problem), key=f"{task}:{problem.a}:{problem.b}")

    return make_example


def task_specs() -> list[InstructionTaskSpec]:
    """The built-in instruction Tasks (byte-vocabulary names)."""
    def in_memory(examples_by_split):
        return lambda: in_memory_source(examples_by_split, SPLITS)

    specs = [
        InstructionTaskSpec("stdlib_signature", in_memory(stdlib_signature_examples), "strip",
                            ("exact_match", "log_likelihood")),
        InstructionTaskSpec("stdlib_summary", in_memory(stdlib_summary_examples), "strip",
                            ("exact_match", "token_f1", "log_likelihood")),
        InstructionTaskSpec("pydoc_topic_paragraph", in_memory(pydoc_topic_examples), "strip",
                            ("exact_match", "token_f1", "log_likelihood")),
    ]
    for operation in arithmetic.OPERATIONS:
        for style, step_by_step in (("direct", False), ("cot", True)):
            name = f"arithmetic_{operation}_{style}"
            make_example = arithmetic_example_fn(name, operation, step_by_step)
            specs.append(InstructionTaskSpec(
                name, functools.partial(GeneratedSource, make_example, ARITHMETIC_VALIDATION_SIZE),
                "final_answer" if step_by_step else "strip", ("accuracy", "log_likelihood")))
    make_example = arithmetic_example_fn(SMALL_TASK, "add", False, SMALL_TASK_RANGES)
    specs.append(InstructionTaskSpec(
        SMALL_TASK, functools.partial(GeneratedSource, make_example, ARITHMETIC_VALIDATION_SIZE),
        "strip", ("accuracy", "log_likelihood")))
    return specs


def register_instruction_tasks() -> None:
    for vocabulary_name, suffix in VOCABULARY_SUFFIXES.items():
        for spec in task_specs():
            register_instruction_task(spec.name + suffix, spec.make_source(), vocabulary_name,
                                      postprocessor(spec.postprocessor), metric_fns(spec.metrics))
        _add_mixture(TRAIN_MIXTURE + suffix,
                     [(name + suffix, rate) for name, rate in TRAIN_RATES.items()])
        _add_mixture(HELD_OUT_MIXTURE + suffix, [(name + suffix, 1.0) for name in HELD_OUT_TASKS])


def _add_mixture(name: str, tasks_and_rates: list[tuple[str, float]]) -> None:
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(
        name, tasks_and_rates,
        # A data shard may hold no validation examples of a small Task; mix the others then.
        sample_fn=lambda datasets, rates, seed: tf.data.Dataset.sample_from_datasets(
            datasets, rates, seed, stop_on_empty_dataset=False))


register_instruction_tasks()
