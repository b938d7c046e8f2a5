"""Keep TensorFlow on the CPU: the input pipeline must never take accelerator memory."""

import tensorflow as tf


def hide_accelerators_from_tensorflow() -> None:
    """Hides GPUs from TF; a no-op once TF has initialized its devices."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # Devices are already initialized; whoever did it made the call.
