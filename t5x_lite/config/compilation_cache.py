"""The persistent compilation cache: compiled XLA programs kept on disk, so a rerun or a
resume of the same config loads its steps instead of compiling them again.

On by default for the commands that compile (`train`, `eval`, `infer`), in `xla/` under
the cache directory. JAX's own `JAX_COMPILATION_CACHE_DIR` puts it elsewhere (a bucket
that a pod's hosts share, say); `T5X_LITE_COMPILATION_CACHE=off` turns it off.
"""

import os

import jax

SWITCH_ENV = "T5X_LITE_COMPILATION_CACHE"
MIN_COMPILE_SECONDS = 0.2  # smaller programs are cheaper to compile than to look up


def enable() -> str | None:
    """Turns the cache on (unless switched off); returns its directory, or None."""
    if os.environ.get(SWITCH_ENV, "").lower() in ("off", "0", "false"):
        return None
    directory = jax.config.jax_compilation_cache_dir
    if not directory:
        from t5x_lite.data import cache  # pylint: disable=g-import-not-at-top
        directory = str(cache.cache_dir() / "xla")
        jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return directory
