"""The mixture-of-experts decoder family (registers itself as "moe")."""

from t5x_lite.models.moe.family import MOE

__all__ = ["MOE"]
