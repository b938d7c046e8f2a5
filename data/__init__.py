"""Dataset definitions: importing this package registers the built-in seqio Tasks and Mixtures."""

from .tf_devices import hide_accelerators_from_tensorflow

hide_accelerators_from_tensorflow()

# pylint: disable=g-import-not-at-top,wrong-import-position
from . import denoising_tasks, instruction_tasks, tasks
from .corpus_files import corpus_task
from .jsonl_instructions import jsonl_instruction_task
from .text_files import text_file_task

__all__ = ["corpus_task", "denoising_tasks", "hide_accelerators_from_tensorflow",
           "instruction_tasks", "jsonl_instruction_task", "tasks", "text_file_task"]
