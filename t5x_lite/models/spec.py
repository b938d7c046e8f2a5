"""A model without values: its family, config, graph, parameter template and logical axes.

The model is split once into a graph definition and a template of its parameters;
params then travel as a nested dict of arrays, which is what optax, orbax and the
exporters want. Shapes come from `nnx.eval_shape`, so no host holds the full model.
"""

import dataclasses

import jax
from flax import nnx

from t5x_lite.models import family as family_lib


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    family: family_lib.ModelFamily
    cfg: object
    graphdef: nnx.GraphDef
    template: nnx.State
    logical_axes: dict

    @classmethod
    def create(cls, cfg) -> "ModelSpec":
        """The spec of `cfg`, in the family its type belongs to."""
        family = family_lib.for_config(cfg)
        abstract_model = nnx.eval_shape(lambda: family.build(cfg, nnx.Rngs(0)))
        graphdef, template = nnx.split(abstract_model)
        axes = jax.tree.map(lambda v: v.get_metadata()["logical_axes"], template,
                            is_leaf=_is_variable)
        return cls(family, cfg, graphdef, template, nnx.to_pure_dict(axes))

    def init_params(self, seed: int) -> dict:
        return nnx.to_pure_dict(nnx.state(self.family.build(self.cfg, nnx.Rngs(seed))))

    def bind(self, params: dict) -> nnx.Module:
        state = jax.tree.map(lambda v: v, self.template, is_leaf=_is_variable)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state)

    def logits(self, params: dict, batch):
        return self.family.logits(self.cfg, self.bind(params), batch)

    def loss(self, params: dict, batch) -> family_lib.LossOutput:
        return self.family.loss(self.cfg, self.bind(params), batch)

    def after_step(self, params: dict, state) -> dict:
        return self.family.after_step(self.cfg, params, state)

    def score(self, params: dict, batch):
        return self.family.score(self.cfg, self.bind(params), batch)
