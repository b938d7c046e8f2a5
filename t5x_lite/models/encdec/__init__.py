"""The T5 v1.1 encoder-decoder model (Flax NNX)."""
