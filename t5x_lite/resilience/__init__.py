"""Divergence detection and recovery, preemption, the watchdog, the supervisor and fault injection."""
