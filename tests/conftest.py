"""Test setup: 8 simulated CPU devices and one shared data cache for the session."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("T5X_LITE_CACHE_DIR", os.path.join(tempfile.gettempdir(),
                                                         "t5x_lite_test_cache"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
