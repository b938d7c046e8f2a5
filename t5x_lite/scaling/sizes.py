"""Model sizes along a width/depth rule, and the runs of an IsoFLOP sweep.

A size is a family's config at some number of heads of the base config's `head_dim`:
its width is heads x head_dim, its depth the width over `aspect_ratio` (every layer
count scaled alike), and the widths of the feed-forward layers and the number of
key/value heads keep their ratios to the width and to the heads. Sizes step by heads,
not by layers, to keep neighbours close (parameters grow as the width cubed): a small
`head_dim` without key/value grouping gives the finest steps. Parameters and FLOPs come
from the family (`param_count`, `flops_per_token`), so they are exact for any family.
"""

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence

import gin

from t5x_lite.errors import ConfigError
from t5x_lite.models import family as family_lib

DEPTH_FIELDS = ("num_layers", "num_encoder_layers", "num_decoder_layers")
WIDTH_RATIO_FIELDS = ("mlp_dim", "expert_mlp_dim")  # kept in proportion to embed_dim
# Chinchilla's rule of thumb, about 20 tokens per parameter, centres each budget's sizes.
TOKENS_PER_PARAM = 20.0


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SizeRule:
    """How a sweep sizes its models: width = `aspect_ratio` x depth (None: the base
    config's width over its depth), from `min_layers` to `max_layers` layers."""

    aspect_ratio: float | None = None
    min_layers: int = 1
    max_layers: int = 48

    def __post_init__(self):
        if self.min_layers < 1 or self.max_layers < self.min_layers:
            raise ConfigError(f"SizeRule: min_layers={self.min_layers} and max_layers="
                              f"{self.max_layers} must satisfy 1 <= min_layers <= max_layers.")


def _depth(cfg) -> int:
    return max(getattr(cfg, name) for name in DEPTH_FIELDS if hasattr(cfg, name))


def _kv_group(cfg) -> int:
    """Query heads per key/value head (1 for a family without grouped attention)."""
    return cfg.num_heads // getattr(cfg, "num_kv_heads", cfg.num_heads)


def with_heads(base, num_heads: int, rule: SizeRule):
    """`base` at `num_heads` heads of its `head_dim`: width num_heads x head_dim, depth
    width / aspect ratio (rounded, within the rule's bounds; every layer count scaled),
    feed-forward widths and key/value heads in the base's proportions."""
    base_depth = _depth(base)
    aspect = rule.aspect_ratio or base.embed_dim / base_depth
    width = num_heads * base.head_dim
    depth = min(rule.max_layers, max(rule.min_layers, round(width / aspect)))
    changes = {name: max(1, round(getattr(base, name) * depth / base_depth))
               for name in DEPTH_FIELDS if hasattr(base, name)}
    changes.update({name: max(8, 8 * round(getattr(base, name) * width / base.embed_dim / 8))
                    for name in WIDTH_RATIO_FIELDS if hasattr(base, name)})
    changes.update(embed_dim=width, num_heads=num_heads)
    if hasattr(base, "num_kv_heads"):
        changes["num_kv_heads"] = num_heads // _kv_group(base)
    if hasattr(base, "first_dense_layers"):
        changes["first_dense_layers"] = min(base.first_dense_layers, changes["num_layers"] - 1)
    return dataclasses.replace(base, **changes)


@dataclasses.dataclass(frozen=True)
class Size:
    """A config with its parameter counts and training FLOPs per token."""

    cfg: object
    params: int
    non_embedding_params: int
    flops_per_token: float


def measure(cfg, task_lengths: Mapping[str, int]) -> Size:
    """`cfg`'s size (its vocabulary resolved); FLOPs per token of a row of `task_lengths`,
    as the trainer's MFU counts them. Non-embedding: less the input and output tables."""
    if cfg.vocab_size is None:
        raise ConfigError("a scaling sweep needs the vocabulary size: resolve the base config "
                          "against its task first (ModelFamily.resolve).")
    family = family_lib.for_config(cfg)
    params = family.param_count(cfg)
    embedding = cfg.vocab_size * cfg.embed_dim * (1 if cfg.tie_embeddings else 2)
    return Size(cfg, params, params - embedding, family.flops_per_token(cfg, task_lengths))


def ladder(base, rule: SizeRule, task_lengths: Mapping[str, int],
           max_params: float = math.inf) -> list[Size]:
    """The sizes of every head count (in steps of the base's key/value grouping) whose
    depth lies within the rule's bounds, smallest first, up to the first of more than
    `max_params` parameters."""
    group, sizes = _kv_group(base), []
    aspect = rule.aspect_ratio or base.embed_dim / _depth(base)
    for num_heads in itertools.count(group, group):
        if round(num_heads * base.head_dim / aspect) > rule.max_layers:
            return sizes
        sizes.append(measure(with_heads(base, num_heads, rule), task_lengths))
        if sizes[-1].params > max_params:
            return sizes


def size_range(budget: float, span: float) -> tuple[float, float]:
    """The parameter counts a budget's sizes lie between: `span`x around the
    rule-of-thumb optimum of 20 tokens per parameter (C = 6 N D)."""
    centre = math.sqrt(budget / (6 * TOKENS_PER_PARAM))
    return centre / math.sqrt(span), centre * math.sqrt(span)


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: a size trained for `steps` steps of `tokens_per_step` tokens."""

    budget: float
    size: Size
    steps: int
    tokens: int
    flops: float  # what the steps spend: tokens x flops_per_token


def isoflop_runs(sizes: Sequence[Size], budgets: Sequence[float], tokens_per_step: int,
                 per_budget: int = 5, span: float = 16.0) -> list[PlannedRun]:
    """For each budget, `per_budget` sizes log-evenly over `span`x in parameters around
    the budget's rule-of-thumb optimum (20 tokens per parameter), each trained for the
    whole steps the budget buys. Refuses a budget whose range the sizes do not cover."""
    runs = []
    for budget in budgets:
        low, high = size_range(budget, span)
        inside = [size for size in sizes if low <= size.params <= high]
        if len(inside) < per_budget:
            raise ConfigError(
                f"budget {budget:.3g} FLOPs: {len(inside)} sizes lie between {low:,.0f} and "
                f"{high:,.0f} parameters, {per_budget} are needed; widen SizeRule's "
                f"min_layers..max_layers or pick a budget nearer the sizes "
                f"({sizes[0].params:,} to {sizes[-1].params:,} parameters).")
        picks = sorted({round(i * (len(inside) - 1) / (per_budget - 1)) for i in range(per_budget)})
        for size in (inside[i] for i in picks):
            steps = int(budget // (size.flops_per_token * tokens_per_step))
            tokens = steps * tokens_per_step
            runs.append(PlannedRun(budget, size, steps, tokens, tokens * size.flops_per_token))
    return runs
