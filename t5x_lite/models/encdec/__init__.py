"""The T5 v1.1 encoder-decoder model (Flax NNX) and its family (registers itself as
"encdec")."""

from t5x_lite.models.encdec.family import ENCDEC

__all__ = ["ENCDEC"]
