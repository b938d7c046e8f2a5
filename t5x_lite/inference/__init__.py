"""Decoding, scoring and seqio evaluation of a trained model, and loading a run's model."""
