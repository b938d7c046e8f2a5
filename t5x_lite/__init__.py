"""t5x_lite: sharded decoder-only pretraining in JAX."""

__version__ = "0.1.0"
