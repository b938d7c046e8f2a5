"""Orbax checkpoints of the train state, their fallback and retention, and the checkpoint record."""
