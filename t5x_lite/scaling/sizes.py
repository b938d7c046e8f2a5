"""Model sizes along a width/depth rule, and the runs of an IsoFLOP sweep.

A size is a family's config at some depth: every layer count scales with depth, the
width is `aspect_ratio` x depth rounded to whole heads of the base config's `head_dim`,
and the widths of the feed-forward layers and the number of key/value heads keep their
ratios to the width and to the heads. Parameters and FLOPs come from the family
(`param_count`, `flops_per_token`), so they are exact for any family.
"""

import dataclasses
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


def at_depth(base, depth: int, rule: SizeRule):
    """`base` resized to `depth` layers (each layer count scaled, at least 1) by `rule`."""
    base_depth = _depth(base)
    aspect = rule.aspect_ratio or base.embed_dim / base_depth
    heads = max(1, round(aspect * depth / base.head_dim))
    kv_ratio = base.num_heads // getattr(base, "num_kv_heads", base.num_heads)
    heads = max(kv_ratio, heads - heads % kv_ratio)
    width = heads * base.head_dim
    changes = {name: max(1, round(getattr(base, name) * depth / base_depth))
               for name in DEPTH_FIELDS if hasattr(base, name)}
    changes.update({name: max(8, 8 * round(getattr(base, name) * width / base.embed_dim / 8))
                    for name in WIDTH_RATIO_FIELDS if hasattr(base, name)})
    changes.update(embed_dim=width, num_heads=heads)
    if hasattr(base, "num_kv_heads"):
        changes["num_kv_heads"] = heads // kv_ratio
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


def ladder(base, rule: SizeRule, task_lengths: Mapping[str, int]) -> list[Size]:
    """Every depth's size from `rule.min_layers` to `rule.max_layers`, smallest first."""
    sizes = [measure(at_depth(base, depth, rule), task_lengths)
             for depth in range(rule.min_layers, rule.max_layers + 1)]
    return sorted(sizes, key=lambda size: size.params)


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
        centre = math.sqrt(budget / (6 * TOKENS_PER_PARAM))
        low, high = centre / math.sqrt(span), centre * math.sqrt(span)
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
