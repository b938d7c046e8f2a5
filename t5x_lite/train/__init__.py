"""The trainer: setup, state, optimizer, the jitted step and the loop."""
