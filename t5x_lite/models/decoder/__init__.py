"""The Llama-compatible decoder-only family."""
