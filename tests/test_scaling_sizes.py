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
# Heads of 8 without grouping: widths in steps of 8, sizes close enough for 5 per budget.
FINE = dataclasses.replace(BASE, num_heads=8, num_kv_heads=8, head_dim=8)


def test_each_size_keeps_the_aspect_ratio_and_the_base_proportions():
    rule = sizes.SizeRule()
    for heads in (2, 4, 6, 12):
        cfg = sizes.with_heads(BASE, heads, rule)
        assert (cfg.embed_dim, cfg.num_layers) == (16 * heads, heads)  # 16 wide per layer
        assert (cfg.num_kv_heads, cfg.mlp_dim) == (heads // 2, 4 * cfg.embed_dim)
    assert sizes.with_heads(BASE, 4, rule) == BASE  # the base is on its own rule


def test_every_family_resizes_all_its_stacks():
    t5 = EncDecConfig(num_encoder_layers=4, num_decoder_layers=2, embed_dim=64, num_heads=4,
                      head_dim=16, mlp_dim=128, vocab_size=384)
    bigger = sizes.with_heads(t5, 8, sizes.SizeRule())
    assert (bigger.num_encoder_layers, bigger.num_decoder_layers, bigger.embed_dim) == (8, 4, 128)
    moe = MoEConfig(num_layers=4, first_dense_layers=1, embed_dim=64, num_heads=4,
                    num_kv_heads=2, head_dim=16, expert_mlp_dim=64, vocab_size=384)
    smallest = sizes.with_heads(moe, 2, sizes.SizeRule(aspect_ratio=32))
    assert (smallest.num_layers, smallest.first_dense_layers, smallest.embed_dim) == (1, 0, 32)
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
    assert [s.cfg.num_heads for s in sizes.ladder(BASE, sizes.SizeRule(max_layers=16),
                                                  LENGTHS)] == list(range(2, 18, 2))
    ladder = sizes.ladder(FINE, sizes.SizeRule(max_layers=16), LENGTHS)
    assert [s.params for s in ladder] == sorted(s.params for s in ladder)
    runs = sizes.isoflop_runs(ladder, [1e13, 1e14], tokens_per_step=8 * 128)
    for budget in (1e13, 1e14):
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
