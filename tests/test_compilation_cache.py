"""The persistent compilation cache: a second process compiling the same program loads it
from `xla/` in the cache directory instead of compiling it."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp
    from t5x_lite.config import compilation_cache
    compilation_cache.MIN_COMPILE_SECONDS = 0.0
    print("dir", compilation_cache.enable())
    events = []
    jax.monitoring.register_event_listener(lambda event, **kwargs: events.append(event))
    step = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0) * 3.0 + x[0])
    print("value", float(step(jnp.arange(64.0).reshape(8, 8) / 64)[0]))
    print("hits", events.count("/jax/compilation_cache/cache_hits"))
""")


def _run(cache_dir, **env) -> dict[str, str]:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            env={**os.environ, "T5X_LITE_CACHE_DIR": str(cache_dir), **env},
                            timeout=300, check=True)
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


def test_a_second_process_loads_the_compiled_program_and_computes_the_same(tmp_path):
    first = _run(tmp_path)
    assert first["dir"] == str(tmp_path / "xla") and first["hits"] == "0"
    assert os.listdir(tmp_path / "xla")
    second = _run(tmp_path)
    assert int(second["hits"]) >= 1 and second["value"] == first["value"]


def test_the_cache_can_be_switched_off(tmp_path):
    off = _run(tmp_path, T5X_LITE_COMPILATION_CACHE="off")
    assert off["dir"] == "None" and not (tmp_path / "xla").exists()
