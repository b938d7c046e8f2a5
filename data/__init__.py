"""Dataset definitions: importing this package registers the built-in seqio Tasks and Mixtures."""

from .tf_devices import hide_accelerators_from_tensorflow

hide_accelerators_from_tensorflow()

# pylint: disable=g-import-not-at-top,wrong-import-position
from . import tasks
from .text_files import text_file_task
