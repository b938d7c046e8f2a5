"""Metrics writers, FLOPs and MFU bookkeeping, goodput and the profiler."""
