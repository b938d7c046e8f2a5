"""Model families. `decoder` is the Llama-compatible decoder-only family, `encdec` the
T5 v1.1 encoder-decoder, `moe` the decoder with routed experts."""
