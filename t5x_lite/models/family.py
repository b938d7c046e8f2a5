"""The model-family interface: what the trainer, evaluator, decoder driver, planner and
exporters know of a model.

A family is a stateless object. Gin binds its config dataclass (`DecoderConfig`, ...);
the family is found from that config's type (`for_config`), and recorded in checkpoints
by `name` (`by_name`). Losses come back as sums (`LossOutput`): microbatches add up and
the step divides once by the total weight; every auxiliary sum reaches the run's metrics
under its own name. The optimizer stays out: a family only says which parameters are
never decayed.
"""

import abc
import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import numpy as np
from flax import nnx

from t5x_lite.errors import ConfigError

# The family of checkpoints whose record names none (written before families existed).
DEFAULT_FAMILY = "decoder"


@dataclasses.dataclass(frozen=True)
class LossOutput:
    """Sums over a batch: weighted loss (auxiliary terms included), total weight, each
    auxiliary term on its own (reported, already inside `loss`), and the sums the family
    reads back after the step (`after_step`; not reported)."""

    loss: jax.Array
    weight: jax.Array
    aux: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)
    state: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)


jax.tree_util.register_dataclass(LossOutput, data_fields=["loss", "weight", "aux", "state"],
                                 meta_fields=[])


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One model input of a batch: its length per row and the logical axes it is sharded
    by (its first axis is the batch)."""

    length: int
    logical_axes: tuple[str, ...] = ("batch", "length")
    dtype: str = "int32"


@dataclasses.dataclass(frozen=True)
class Stack:
    """One layer stack of a model (its decoder, its encoder): how many layers, and how many
    tokens wide a batch row is for it."""

    layers: int
    row_length: int


class ModelFamily(abc.ABC):
    """One kind of model. Subclasses set `name` and `config_type` and implement every method."""

    name: ClassVar[str]
    config_type: ClassVar[type]
    reads_token_stores: ClassVar[bool] = False  # True where `packed_features` is implemented
    # True where `inputs` go to an encoder: rows of examples keep inputs and targets apart.
    encodes_inputs: ClassVar[bool] = False

    def resolve(self, cfg, task_vocab_size: int):
        """`cfg` with what depends on the task filled in (vocabulary size), checked."""
        return cfg

    @abc.abstractmethod
    def build(self, cfg, rngs: nnx.Rngs) -> nnx.Module:
        """The Flax NNX module; every `nnx.Param` carries `logical_axes` metadata."""

    @abc.abstractmethod
    def features(self, cfg, task_lengths: Mapping[str, int]) -> dict[str, FeatureSpec]:
        """The batch the model reads, for the task's feature lengths."""

    @abc.abstractmethod
    def feature_converter(self, has_inputs: bool, pack: bool):
        """The seqio FeatureConverter producing `features` from a Task (with `inputs` and
        `targets`, or `targets` only)."""

    def packed_features(self, packed: Mapping[str, Any]) -> dict[str, Any]:
        """The model's features of rows cut from token stores, from seqio's packed layout
        (numpy [B, L]): `targets`, `targets_segment_ids`, `targets_positions` (position 0
        starts a segment; segment 0 is padding), and for rows of examples' inputs then
        targets, `inputs_width` (the inputs' length of each token's example); where the
        family `encodes_inputs`, `inputs`, `inputs_segment_ids`, `inputs_positions` too
        ([B, I]; the targets' are [B, T])."""
        raise NotImplementedError(f"the {self.name} family does not read token stores")

    @abc.abstractmethod
    def logits(self, cfg, model: nnx.Module, batch: Mapping[str, jax.Array]) -> jax.Array:
        """Float32 logits [B, T, V] over the target positions of a batch."""

    @abc.abstractmethod
    def loss(self, cfg, model: nnx.Module, batch: Mapping[str, jax.Array]) -> LossOutput:
        """Summed training loss of a batch."""

    @abc.abstractmethod
    def example_batch(self, inputs, targets, length: int | None) -> dict:
        """A host batch in `features` layout scoring `targets` after `inputs` (token ids).
        `length` (None: as long as the rows need) fixes the rows' width so that batches
        share one compiled program; callers pass at least the longest inputs + targets."""

    @abc.abstractmethod
    def score(self, cfg, model: nnx.Module, batch: Mapping[str, jax.Array]) -> jax.Array:
        """Log-likelihood [B] of each row's targets (an `example_batch`)."""

    @abc.abstractmethod
    def prefill(self, cfg, model: nnx.Module, prompts_BP, starts_B, num_slots: int):
        """Prediction starts: runs left-padded prompts (row b starts at slot starts_B[b])
        into a fresh decoding state of `num_slots` slots; returns (next-token float32
        logits [B, V], state)."""

    @abc.abstractmethod
    def extend(self, cfg, model: nnx.Module, token_B, starts_B, slot, state):
        """One prediction step: runs one new token per row at `slot`; returns (next-token
        logits [B, V], state)."""

    @abc.abstractmethod
    def param_count(self, cfg, *, active: bool = False) -> int:
        """Parameters in total, or those one token uses (`active`)."""

    @abc.abstractmethod
    def flops_per_token(self, cfg, task_lengths: Mapping[str, int]) -> float:
        """Training FLOPs (forward and backward) per target-row token."""

    def stacks(self, cfg, task_lengths: Mapping[str, int]) -> dict[str, Stack]:
        """The model's layer stacks by name, as a plan reports them. Default: one decoder
        of `cfg.num_layers` layers over the whole row."""
        return {"decoder": Stack(cfg.num_layers, self.tokens_per_row(task_lengths))}

    def no_decay(self, cfg) -> tuple[str, ...]:
        """Names of parameters (path parts) never weight-decayed, besides vectors."""
        return ()

    def after_step(self, cfg, params: dict, state: Mapping[str, jax.Array]) -> dict:
        """The params after an optimizer update, given the step's `LossOutput.state` sums:
        where a family keeps parameters that no gradient moves (e.g. router biases set
        from the observed load). Runs inside the jitted step; healthy steps only."""
        return params

    def tokens_per_row(self, task_lengths: Mapping[str, int]) -> int:
        """Tokens a batch row counts for throughput."""
        return sum(task_lengths.values())


def shifted_right(targets_BL: np.ndarray, positions_BL: np.ndarray,
                  start_id: int) -> np.ndarray:
    """A decoder's inputs for packed targets: the targets shifted right by one within each
    segment, `start_id` where a segment starts (position 0, as on padding)."""
    inputs_BL = np.zeros_like(targets_BL)
    inputs_BL[:, 1:] = targets_BL[:, :-1]
    inputs_BL[positions_BL == 0] = start_id
    return inputs_BL


_FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Makes `family` known by its name and its config type."""
    _FAMILIES[family.name] = family
    return family


def for_config(cfg: Any) -> ModelFamily:
    """The family whose config type `cfg` is (exactly; else the nearest base type)."""
    for cls in type(cfg).__mro__:
        for family in _FAMILIES.values():
            if family.config_type is cls:
                return family
    raise ConfigError(f"{type(cfg).__name__} is no model family's config; bind "
                      "train.model_config to a family config such as @DecoderConfig().")


def by_name(name: str) -> ModelFamily:
    """The family called `name`; the built-in families load on first use."""
    if name not in _FAMILIES:
        try:
            importlib.import_module(f"t5x_lite.models.{name}")
        except ModuleNotFoundError:
            pass
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {sorted(_FAMILIES)}.")
    return _FAMILIES[name]


def default() -> ModelFamily:
    return by_name(DEFAULT_FAMILY)


def default_config():
    """The default family's config as gin binds it: what is trained where no gin file binds
    `train.model_config` (the decoder's model files leave it to this)."""
    return default().config_type()
