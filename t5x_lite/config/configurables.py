"""The one list of the modules that define gin configurables."""


def register_configurables() -> None:
    """Imports every module that defines gin configurables, so bindings resolve."""
    # `data` registers the built-in seqio Tasks and Mixtures as it loads.
    from t5x_lite import data  # noqa: F401
    from t5x_lite.checkpoints import manager as checkpointing  # noqa: F401
    from t5x_lite.inference import decoding, evaluation  # noqa: F401
    from t5x_lite.parallel import partitioning  # noqa: F401
    from t5x_lite.pipeline import input_pipeline  # noqa: F401
    from t5x_lite.train import optim, trainer  # noqa: F401
    from t5x_lite.models.decoder import config  # noqa: F401
    from t5x_lite.models.encdec import config as encdec_config  # noqa: F401
    from t5x_lite.models import moe  # noqa: F401  (its config and family)
    from t5x_lite.scaling import sizes  # noqa: F401  (a sweep's SizeRule)
