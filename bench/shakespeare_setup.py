"""The Shakespeare config's model, mesh and train state, built in this process as
`t5x_lite train` builds them (data-parallel over every device)."""

import dataclasses
import pathlib

GIN_FILE = "experiments/shakespeare_char.gin"


@dataclasses.dataclass(frozen=True)
class Setup:
    data: object          # input_pipeline.DataConfig
    spec: object          # train_state.ModelSpec
    schedule: object
    optimizer: object
    mesh: object
    activation_rules: object
    shardings: dict
    state: dict

    def batch_sharding(self):
        from t5x_lite import partitioning

        shape = (self.data.global_batch_size, self.data.sequence_length)
        return partitioning.named_sharding(("batch", "length"), shape, self.mesh,
                                           self.activation_rules)

    def meta(self) -> dict:
        """What the trainer saves beside the state (`meta` item)."""
        import gin

        return {"data_position": 0, "scan_layers": self.spec.cfg.scan_layers,
                "model_config": dataclasses.asdict(self.spec.cfg), "gin_config": gin.config_str()}


def build(text: pathlib.Path) -> Setup:
    import gin

    from t5x_lite import gin_config, input_pipeline, main, optim, partitioning
    from t5x_lite.models.config import DecoderConfig
    from t5x_lite.train_state import ModelSpec, init_state, state_shardings

    gin.clear_config()
    main.register_configurables()
    gin_config.parse([GIN_FILE], [f"TEXT_FILES=['{text}']", "MODEL_DIR='unused'"])
    data = input_pipeline.DataConfig()
    vocab = input_pipeline.output_vocabulary(data.mixture_or_task_name)
    spec = ModelSpec.create(DecoderConfig().with_vocab(vocab.vocab_size))
    mesh = partitioning.create_mesh((-1, 1, 1))
    param_rules, activation_rules = partitioning.axis_rules()
    schedule = optim.create_schedule()
    optimizer = optim.create_optimizer(schedule)
    _, shardings = state_shardings(spec, optimizer, mesh, param_rules)
    state = init_state(spec, optimizer, shardings, seed=0)
    return Setup(data, spec, schedule, optimizer, mesh, activation_rules, shardings, state)


def size_mb(tree) -> float:
    import jax

    return sum(leaf.nbytes for leaf in jax.tree.leaves(tree)) / 2**20
