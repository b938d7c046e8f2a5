"""The Shakespeare config's train setup and fresh state, built in this process as
`t5x_lite train` builds them (data-parallel over every device)."""

import pathlib

GIN_FILE = "experiments/shakespeare_char.gin"


def build(text: pathlib.Path):
    """(train_setup.TrainSetup, initial state, the meta a checkpoint of it carries)."""
    import gin

    from t5x_lite.analysis import aot
    from t5x_lite.config import gin_config
    from t5x_lite.config.configurables import register_configurables
    from t5x_lite.parallel import partitioning
    from t5x_lite.train import trainer
    from t5x_lite.train.state import init_state

    gin.clear_config()
    register_configurables()
    gin_config.parse([GIN_FILE], [f"TEXT_FILES=['{text}']", "MODEL_DIR='unused'"])
    setup = aot.build_setup(aot.train_bindings(), partitioning.create_mesh((-1, 1, 1)))
    state = init_state(setup.spec, setup.optimizer, setup.shardings, seed=0)
    return setup, state, trainer._record(setup.cfg, data_position=0)


def size_mb(tree) -> float:
    import jax

    return sum(leaf.nbytes for leaf in jax.tree.leaves(tree)) / 2**20
