"""The Llama-compatible decoder-only family (registers itself as "decoder")."""

from t5x_lite.models.decoder.family import DECODER

__all__ = ["DECODER"]
