"""Model families. `decoder` is the Llama-compatible decoder-only family."""
