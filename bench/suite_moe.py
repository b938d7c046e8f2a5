"""Mixture of experts: train-step time of both dispatches against expert parallelism.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/suite_moe.py \
        [--batch 8] [--length 64] [--windows 5] [--window_s 2] [--max_steps 20] \
        [--skip_dense] [--quick] [--out FILE.json]

The small MoE (`gin/models/moe/small.gin` with `gin/runs/pretrain.gin`'s byte vocabulary)
on 8 host devices, on the meshes (data, fsdp, tensor, expert) (8,1,1,1), (4,1,1,2),
(2,1,1,4) and (1,1,1,8), each with `MoEConfig.dispatch` 'dropless' and 'capacity'
(capacity factor 2.0; above EP 1 both with the buffers sent by all-to-all and with the
expert weights gathered instead), and a dense decoder of the same shape whose MLP is as wide as what
a token runs (its routed and shared experts) on (8,1,1). Each row's jitted train step is
compiled, its collectives read from the optimized HLO, then timed as bench/step_time.py
times it (warm-up, windows of steps, each step's loss read one step behind), the rows'
windows interleaved round after round so that machine load hits every row alike. A
window is about --window_s seconds of the row's warm-up step time, 2 to --max_steps
steps. --quick: batch 8 x 32, 2 windows of about 0.5 s, to check that the suite runs.
"""

import dataclasses
import time

import harness
import markdown

TITLE = "Mixture of experts: dispatch and expert parallelism (8 host devices)"
DEVICES = 8
GIN_FILES = ["models/moe/small.gin", "runs/pretrain.gin"]
EXPERT_PARALLELISM = (1, 2, 4, 8)
DISPATCHES = ("dropless", "capacity")
DEFAULT_DISPATCH = "dropless"  # MoEConfig.dispatch's default
CAPACITY_FACTOR = 2.0
DROPPED_GOAL = 0.01  # the two dispatches then compute nearly the same step
REFERENCE = "dropless EP=1"
DENSE_MESH = (8, 1, 1)
WARMUP_STEPS = 3
COLLECTIVES = ("all-to-all", "all-gather", "reduce-scatter", "all-reduce",
               "collective-permute")
QUICK = {"batch": 8, "length": 32, "windows": 2, "window_s": 0.5}


def add_arguments(parser) -> None:
    parser.add_argument("--batch", type=int, default=8, help="rows per step (a multiple of 8)")
    parser.add_argument("--length", type=int, default=64, help="tokens per row")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per row")
    parser.add_argument("--window_s", type=float, default=2.0,
                        help="about this many seconds of steps per window (at least 2 steps)")
    parser.add_argument("--max_steps", type=int, default=20, help="most steps per window")
    parser.add_argument("--skip_dense", action="store_true", help="leave out the dense row")
    parser.add_argument("--quick", action="store_true",
                        help="a reduced run: " + ", ".join(f"--{k} {v}" for k, v in QUICK.items()))


def _rows(skip_dense: bool) -> list[dict]:
    rows = [{"name": f"{dispatch} EP={ep}", "dispatch": dispatch, "expert_parallelism": ep,
             "mesh_shape": [8 // ep, 1, 1, ep], "all_to_all": dispatch == "capacity"}
            for dispatch in DISPATCHES for ep in EXPERT_PARALLELISM]
    rows += [{"name": f"capacity gathered EP={ep}", "dispatch": "capacity",
              "expert_parallelism": ep, "mesh_shape": [8 // ep, 1, 1, ep], "all_to_all": False}
             for ep in EXPERT_PARALLELISM[1:]]
    if not skip_dense:
        rows.append({"name": "dense", "dispatch": None, "expert_parallelism": None,
                     "mesh_shape": list(DENSE_MESH), "all_to_all": False})
    return rows


def dense_twin(cfg):
    """The dense decoder of an MoE config's shape, its MLP as wide as a token's experts."""
    from t5x_lite.models.decoder.config import DecoderConfig
    shared = {field.name: getattr(cfg, field.name) for field in dataclasses.fields(DecoderConfig)}
    width = (cfg.experts_per_token + cfg.num_shared_experts) * cfg.expert_mlp_dim
    return DecoderConfig(**{**shared, "mlp_dim": width})


def _setups(args, rows: list[dict]) -> list:
    """The trainer's setup of each row, from the gin config parsed once (as `t5x_lite
    plan` parses it) with the row's dispatch and mesh; gin is cleared before and after."""
    import gin

    from t5x_lite.analysis import aot
    from t5x_lite.config import gin_config
    from t5x_lite.config.configurables import register_configurables
    from t5x_lite.parallel import partitioning
    bindings = [f"BATCH_SIZE = {args.batch}",
                f"TASK_FEATURE_LENGTHS = {{'targets': {args.length}}}",
                f"MoEConfig.capacity_factor = {CAPACITY_FACTOR}"]
    gin.clear_config()
    register_configurables()
    gin_config.parse(GIN_FILES, bindings)
    gin_config.bind_unset_macros(aot.PLACEHOLDER_MACROS)
    try:
        train = aot.train_bindings()
        moe = train["model_config"]
        setups = []
        for row in rows:
            cfg = (dataclasses.replace(moe, dispatch=row["dispatch"],
                                       expert_all_to_all=row["all_to_all"])
                   if row["dispatch"] else dense_twin(moe))
            mesh = partitioning.create_mesh(row["mesh_shape"])
            setups.append(aot.build_setup({**train, "model_config": cfg}, mesh))
        return setups
    finally:
        gin.clear_config()


class _Run:
    """One row's compiled step, live state and timings."""

    def __init__(self, row: dict, setup):
        import jax

        import step_time
        from t5x_lite.analysis import hlo_stats
        from t5x_lite.parallel import partitioning
        from t5x_lite.train.state import init_state
        self.row, self.setup, self.position, self.previous = row, setup, 0, None
        self.seconds, self.dropped, self.steps_per_window, self.loss = [], [], 2, None
        with partitioning.activation_sharding(setup.mesh, setup.activation_rules):
            self.state = init_state(setup.spec, setup.optimizer, setup.shardings, seed=0)
            arrays = step_time.fixed_batch(setup.global_batch_size, setup.sequence_length,
                                           setup.cfg.vocab_size)
            self.batch = {key: jax.device_put(value, setup.batch_shardings[key])
                          for key, value in arrays.items()}
            start = time.perf_counter()
            self.step = setup.train_step().lower(self.state, self.batch, 0).compile()
            self.compile_s = time.perf_counter() - start
        self.stats = hlo_stats.analyze(self.step.as_text(), setup.mesh.size)

    def run(self, steps: int) -> float:
        """Seconds per step over `steps` steps, each step's loss (and dropped fraction)
        read one step behind."""
        import jax
        start = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch, self.position)
            self.position += 1
            self._read(self.previous)
            self.previous = metrics
        jax.block_until_ready(metrics)
        return (time.perf_counter() - start) / steps

    def _read(self, metrics) -> None:
        if metrics is None:
            return
        self.loss = float(metrics["loss"])
        if "dropped_fraction" in metrics["aux"]:
            self.dropped.append(float(metrics["aux"]["dropped_fraction"]))

    def warm_up(self, window_s: float, max_steps: int) -> None:
        step_s = self.run(WARMUP_STEPS)
        self.steps_per_window = max(2, min(max_steps, round(window_s / step_s)))
        self.dropped = []  # from the first timed step on (read one step behind)


def _time(runs: list[_Run], windows: int) -> None:
    """Windows of every row in turn, round after round, each round from the next row."""
    for round_index in range(windows):
        start = round_index % len(runs)
        for run in runs[start:] + runs[:start]:
            run.seconds.append(run.run(run.steps_per_window))


def _row_result(run: _Run) -> dict:
    seconds = sorted(run.seconds)
    median = seconds[len(seconds) // 2]
    setup, stats = run.setup, run.stats
    config_flops = setup.flops_per_token * setup.tokens_per_step / setup.mesh.size
    return {**run.row, "compile_s": run.compile_s, "steps_per_window": run.steps_per_window,
            "windows_ms": [1000 * s for s in seconds], "median_ms": 1000 * median,
            "fastest_ms": 1000 * seconds[0],
            "tokens_per_second": setup.tokens_per_step / median,
            "last_loss_read": run.loss, "steps_run": run.position,
            "dropped_fraction": sum(run.dropped) / len(run.dropped) if run.dropped else None,
            "dropped_fraction_max": max(run.dropped) if run.dropped else None,
            "active_params": setup.spec.family.param_count(setup.cfg, active=True),
            "compiled_matmul_over_config": stats.matmul_flops / config_flops,
            "collectives": {kind: {"count": stats.collectives[kind].count,
                                   "result_bytes": stats.collectives[kind].result_bytes,
                                   "wire_bytes": stats.collectives[kind].wire_bytes}
                            for kind in COLLECTIVES}}


def _fastest(rows: list[dict], dispatch: str) -> dict:
    return min((row for row in rows if row["dispatch"] == dispatch),
               key=lambda row: row["median_ms"])


def _targets(rows: list[dict]) -> list[dict]:
    best = min((_fastest(rows, dispatch) for dispatch in DISPATCHES),
               key=lambda row: row["median_ms"])
    dropped = max(row["dropped_fraction"] for row in rows if row["dispatch"] == "capacity")
    return [harness.target("fastest MoE row (median step)", best["name"],
                           f"the default dispatch ('{DEFAULT_DISPATCH}') is the faster",
                           best["dispatch"] == DEFAULT_DISPATCH),
            harness.target(f"capacity dispatch at factor {CAPACITY_FACTOR}: assignments "
                           "dropped in the timed steps (worst row)", round(dropped, 5),
                           f"<= {DROPPED_GOAL:.0%}", dropped <= DROPPED_GOAL),
            _exchange_target(rows)]


def _exchange_target(rows: list[dict]) -> dict:
    """Capacity buffers by all-to-all (`expert_all_to_all`, on by default) against the
    expert weights gathered, at each expert parallelism above 1."""
    def median(ep, all_to_all):
        return next(row["median_ms"] for row in rows if row["dispatch"] == "capacity"
                    and row["expert_parallelism"] == ep and row["all_to_all"] == all_to_all)
    ratios = {ep: median(ep, True) / median(ep, False) for ep in EXPERT_PARALLELISM[1:]}
    shown = ", ".join(f"EP={ep}: {ratio:.2f}" for ep, ratio in ratios.items())
    return harness.target("capacity dispatch, all-to-all / gathered weights (median step)",
                          shown, "below 1 at every EP > 1 (all-to-all is the default)",
                          all(ratio < 1 for ratio in ratios.values()))


def measure(args) -> dict:
    import jax
    if len(jax.devices()) < DEVICES:
        raise harness.BenchError(f"needs {DEVICES} host devices: set XLA_FLAGS="
                                 f"--xla_force_host_platform_device_count={DEVICES}")
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    rows = _rows(args.skip_dense)
    runs = [_Run(row, setup) for row, setup in zip(rows, _setups(args, rows))]
    for run in runs:
        run.warm_up(args.window_s, args.max_steps)
    _time(runs, args.windows)
    results = [_row_result(run) for run in runs]
    reference = next(row for row in results if row["name"] == REFERENCE)
    for row in results:
        row["over_reference"] = row["median_ms"] / reference["median_ms"]
    return {"gin_files": GIN_FILES, "batch": args.batch, "length": args.length,
            "windows": args.windows, "window_s": args.window_s, "quick": args.quick,
            "capacity_factor": CAPACITY_FACTOR, "model": _model(runs[0].setup.cfg),
            "versions": harness.versions("flax"), "rows": results,
            "targets": _targets(results)}


def _model(cfg) -> dict:
    fields = ("num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim",
              "vocab_size", "num_experts", "experts_per_token", "expert_mlp_dim",
              "num_shared_experts", "dtype", "scan_layers")
    return {name: getattr(cfg, name) for name in fields}


COLUMNS = ("row", "mesh (d, f, t, e)", "median ms", "fastest ms", "/ dropless EP=1",
           "tokens/s", "dropped", "matmul FLOPs / config", "all-to-all MB", "all-gather MB",
           "reduce-scatter MB", "all-reduce MB", "permute MB")


def _mb(row: dict, kind: str) -> str:
    return f"{row['collectives'][kind]['result_bytes'] / 1e6:,.2f}"


def _table(rows: list[dict]) -> str:
    return markdown.table(COLUMNS, [
        (row["name"], ",".join(str(n) for n in row["mesh_shape"]),
         markdown.number(row["median_ms"], 1), markdown.number(row["fastest_ms"], 1),
         f"{row['over_reference']:.2f}", markdown.number(row["tokens_per_second"]),
         "—" if row["dropped_fraction"] is None else f"{row['dropped_fraction']:.4f}",
         f"{row['compiled_matmul_over_config']:.1f}",
         *(_mb(row, kind) for kind in COLLECTIVES)) for row in rows])


def _verdict(result: dict) -> str:
    rows = result["rows"]
    best = {dispatch: _fastest(rows, dispatch) for dispatch in DISPATCHES}
    faster = min(best.values(), key=lambda row: row["median_ms"])
    slower = max(best.values(), key=lambda row: row["median_ms"])
    is_default = "is" if faster["dispatch"] == DEFAULT_DISPATCH else "is not"
    return (f"Faster: '{faster['dispatch']}' at EP={faster['expert_parallelism']} "
            f"({faster['median_ms']:,.1f} ms, {faster['over_reference']:.2f}x the dropless "
            f"EP=1 row); '{slower['dispatch']}' is fastest at EP="
            f"{slower['expert_parallelism']} ({slower['median_ms']:,.1f} ms, "
            f"{slower['median_ms'] / faster['median_ms']:.2f}x that). Goal: whichever "
            f"dispatch is faster is the default; `MoEConfig.dispatch` defaults to "
            f"'{DEFAULT_DISPATCH}', which {is_default} the faster one here.")


def _setting(result: dict) -> str:
    model = result["model"]
    dense = next((row for row in result["rows"] if row["dispatch"] is None), None)
    width = (model["experts_per_token"] + model["num_shared_experts"]) * model["expert_mlp_dim"]
    files = " + ".join(f"`{name}`" for name in result["gin_files"])
    return (f"Model: {files}: {model['num_layers']} layers, "
            f"width {model['embed_dim']}, {model['num_experts']} experts of width "
            f"{model['expert_mlp_dim']}, {model['experts_per_token']} per token, "
            f"{model['num_shared_experts']} shared, vocabulary {model['vocab_size']}, "
            f"{model['dtype']}, scanned layers; batch {result['batch']} x {result['length']} "
            f"tokens, AdamW; capacity factor {result['capacity_factor']}."
            + (f" dense: the same decoder with one MLP of width {width} (what a token runs), "
               f"{dense['active_params']:,} parameters." if dense else "")
            + (" Quick run (`--quick`): too short to compare rows." if result["quick"] else ""))


DEFINITIONS = """\
- Step time: the jitted train step alone on a fixed synthetic batch, after 3 warm-up
  steps; each row runs its windows of steps in turn with the others (round after round),
  each step's loss read one step behind as the trainer does. median and fastest are over
  the row's windows; / dropless EP=1 is the ratio of medians. tokens/s: batch x length /
  median.
- EP: expert parallelism, the mesh's `expert` axis. Expert weights shard over it; the
  batch shards over data x expert, so every row splits its batch 8 ways.
- dropped: the mean `dropped_fraction` of the timed steps (the largest is in the JSON);
  dropless drops nothing by construction. The capacity buffers have a fixed size, so
  drops do not change the step's time, only how far it computes what dropless does.
- matmul FLOPs / config: the compiled step's matmul FLOPs per device (`hlo_stats`, loops
  times their trip counts) over the config's training FLOPs per device (the family's
  `flops_per_token` x tokens / 8). Above 1: work the devices repeat, pad or mask. On CPU
  `jax.lax.ragged_dot` compiles to one dense matmul against every expert's weights (the
  input masked per group): E times the FLOPs of the grouped matmul. Capacity buffers
  hold capacity_factor x the mean load per expert, empty slots included.
- Exchange: the capacity rows send each device's expert buffers by all-to-all to the
  devices holding those experts (E / EP each) and the outputs back
  (`MoEConfig.expert_all_to_all`, the default); the "capacity gathered" rows, and the
  dropless ones, gather every expert's weights to each device instead and keep tokens
  where they are (XLA:CPU has no ragged all-to-all for dropless buffers).
- Collectives: the result bytes per device per step of each kind in the compiled step
  (`hlo_stats`, loops times their trip counts). The CPU compiler keeps gradient
  reductions as all-reduce where TPU and GPU compilers emit reduce-scatter. permute:
  collective-permute.
- Times are for 8 XLA host devices sharing this machine's cores: they rank the
  configurations on CPU, not on accelerators, where ragged_dot is a grouped kernel and
  collectives cross an interconnect."""


def section(result: dict) -> str:
    lines = [markdown.provenance(result, f"jax {result['versions']['jax']}."), "",
             _setting(result), "", _table(result["rows"]), "", _verdict(result), "",
             markdown.targets_line(result["targets"]), "", DEFINITIONS]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    harness.suite_main(__file__, TITLE, add_arguments, measure)
