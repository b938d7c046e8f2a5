"""The plan report: a JSON-ready dict built from a step analysis, and its text form."""

import dataclasses
import math

import jax

from t5x_lite.observe.chips import GIB, Chip
from t5x_lite.analysis.step_analysis import StepAnalysis
from t5x_lite.train.setup import TrainSetup

MEMORY_NOTE = ("Memory is XLA's buffer assignment for the CPU compile of the step, standing "
               "in for the chip's: the chip's compiler fuses, lays out and schedules "
               "differently, so expect it to differ (CPU may also keep bfloat16 work in "
               "float32).")
COMMUNICATION_NOTE = ("Communication is every collective in the compiled step, loops times "
                      "their trip counts; wire bytes assume ring algorithms, and the time "
                      "assumes nothing overlaps and every byte crosses the chip's "
                      "interconnect. The CPU compiler keeps gradient reductions as "
                      "all-reduce + slice where TPU and GPU compilers emit reduce-scatter "
                      "(about half the wire bytes), and axes over DCN are timed at the "
                      "interconnect's speed too.")
FLOPS_NOTE = ("Config FLOPs are the model family's flops_per_token (for the decoder 6 x matmul "
              "params + 12 L T N H attention; for the encoder-decoder each stack's matmuls "
              "over its own row's tokens, cross-attention included): the model FLOPs MFU "
              "counts. Compiled FLOPs are the step's matmuls "
              "with while loops times their trip counts; they also hold rematerialized "
              "forward work. XLA's cost_analysis counts each loop body once.")


_MODEL_FIELDS = ("embed_dim", "vocab_size", "dtype", "remat_policy", "scan_layers")


def _model(setup: TrainSetup) -> dict:
    cfg, family = setup.cfg, setup.spec.family
    key, feature = next(iter(setup.features.items()))
    rows = setup.batch_shardings[key].shard_shape((setup.global_batch_size, feature.length))[0]
    shape = {name: getattr(cfg, name, None) for name in _MODEL_FIELDS}
    stacks = family.stacks(cfg, setup.task_feature_lengths)
    return {"family": family.name, "params": family.param_count(cfg),
            "active_params": family.param_count(cfg, active=True), **shape,
            "stacks": {name: dataclasses.asdict(stack) for name, stack in stacks.items()},
            "sequence_length": setup.sequence_length,
            "global_batch_size": setup.global_batch_size, "rows_per_device": rows,
            "tokens_per_step": setup.tokens_per_step,
            "num_microbatches": setup.num_microbatches}


def _memory(analysis: StepAnalysis, chip: Chip) -> dict:
    return {"params_bytes": analysis.params_bytes, "optimizer_bytes": analysis.optimizer_bytes,
            "argument_bytes": analysis.argument_bytes, "output_bytes": analysis.output_bytes,
            "alias_bytes": analysis.alias_bytes, "temp_bytes": analysis.temp_bytes,
            "total_bytes": analysis.total_bytes, "hbm_bytes": chip.hbm_bytes,
            "fraction_of_hbm": analysis.total_bytes / chip.hbm_bytes,
            "fits": analysis.total_bytes <= chip.hbm_bytes, "note": MEMORY_NOTE}


def _flops(analysis: StepAnalysis) -> dict:
    devices = analysis.num_devices
    return {"config_per_device": analysis.config_flops,
            "config_total": analysis.config_flops * devices,
            "compiled_matmul_per_device": analysis.matmul_flops,
            "compiled_matmul_total": analysis.matmul_flops * devices,
            "config_over_compiled": analysis.flops_ratio,
            "xla_cost_analysis_loops_once_per_device": analysis.xla_flops_loops_once,
            "loop_trip_counts": analysis.loop_trip_counts, "note": FLOPS_NOTE}


def _communication(analysis: StepAnalysis, chip: Chip) -> dict:
    by_kind = {kind: dataclasses.asdict(traffic)
               for kind, traffic in analysis.collectives.items() if traffic.count}
    return {"by_kind": by_kind, "result_bytes": analysis.communication_bytes,
            "wire_bytes": analysis.wire_bytes,
            "seconds": analysis.wire_bytes / chip.interconnect_bytes_per_second,
            "note": COMMUNICATION_NOTE}


def _prediction(analysis: StepAnalysis, chip: Chip, mfu: float, comm_seconds: float) -> dict:
    step_seconds = analysis.config_flops / (chip.peak_flops * mfu)
    tokens_per_second = analysis.tokens_per_step / step_seconds
    return {"mfu": mfu, "step_seconds": step_seconds, "tokens_per_second": tokens_per_second,
            "tokens_per_second_per_device": tokens_per_second / analysis.num_devices,
            "hardware_flops_utilization": analysis.matmul_flops / (step_seconds * chip.peak_flops),
            "communication_over_step_time": comm_seconds / step_seconds}


def build(config_name: str, setup: TrainSetup, analysis: StepAnalysis, mesh_choice,
          chip: Chip, mfu: float) -> dict:
    communication = _communication(analysis, chip)
    return {
        "config": config_name,
        "model": _model(setup),
        "mesh": {"name": mesh_choice.name, "shape": dict(setup.mesh.shape),
                 "mesh_shape": list(mesh_choice.mesh_shape),
                 "dcn_mesh_shape": list(mesh_choice.dcn_mesh_shape or []) or None,
                 "devices": mesh_choice.num_devices, "simulated_on": "cpu"},
        "chip": {"name": chip.name, "hbm_bytes": chip.hbm_bytes, "peak_flops": chip.peak_flops,
                 "interconnect_bytes_per_second": chip.interconnect_bytes_per_second},
        "memory_per_device": _memory(analysis, chip),
        "flops_per_step": _flops(analysis),
        "communication_per_step_per_device": communication,
        "prediction": _prediction(analysis, chip, mfu, communication["seconds"]),
        "compile": {"lower_seconds": analysis.lower_seconds,
                    "compile_seconds": analysis.compile_seconds},
    }


def refusal_line(config_name: str, mesh_name: str, chip: Chip, needed_bytes: float,
                 state_bound: bool, model_config) -> str:
    """One line: what does not fit, by how much, and what to change."""
    what = ("params + optimizer state + float32 gradients alone need"
            if state_bound else "the train step needs")
    remat_policy = getattr(model_config, "remat_policy", "full")
    remat = ("" if remat_policy == "full" else
             f"set {type(model_config).__name__}.remat_policy='full', ")
    advice = ("shard them over more devices (raise fsdp in MESH_SHAPE) or use "
              "create_optimizer.name='adafactor'" if state_bound else
              f"raise fsdp in MESH_SHAPE, {remat}or lower BATCH_SIZE (train.num_microbatches "
              "splits a batch)")
    return (f"{config_name} does not fit {chip.name} on mesh {mesh_name}: {what} "
            f"{needed_bytes / GIB:.1f} GiB per device, {chip.name} has "
            f"{chip.hbm_bytes / GIB:.1f} GiB; {advice}.")


def _accumulation(num_microbatches: int) -> str:
    if num_microbatches == 1:
        return "no gradient accumulation"
    return f"gradients accumulated over {num_microbatches} microbatches"


def _gib(value: float) -> str:
    return f"{value / GIB:8.2f} GiB"


def _tera(value: float) -> str:
    return f"{value / 1e12:,.1f} TFLOP"


def _layers_text(stacks: dict) -> str:
    """'4 decoder layers', '24 encoder + 24 decoder layers'."""
    return " + ".join(f"{stack['layers']} {name}" for name, stack in stacks.items()) + " layers"


def _row_text(stacks: dict, sequence_length: int) -> str:
    """'640 tokens' for one stack; '(encoder 512 + decoder 114) tokens' for several."""
    if len(stacks) == 1:
        return f"{sequence_length} tokens"
    lengths = " + ".join(f"{name} {stack['row_length']}" for name, stack in stacks.items())
    return f"({lengths}) tokens"


def _params_text(model: dict) -> str:
    text = f"{model['params'] / 1e9:.2f}B params"
    if model["active_params"] != model["params"]:
        text += f", {model['active_params'] / 1e9:.2f}B active per token"
    return text


def _header_lines(report: dict) -> list[str]:
    model, mesh, chip = report["model"], report["mesh"], report["chip"]
    shape = " x ".join(f"{axis} {size}" for axis, size in mesh["shape"].items())
    return [
        f"plan: {report['config']} on {mesh['name']} ({chip['name']})",
        (f"model    {_params_text(model)} ({model['family']}), "
         f"{_layers_text(model['stacks'])}, width {model['embed_dim']}, vocab "
         f"{model['vocab_size']}; {model['dtype']} compute, remat "
         f"'{model['remat_policy']}', scan_layers={model['scan_layers']}"),
        (f"batch    {model['global_batch_size']} rows x "
         f"{_row_text(model['stacks'], model['sequence_length'])} = "
         f"{model['tokens_per_step']:,} tokens per step; {model['rows_per_device']} rows per "
         f"device; {_accumulation(model['num_microbatches'])}"),
        f"mesh     {shape} = {mesh['devices']} devices (simulated with CPU devices)",
        (f"chip     {chip['name']}: {chip['hbm_bytes'] / GIB:.0f} GiB HBM, "
         f"{chip['peak_flops'] / 1e12:.0f} TFLOP/s bf16 peak, "
         f"{chip['interconnect_bytes_per_second'] / 1e9:.0f} GB/s interconnect (one direction)"),
    ]


def _memory_lines(memory: dict) -> list[str]:
    return [
        "memory per device (CPU compiler's buffer assignment standing in for the chip's)",
        f"  params                {_gib(memory['params_bytes'])}",
        f"  optimizer state       {_gib(memory['optimizer_bytes'])}",
        (f"  activations + temps   {_gib(memory['temp_bytes'])}   (gradients, saved "
         "activations, workspace)"),
        (f"  total                 {_gib(memory['total_bytes'])}   of "
         f"{_gib(memory['hbm_bytes'])} HBM ({100 * memory['fraction_of_hbm']:.0f}%): fits"),
    ]


def _flops_lines(flops: dict) -> list[str]:
    return [
        "FLOPs per step",
        (f"  config (6N + attention)  {_tera(flops['config_per_device'])} per device, "
         f"{_tera(flops['config_total'])} total"),
        (f"  compiled matmuls         {_tera(flops['compiled_matmul_per_device'])} per device, "
         f"{_tera(flops['compiled_matmul_total'])} total (loop trip counts "
         f"{flops['loop_trip_counts'] or 'none'})"),
        f"  config / compiled        {flops['config_over_compiled']:.3f}",
        (f"  XLA cost_analysis        {_tera(flops['xla_cost_analysis_loops_once_per_device'])} "
         "per device (each loop body counted once)"),
    ]


def _communication_lines(comm: dict, bandwidth: float) -> list[str]:
    by_kind = [(f"  {kind:<19} {t['count']:6.0f} ops {t['result_bytes'] / 1e9:9.2f} GB results "
                f"{t['wire_bytes'] / 1e9:9.2f} GB on the wire")
               for kind, t in comm["by_kind"].items()]
    return [
        "communication per step per device",
        *by_kind,
        (f"  total               {comm['result_bytes'] / 1e9:14.2f} GB results "
         f"{comm['wire_bytes'] / 1e9:9.2f} GB on the wire: {comm['seconds']:.3f} s at "
         f"{bandwidth / 1e9:.0f} GB/s"),
    ]


def _prediction_lines(prediction: dict, compile_times: dict) -> list[str]:
    return [
        f"prediction at MFU {100 * prediction['mfu']:.0f}%",
        (f"  step time    {prediction['step_seconds']:.3f} s (hardware FLOP utilization "
         f"{100 * prediction['hardware_flops_utilization']:.0f}%; communication, if not "
         f"overlapped, adds {100 * prediction['communication_over_step_time']:.0f}%)"),
        (f"  tokens/s     {prediction['tokens_per_second']:,.0f} total, "
         f"{prediction['tokens_per_second_per_device']:,.0f} per device"),
        (f"  compile      lowered in {compile_times['lower_seconds']:.1f} s, compiled in "
         f"{compile_times['compile_seconds']:.1f} s"),
    ]


def format_text(report: dict) -> str:
    sections = [
        _header_lines(report),
        _memory_lines(report["memory_per_device"]),
        _flops_lines(report["flops_per_step"]),
        _communication_lines(report["communication_per_step_per_device"],
                             report["chip"]["interconnect_bytes_per_second"]),
        _prediction_lines(report["prediction"], report["compile"]),
        [report["memory_per_device"]["note"]],
    ]
    return "\n\n".join("\n".join(lines) for lines in sections)
