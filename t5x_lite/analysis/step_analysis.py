"""Per-device memory, FLOPs and communication of a compiled train step.

Memory: params and optimizer state come from the shardings' shard shapes; what the
step needs in all is XLA's buffer assignment (`memory_analysis()`): arguments plus
outputs minus the donated (aliased) bytes, plus temporaries (activations, gradients,
workspace). Compiled for CPU devices, that buffer assignment stands in for the chip's.

FLOPs: `cost_analysis()` counts each while-loop body once, whatever its trip count,
so a scanned model looks up to L times cheaper than it is. The matmul FLOPs that set
the step time are therefore read from the optimized HLO with the loops' known trip
counts applied (`hlo_stats`); XLA's own figure is kept beside them, labelled as such.
"""

import dataclasses

from t5x_lite.analysis import aot, hlo_stats
from t5x_lite.observe import metrics
from t5x_lite.train.setup import TrainSetup


@dataclasses.dataclass(frozen=True)
class StepAnalysis:
    """Figures per device per train step unless a name says otherwise."""

    num_devices: int
    tokens_per_step: int
    params_bytes: int
    optimizer_bytes: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    matmul_flops: float
    matmul_flops_loops_once: float
    xla_flops_loops_once: float
    config_flops: float
    collectives: dict
    loop_trip_counts: list
    lower_seconds: float
    compile_seconds: float

    @property
    def total_bytes(self) -> int:
        """What the step holds at its peak: live arguments, new outputs and temporaries."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    @property
    def flops_ratio(self) -> float:
        """Config accounting over the compiled step's matmul FLOPs (1.0: they agree)."""
        return self.config_flops / self.matmul_flops if self.matmul_flops else float("nan")

    @property
    def communication_bytes(self) -> float:
        return sum(c.result_bytes for c in self.collectives.values())

    @property
    def wire_bytes(self) -> float:
        return sum(c.wire_bytes for c in self.collectives.values())


def _cost_flops(compiled) -> float:
    costs = compiled.cost_analysis()
    costs = costs[0] if isinstance(costs, (list, tuple)) else costs
    return float(costs.get("flops", 0.0))


def config_flops_per_device(setup: TrainSetup) -> float:
    """The config's training FLOPs of one step (the family's `flops_per_token`), per device."""
    return setup.flops_per_token * setup.tokens_per_step / setup.mesh.size


def analyze(setup: TrainSetup, step: aot.CompiledStep) -> StepAnalysis:
    memory = step.compiled.memory_analysis()
    stats = hlo_stats.analyze(step.compiled.as_text(), setup.mesh.size)
    state = aot.state_bytes(setup)
    return StepAnalysis(
        num_devices=setup.mesh.size, tokens_per_step=setup.tokens_per_step,
        params_bytes=state["params"], optimizer_bytes=state["optimizer"],
        argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
        matmul_flops=stats.matmul_flops, matmul_flops_loops_once=stats.matmul_flops_loops_once,
        xla_flops_loops_once=_cost_flops(step.compiled),
        config_flops=config_flops_per_device(setup), collectives=stats.collectives,
        loop_trip_counts=stats.loop_trip_counts, lower_seconds=step.lower_seconds,
        compile_seconds=step.compile_seconds)
