"""Scaling laws: sweeps, fits and compute-optimal predictions."""
