"""The train state {step, params, opt_state, health} as plain pytrees on the mesh.

Shapes come from `jax.eval_shape`, so no host ever holds the full model; init runs
jitted straight into its shardings.
"""

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from t5x_lite.parallel import partitioning
from t5x_lite.resilience.divergence import init_health
from t5x_lite.models.spec import ModelSpec


def new_state(spec: ModelSpec, optimizer: optax.GradientTransformation, params: dict) -> dict:
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": optimizer.init(params),
            "health": init_health()}


def state_shardings(spec: ModelSpec, optimizer, mesh: Mesh, param_rules):
    """(abstract state, shardings); optimizer shardings are derived from the params'."""
    abstract = jax.eval_shape(lambda: new_state(spec, optimizer, spec.init_params(0)))
    params = abstract["params"]
    param_sharding = partitioning.tree_shardings(spec.logical_axes, params, mesh, param_rules)
    replicated = partitioning.replicated(mesh)

    def like_param(leaf, sharding, param):
        return sharding if getattr(leaf, "shape", None) == param.shape else replicated

    opt_sharding = optax.tree_map_params(
        optimizer, like_param, abstract["opt_state"], param_sharding, params,
        transform_non_params=lambda _: replicated)
    shardings = {"step": replicated, "params": param_sharding, "opt_state": opt_sharding,
                 "health": jax.tree.map(lambda _: replicated, abstract["health"])}
    return abstract, shardings


def init_state(spec: ModelSpec, optimizer, shardings, seed: int, params=None) -> dict:
    """A fresh state, created directly in its shardings (or around given params)."""
    if params is None:
        create = lambda: new_state(spec, optimizer, spec.init_params(seed))  # noqa: E731
        return jax.jit(create, out_shardings=shardings)()
    return jax.jit(lambda p: new_state(spec, optimizer, p), out_shardings=shardings)(params)
