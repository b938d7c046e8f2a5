"""The Shakespeare config's train state, built in this process as `t5x_lite train` does."""

import pathlib

GIN_FILE = "experiments/shakespeare_char.gin"


def train_state(text: pathlib.Path) -> tuple[dict, dict]:
    """(initial train state on a (devices, 1, 1) mesh, checkpoint meta) of the config."""
    import dataclasses

    import gin

    from t5x_lite import gin_config, input_pipeline, main, optim, partitioning
    from t5x_lite.models.config import DecoderConfig
    from t5x_lite.train_state import ModelSpec, init_state, state_shardings

    gin.clear_config()
    main.register_configurables()
    gin_config.parse([GIN_FILE], [f"TEXT_FILES=['{text}']", "MODEL_DIR='unused'"])
    data = input_pipeline.DataConfig()
    vocab = input_pipeline.output_vocabulary(data.mixture_or_task_name)
    cfg = DecoderConfig().with_vocab(vocab.vocab_size)
    mesh = partitioning.create_mesh((-1, 1, 1))
    param_rules, _ = partitioning.axis_rules()
    optimizer = optim.create_optimizer(optim.create_schedule())
    spec = ModelSpec.create(cfg)
    _, shardings = state_shardings(spec, optimizer, mesh, param_rules)
    meta = {"data_position": 0, "model_config": dataclasses.asdict(cfg),
            "gin_config": gin.config_str()}
    return init_state(spec, optimizer, shardings, seed=0), meta


def size_mb(tree) -> float:
    import jax

    return sum(leaf.nbytes for leaf in jax.tree.leaves(tree)) / 2**20
