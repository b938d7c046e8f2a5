"""Stacks of identical blocks, shared by the model families: stored stacked (a leading
`layers` axis on every parameter) and run under `jax.lax.scan`, so compile time stays
flat in depth, and rematerialized by a named policy."""

import jax
from flax import nnx

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything": jax.checkpoint_policies.everything_saveable,
}


def stacked_blocks(make_block, num_layers: int, rngs: nnx.Rngs) -> nnx.Module:
    """`num_layers` blocks from `make_block(rngs)`, stacked along a leading `layers` axis."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=num_layers)
    def make(block_rngs):
        return make_block(block_rngs)

    blocks = make(rngs)
    for _, variable in nnx.iter_graph(blocks):
        if isinstance(variable, nnx.Param):
            axes = variable.get_metadata()["logical_axes"]
            variable.set_metadata(logical_axes=("layers", *axes))
    return blocks


def remat(fn, policy_name: str):
    """`fn` (a block, or a scan body) under the rematerialization policy `policy_name`."""
    if policy_name == "none":
        return fn
    policy = REMAT_POLICIES[policy_name]
    return nnx.remat(fn, policy=policy) if isinstance(fn, nnx.Module) else jax.checkpoint(
        fn, policy=policy)


def run_scanned(blocks: nnx.Module, x, policy_name: str, *block_args):
    """x through stacked `blocks` in order; `block_args` go to every block."""
    x, _ = run_scanned_with_outputs(lambda block, carry: (block(carry, *block_args), None),
                                    blocks, x, policy_name)
    return x


def run_scanned_with_outputs(apply, blocks: nnx.Module, x, policy_name: str):
    """x through stacked `blocks` in order, `apply(block, x) -> (x, output)` for each;
    returns (x, the outputs stacked along a leading layers axis)."""
    graphdef, stacked_state = nnx.split(blocks)

    def body(carry, layer_state):
        return apply(nnx.merge(graphdef, layer_state), carry)

    return jax.lax.scan(remat(body, policy_name), x, stacked_state)
