"""A quiet start: TensorFlow's and orbax's start-up notices kept off stderr.

TensorFlow (used only by the input pipeline) logs through C++ absl logging before anyone
can configure it, so TF_CPP_MIN_LOG_LEVEL does not reach its banner; the notices are
filtered out of stderr while it loads. Anything else written meanwhile is passed on.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile

# Lines TensorFlow writes on every start of a CPU-only or GPU-hidden process.
TENSORFLOW_NOTICES = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|failed call to cuInit"
    r"|rebuild TensorFlow with the appropriate compiler flags"
    r"|This TensorFlow binary is optimized to use available CPU instructions")

# orbax's routine warnings: a jax.Array handler re-registered as it imports, and a
# checkpoint written without the optional metadata file.
ORBAX_NOTICES = ("Type handler registry", "Metadata file does not exist")


def set_tensorflow_log_level() -> None:
    """TensorFlow's own (non-absl) C++ logging: warnings and errors only. Before import."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _OrbaxNoticeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from_orbax = f"{os.sep}orbax{os.sep}" in (record.pathname or "")
        return not (from_orbax and record.levelno == logging.WARNING
                    and str(record.msg).startswith(ORBAX_NOTICES))


def filter_orbax_notices() -> None:
    """Drops ORBAX_NOTICES; orbax logs through absl, i.e. the Python logger 'absl'."""
    for name in ("absl", "orbax"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OrbaxNoticeFilter) for f in logger.filters):
            logger.addFilter(_OrbaxNoticeFilter())


@contextlib.contextmanager
def _stderr_without(notices: re.Pattern):
    """Captures file descriptor 2 (C++ writes too), then writes back all but `notices`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not notices.search(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def import_tensorflow() -> None:
    """Imports TensorFlow without its banner and hides the GPUs from it (JAX owns them;
    TensorFlow only feeds data), which also initializes its devices while filtered."""
    set_tensorflow_log_level()
    with _stderr_without(TENSORFLOW_NOTICES):
        try:
            import tensorflow as tf
        except ImportError:
            return
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # devices already initialized by an earlier import
            pass


def quiet_start() -> None:
    filter_orbax_notices()
    import_tensorflow()
