"""Ahead-of-time planning: per-device bytes under FSDP, the config's FLOPs against the
compiled step's, HLO loop and collective accounting, and the `plan` command."""

import functools
import json
import sys

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from t5x_lite.analysis import aot, hlo_stats, plan, plan_report, step_analysis
from t5x_lite.observe import chips
from t5x_lite.config import gin_config
from t5x_lite.config.configurables import register_configurables
from t5x_lite.parallel import partitioning
from t5x_lite.errors import ConfigError
from t5x_lite.models.encdec import ENCDEC
from tests.cli import assert_one_line_error, run_cli

# Every parameter of these models has an `embed` dimension that 8 divides.
TINY = ["models/decoder/tiny.gin", "runs/pretrain.gin"]
SMALL = ["models/decoder/small.gin", "runs/pretrain.gin"]
SHORT_BATCH = ["TASK_FEATURE_LENGTHS = {'targets': 64}", "BATCH_SIZE = 16"]


def parse_for_plan(gin_files: list[str], bindings: list[str]) -> None:
    """Parses the config afresh as `t5x_lite plan` does."""
    gin.clear_config()
    register_configurables()
    gin_config.parse(gin_files, bindings)
    gin_config.bind_unset_macros(aot.PLACEHOLDER_MACROS)


def setup_for(gin_files: list[str], bindings: list[str], mesh_shape: tuple):
    """The trainer's setup for the config on a mesh; gin is cleared after."""
    parse_for_plan(gin_files, bindings)
    try:
        return aot.setup_from_gin(partitioning.create_mesh(mesh_shape))
    finally:
        gin.clear_config()


@functools.cache
def _tiny_analysis(mesh_shape: tuple, scan_layers: bool) -> step_analysis.StepAnalysis:
    bindings = [*SHORT_BATCH, f"DecoderConfig.scan_layers = {scan_layers}"]
    setup = setup_for(TINY, bindings, mesh_shape)
    return step_analysis.analyze(setup, aot.compile_train_step(setup))


def test_params_and_optimizer_bytes_shrink_eightfold_with_fsdp_8():
    by_mesh = {shape: aot.state_bytes(setup_for(SMALL, SHORT_BATCH, shape))
               for shape in [(8, 1, 1), (1, 8, 1)]}
    for key in ("params", "optimizer"):
        assert by_mesh[(1, 8, 1)][key] == pytest.approx(by_mesh[(8, 1, 1)][key] / 8, rel=0.05)


def test_compiled_step_arguments_shrink_eightfold_with_fsdp_8():
    replicated, sharded = _tiny_analysis((8, 1, 1), True), _tiny_analysis((1, 8, 1), True)
    for field in ("params_bytes", "optimizer_bytes", "argument_bytes"):
        assert getattr(sharded, field) == pytest.approx(getattr(replicated, field) / 8, rel=0.05)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_config_flops_match_the_compiled_matmuls(scan_layers):
    analysis = _tiny_analysis((1, 8, 1), scan_layers)
    assert analysis.flops_ratio == pytest.approx(1.0, abs=0.1)
    if scan_layers:  # forward and backward scans over the 4 layers
        assert analysis.loop_trip_counts == [4, 4]
        assert analysis.matmul_flops > 3 * analysis.matmul_flops_loops_once
    else:
        assert analysis.loop_trip_counts == []
        assert analysis.matmul_flops == analysis.matmul_flops_loops_once


def test_matmuls_in_a_loop_count_once_per_iteration():
    def five_matmuls(x_MK, w_KK):
        return jax.lax.scan(lambda x, _: (x @ w_KK, None), x_MK, None, length=5)[0]

    x_MK, w_KK = jnp.ones((16, 32)), jnp.ones((32, 32))
    compiled = jax.jit(five_matmuls).lower(x_MK, w_KK).compile()
    stats = hlo_stats.analyze(compiled.as_text(), num_devices=1)
    assert stats.matmul_flops == 5 * 2 * 16 * 32 * 32
    assert stats.loop_trip_counts == [5]


def test_an_all_reduce_over_eight_devices_is_counted():
    mesh = jax.make_mesh((8,), ("data",))
    x_N = jax.ShapeDtypeStruct((8 * 1024,), jnp.float32,
                               sharding=NamedSharding(mesh, PartitionSpec("data")))
    compiled = jax.jit(lambda x: jnp.sum(x)).lower(x_N).compile()
    traffic = hlo_stats.analyze(compiled.as_text(), num_devices=8).collectives["all-reduce"]
    assert traffic.count == 1
    assert traffic.result_bytes == 4
    assert traffic.wire_bytes == pytest.approx(4 * 2 * 7 / 8)


def test_mesh_configs_give_shapes_devices_and_chips():
    v5p = plan.resolve_mesh("v5p-128", {})
    assert (v5p.full_shape, v5p.num_devices, plan.resolve_chip(None, v5p).name) == (
        (2, 32, 1), 64, "v5p")
    h100x32 = plan.resolve_mesh("h100x32", {})
    assert (h100x32.full_shape, h100x32.num_devices) == ((4, 8, 1), 32)
    assert plan.resolve_mesh("1,8,1", {}).num_devices == 8
    assert plan.resolve_chip(None, plan.resolve_mesh("2xv5e-256", {})).name == "v5e"
    with pytest.raises(ConfigError, match="--chip"):
        plan.resolve_chip(None, plan.resolve_mesh("cpu-8", {}))
    with pytest.raises(ConfigError, match="no such mesh config"):
        plan.resolve_mesh("v9-1", {})
    from_gin = plan.resolve_mesh(None, {"mesh_shape": (1, 8, 1), "dcn_mesh_shape": (4, 1, 1)},
                                 ["runs/pretrain.gin", "meshes/h100x32.gin"])
    assert (from_gin.name, from_gin.num_devices) == ("h100x32", 32)


def test_plan_refuses_a_step_whose_temporaries_exceed_the_chip(monkeypatch):
    """State fits in 4 MiB per device; the compiled step (activations) does not."""
    tiny_chip = chips.Chip("h100", ("h100",), 4 * 2**20, 989e12, 450e9)
    monkeypatch.setattr(chips, "CHIPS", (tiny_chip, *chips.CHIPS))
    parse_for_plan(TINY, SHORT_BATCH)
    try:
        with pytest.raises(ConfigError, match="the train step needs .* GiB per device"):
            plan.plan(TINY, "1,8,1", "h100", 0.4)
    finally:
        gin.clear_config()


def test_plan_cli_refuses_7b_on_one_h100_in_one_line(tmp_path):
    output = tmp_path / "plan.json"
    result = run_cli([sys.executable, "-m", "t5x_lite", "plan", "--gin_file=models/decoder/7b.gin",
                      "--gin_file=runs/pretrain.gin", "--mesh=1,1,1", "--chip=h100",
                      f"--output={output}"], num_devices=1, timeout=300)
    assert_one_line_error(result, "plan", "7b.gin", "does not fit h100", "GiB per device",
                          "fsdp")
    assert not output.exists()


def test_plan_cli_prints_and_writes_the_report(tmp_path):
    output = tmp_path / "plan.json"
    result = run_cli([sys.executable, "-m", "t5x_lite", "plan", *[f"--gin_file={f}" for f in TINY],
                      "--gin.TASK_FEATURE_LENGTHS={'targets': 64}", "--gin.BATCH_SIZE=16",
                      "--mesh=1,8,1", "--chip=h100", f"--output={output}"], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for heading in ("memory per device", "FLOPs per step", "communication per step per device",
                    "prediction at MFU 40%", "standing in for the chip's"):
        assert heading in result.stdout
    report = json.loads(output.read_text())
    assert report["mesh"]["devices"] == 8 and report["chip"]["name"] == "h100"
    memory = report["memory_per_device"]
    assert memory["fits"] and 0 < memory["params_bytes"] < memory["total_bytes"]
    assert report["flops_per_step"]["config_over_compiled"] == pytest.approx(1.0, abs=0.1)
    assert report["communication_per_step_per_device"]["by_kind"]["all-gather"]["count"] > 0
    assert np.isfinite(report["prediction"]["tokens_per_second"])


# --- the encoder-decoder ---------------------------------------------------------------------

ENCDEC_TINY = ["models/encdec/tiny.gin", "runs/pretrain.gin"]
ENCDEC_LENGTHS = {"inputs": 64, "targets": 16}


def test_plan_of_an_encoder_decoder_counts_each_stack_over_its_own_rows():
    parse_for_plan(ENCDEC_TINY, [f"TASK_FEATURE_LENGTHS = {ENCDEC_LENGTHS}", "BATCH_SIZE = 16"])
    try:
        report = plan.plan(ENCDEC_TINY, "8,1,1", "h100", 0.4)
        cfg = aot.train_bindings()["model_config"].with_vocab(report["model"]["vocab_size"])
    finally:
        gin.clear_config()
    text = plan_report.format_text(report)
    assert "2 encoder + 2 decoder layers" in text
    assert "16 rows x (encoder 64 + decoder 16) tokens = 1,280 tokens per step" in text
    model = report["model"]
    assert model["family"] == "encdec" and model["stacks"] == {
        "encoder": {"layers": 2, "row_length": 64}, "decoder": {"layers": 2, "row_length": 16}}

    flops_per_row = ENCDEC.flops_per_token(cfg, ENCDEC_LENGTHS) * ENCDEC.tokens_per_row(
        ENCDEC_LENGTHS)
    flops = report["flops_per_step"]
    assert flops["config_total"] == pytest.approx(16 * flops_per_row, rel=1e-9)
    # The family's count (cross-attention, each stack over its own row) is what compiles:
    # leaving out the cross-attention keys and values alone would be 11% short here.
    assert flops["config_over_compiled"] == pytest.approx(1.0, abs=0.01)
    assert flops["loop_trip_counts"] == [2, 2, 2, 2]  # each stack's scan, forward and back


def test_plan_refuses_an_encoder_decoder_without_inputs_lengths():
    with pytest.raises(ConfigError, match="lengths of 'inputs' and 'targets'"):
        setup_for(ENCDEC_TINY, ["TASK_FEATURE_LENGTHS = {'targets': 64}"], (8, 1, 1))


def test_plan_cli_refuses_t5_xxl_on_a_v4_8_in_one_line(tmp_path):
    output = tmp_path / "plan.json"
    result = run_cli([sys.executable, "-m", "t5x_lite", "plan",
                      "--gin_file=models/encdec/xxl.gin", "--gin_file=runs/pretrain.gin",
                      "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 114}",
                      "--gin.EncDecConfig.vocab_size=32128", "--mesh=v4-8",
                      f"--output={output}"], timeout=300)
    assert_one_line_error(result, "plan", "xxl.gin", "does not fit v4 on mesh v4-8",
                          "alone need", "GiB per device", "fsdp")
    assert not output.exists()
