"""The size rule of a scaling sweep and the runs it plans for IsoFLOP budgets."""

import dataclasses
import math

import pytest

from t5x_lite.errors import ConfigError
from t5x_lite.models.decoder.config import DecoderConfig
from t5x_lite.models.encdec.config import EncDecConfig
from t5x_lite.models.moe.config import MoEConfig
from t5x_lite.scaling import sizes

LENGTHS = {"targets": 128}
BASE = DecoderConfig(num_layers=4, embed_dim=64, num_heads=4, num_kv_heads=2, head_dim=16,
                     mlp_dim=256, vocab_size=384)


def test_each_depth_keeps_the_aspect_ratio_and_the_base_proportions():
    rule = sizes.SizeRule()
    for depth in (1, 2, 6, 11):
        cfg = sizes.at_depth(BASE, depth, rule)
        assert cfg.num_layers == depth
        assert cfg.embed_dim == cfg.num_heads * 16
        assert abs(cfg.embed_dim - 16 * depth) <= 16  # whole heads of the 16-wide aspect
        assert cfg.num_heads == 2 * cfg.num_kv_heads
        assert cfg.mlp_dim == 4 * cfg.embed_dim
    assert sizes.at_depth(BASE, 4, rule) == BASE  # the base is on its own rule


def test_every_family_resizes_all_its_stacks():
    t5 = EncDecConfig(num_encoder_layers=4, num_decoder_layers=2, embed_dim=64, num_heads=4,
                      head_dim=16, mlp_dim=128, vocab_size=384)
    bigger = sizes.at_depth(t5, 8, sizes.SizeRule())
    assert (bigger.num_encoder_layers, bigger.num_decoder_layers, bigger.embed_dim) == (8, 4, 128)
    moe = MoEConfig(num_layers=4, first_dense_layers=1, embed_dim=64, num_heads=4,
                    num_kv_heads=2, head_dim=16, expert_mlp_dim=64, vocab_size=384)
    smallest = sizes.at_depth(moe, 1, sizes.SizeRule())
    assert (smallest.num_layers, smallest.first_dense_layers) == (1, 0)
    # 16 wide would be one head; two keep the 2:1 grouping of query and key/value heads.
    assert (smallest.embed_dim, smallest.num_heads, smallest.num_kv_heads) == (32, 2, 1)
    assert smallest.expert_mlp_dim == 32 and smallest.num_experts == moe.num_experts


def test_sizes_are_measured_by_the_family():
    size = sizes.measure(BASE, LENGTHS)
    embedding = 2 * 384 * 64
    assert size.params - size.non_embedding_params == embedding
    # 6 x matmul weights + 12 L T N H for attention, as the trainer's MFU counts.
    matmul = 4 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 256) + 64 * 384
    assert size.flops_per_token == 6 * matmul + 12 * 4 * 128 * 64
    with pytest.raises(ConfigError, match="vocabulary size"):
        sizes.measure(dataclasses.replace(BASE, vocab_size=None), LENGTHS)


def test_each_budget_gets_sizes_over_sixteen_fold_spending_the_budget():
    ladder = sizes.ladder(BASE, sizes.SizeRule(max_layers=16), LENGTHS)
    assert [s.params for s in ladder] == sorted(s.params for s in ladder)
    runs = sizes.isoflop_runs(ladder, [1e12, 3e12], tokens_per_step=8 * 128)
    for budget in (1e12, 3e12):
        curve = [run for run in runs if run.budget == budget]
        params = [run.size.params for run in curve]
        assert len(curve) == 5 and params == sorted(params)
        assert 8 <= params[-1] / params[0] <= 16
        centre = math.sqrt(budget / 120)
        assert params[0] >= centre / 4 and params[-1] <= centre * 4
        for run in curve:  # whole steps: within one step of the budget, never over it
            step_flops = run.size.flops_per_token * 8 * 128
            assert budget - step_flops < run.flops <= budget
            assert run.tokens == run.steps * 8 * 128


def test_a_budget_beyond_the_sizes_is_refused_in_one_line():
    ladder = sizes.ladder(BASE, sizes.SizeRule(max_layers=6), LENGTHS)
    with pytest.raises(ConfigError, match=r"budget 1e\+16 FLOPs: 0 sizes lie between") as error:
        sizes.isoflop_runs(ladder, [1e16], tokens_per_step=1024)
    assert "\n" not in str(error.value)
