"""The pretraining loop: restore or init, then steps, metrics, eval and checkpoints."""

import dataclasses
import functools

import gin
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from t5x_lite import storage
from t5x_lite.observe import metrics as metrics_lib
from t5x_lite.parallel import partitioning
from t5x_lite.checkpoints.manager import CheckpointConfig, Checkpointer, restore_params
from t5x_lite.checkpoints.record import CheckpointRecord, DataRecord
from t5x_lite.resilience.divergence import DivergenceConfig
from t5x_lite.errors import ConfigError
from t5x_lite.resilience.faults import FaultInjector
from t5x_lite.observe.goodput import Goodput
from t5x_lite.models import family as family_lib
from t5x_lite.resilience.preemption import Preempted, PreemptionWatch
from t5x_lite.observe.profiler import ProfileConfig, StepProfiler
from t5x_lite.resilience.recovery import DivergenceLadder, RecoveryLog, Rollback
from t5x_lite.train.setup import build_setup, check_batch_layout
from t5x_lite.models.spec import ModelSpec
from t5x_lite.train.state import init_state
from t5x_lite.resilience.watchdog import Watchdog, WatchdogConfig


@dataclasses.dataclass
class Run:
    """What the loop needs, built once from the config."""

    model_dir: epath.Path
    spec: ModelSpec
    mesh: jax.sharding.Mesh
    shardings: dict
    batch_shardings: dict
    abstract: dict
    checkpointer: Checkpointer
    recovery: RecoveryLog
    goodput: Goodput
    data: DataRecord
    writer: metrics_lib.MetricsWriter | None = None
    row_offset: int = 0  # token-store rows consumed beyond data position x batch size
    window: list[int] | None = None  # the window cursor of the last batch read, if any


def _global_batch(local_batch: dict, shardings: dict) -> dict:
    """The model's features (the keys of `shardings`) of this process's rows, as global
    arrays."""
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(local_batch[key]))
            for key, sharding in shardings.items()}


def _restore_or_init(run: Run, initial_state, resume_config, data):
    """(state, data position, origin, data config): latest in MODEL_DIR, else
    `initial_state()`. `resume_config(step, position_unit)` is the data config that
    continues a checkpoint; it raises if the checkpoint's data position means something
    else under this config."""
    with run.goodput.spend("restore"):
        restored = run.checkpointer.restore_latest(run.abstract, run.shardings)
    if restored is not None:
        step, state, meta = restored
        record = CheckpointRecord.from_json(meta)
        data = resume_config(step, record.data.position_unit())
        run.row_offset = record.row_offset(data.global_batch_size)
        run.window = record.data_window
        return state, record.data_position, f"restored step {step}", data
    state, origin = initial_state()
    return state, 0, origin, data


def _initial_state(run: Run, optimizer, seed: int, initial_checkpoint_path):
    """(state, origin) at step 0: params from the initial checkpoint, else a fresh init."""
    if initial_checkpoint_path:
        with run.goodput.spend("restore"):
            params = restore_params(initial_checkpoint_path, run.abstract["params"],
                                    run.shardings["params"])
        state = init_state(run.spec, optimizer, run.shardings, seed, params=params)
        return state, f"initialized params from {initial_checkpoint_path}"
    return init_state(run.spec, optimizer, run.shardings, seed), "initialized from scratch"


def _evaluate(eval_step, params, eval_batches) -> float:
    loss_sum, weight_sum = 0.0, 0.0
    for batch in eval_batches:
        batch_loss, batch_weight = jax.device_get(eval_step(params, batch))
        loss_sum, weight_sum = loss_sum + float(batch_loss), weight_sum + float(batch_weight)
    return loss_sum / max(weight_sum, 1.0)


def _record(cfg, data_position: int, data: DataRecord = DataRecord(), row_offset: int = 0,
            window: list[int] | None = None) -> dict:
    """A checkpoint's record (meta), as JSON."""
    rows = row_offset + data_position * data.global_batch_size if data.stream else None
    return CheckpointRecord(family_lib.for_config(cfg).name, dataclasses.asdict(cfg),
                            data_position, data, gin.config_str(), data_rows=rows,
                            data_window=window).to_json()


def _data_record(data, vocabulary, stream: dict | None) -> DataRecord:
    return DataRecord(data.mixture_or_task_name, dict(data.task_feature_lengths),
                      data.global_batch_size,
                      {"type": type(vocabulary).__name__, "vocab_size": vocabulary.vocab_size,
                       "eos_id": vocabulary.eos_id, "pad_id": vocabulary.pad_id}, stream)


@gin.configurable
def train(model_dir: str = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          model_config=None, data=gin.REQUIRED,
          mesh_shape=(-1, 1, 1), dcn_mesh_shape=None,
          initial_checkpoint_path: str | None = None, seed: int = 0,
          num_microbatches: int = 1, log_every: int = 10, eval_every: int | None = None,
          eval_steps: int = 10, task_eval=None,
          task_eval_every: int | None = None,
          checkpoint: CheckpointConfig = CheckpointConfig(),
          peak_flops_per_device: float | None = None) -> dict:
    """Trains `model_config` (a model family's config; None: the default family's) until
    `train_steps`; returns the last logged metrics.

    Every `eval_every` steps the loss on `eval_steps` validation batches is logged; every
    `task_eval_every` steps the seqio evaluation of `task_eval` (decoding, metrics) runs.
    """
    # TensorFlow loads only on the data path.
    from t5x_lite.inference import evaluation
    from t5x_lite.pipeline import data_position, input_pipeline
    from t5x_lite.pipeline.example_rows import WindowCursor

    goodput = Goodput()
    # Bad input is refused before anything is written under MODEL_DIR.
    model_dir = storage.check_model_dir(model_dir)
    _check_train_steps(train_steps)
    if model_config is None:
        model_config = family_lib.default_config()
    family = family_lib.for_config(model_config)
    data = input_pipeline.for_family(data, family)
    input_pipeline.validate(data, jax.process_index(), jax.process_count())
    vocab = input_pipeline.output_vocabulary(data.mixture_or_task_name)
    mesh = partitioning.create_mesh(mesh_shape, dcn_mesh_shape=dcn_mesh_shape)
    setup = build_setup(family.resolve(model_config, vocab.vocab_size), data, num_microbatches,
                        mesh)
    check_batch_layout(setup)
    run = Run(model_dir, setup.spec, mesh, setup.shardings, setup.batch_shardings,
              setup.abstract,
              Checkpointer(model_dir, checkpoint, setup.divergence.rollback_margin),
              RecoveryLog(model_dir), goodput, _data_record(data, vocab, None))

    with partitioning.activation_sharding(mesh, setup.activation_rules):
        initial_state = functools.partial(_initial_state, run, setup.optimizer, seed,
                                          initial_checkpoint_path)
        state, position, origin, data = _restore_or_init(
            run, initial_state, functools.partial(data_position.resume_config, data,
                                                  model_dir=model_dir), data)
        run.data = _data_record(data, vocab, data_position.stream_identity(data))
        _write_config(model_dir)
        train_step = setup.train_step()
        eval_step = setup.eval_step()
        start_step = int(jax.device_get(state["step"]))
        furthest_step = metrics_lib.last_logged_step(model_dir)
        run.writer = metrics_lib.MetricsWriter(model_dir, train_steps, start_step)
        run.writer.message(f"{origin}; {family.param_count(setup.cfg):,} params; "
                           f"mesh {dict(mesh.shape)}; data position {position}")
        context = _LoopContext(
            train_step=train_step, eval_step=eval_step, train_steps=train_steps,
            log_every=log_every, eval_every=eval_every,
            tokens_per_step=setup.tokens_per_step,
            flops_per_token=setup.flops_per_token,
            peak_flops=metrics_lib.total_peak_flops(peak_flops_per_device),
            faults=setup.faults, divergence=setup.divergence, redo_until=furthest_step,
            initial_state=lambda: initial_state()[0],
            task_eval=task_eval, task_eval_every=task_eval_every,
            evaluator=evaluation.evaluator(task_eval, data.task_feature_lengths) if task_eval
            else None,
            batches_from=lambda start: input_pipeline.train_batches(
                data, start, jax.process_index(), jax.process_count(), family,
                row_offset=run.row_offset, cursor=WindowCursor.from_json(run.window)))
        eval_batches = [_global_batch(batch, setup.batch_shardings)
                        for batch in input_pipeline.eval_batches(
                            data, eval_steps, jax.process_index(), jax.process_count(), family)
                        ] if eval_every else []
        profiler = StepProfiler(ProfileConfig(), model_dir)
        try:
            with PreemptionWatch() as preemption, Watchdog(WatchdogConfig()) as watchdog:
                return _loop(run, context, state, position, eval_batches, preemption, watchdog,
                             profiler)
        finally:
            profiler.close()
            run.checkpointer.wait()
            run.checkpointer.close()
            run.writer.close()
            if jax.process_index() == 0:
                goodput.write(model_dir)


@dataclasses.dataclass(frozen=True)
class _LoopContext:
    train_step: object
    eval_step: object
    train_steps: int
    log_every: int
    eval_every: int | None
    tokens_per_step: int
    flops_per_token: float
    peak_flops: float
    faults: FaultInjector
    divergence: DivergenceConfig
    redo_until: int
    batches_from: object
    initial_state: object
    task_eval: object = None
    task_eval_every: int | None = None
    evaluator: object = None


def _loop(run: Run, ctx: _LoopContext, state, position: int, eval_batches,
          preemption: PreemptionWatch, watchdog: Watchdog, profiler: StepProfiler) -> dict:
    """Dispatches step N+1 before reading step N's metrics, so the host never stalls.

    An anomalous step N is known once step N+1 is in flight; if the ladder calls for a
    rollback, both are dropped. On a preemption notice the current step is saved, even
    off the interval, its metrics are written, and `Preempted` is raised.
    """
    step = int(jax.device_get(state["step"]))
    meter = _Throughput(ctx.tokens_per_step, run.goodput.outside_blocks)
    ladder = DivergenceLadder(ctx.divergence, run.recovery)
    batches, pending, logged = ctx.batches_from(position), None, {}
    run.goodput.start_steps(step)
    while step < ctx.train_steps:
        batch = _global_batch(next(batches), run.batch_shardings)
        if batches.cursor is not None:
            run.window = batches.cursor.to_json()
        profiler.before_step(step + 1)
        state, step_metrics = ctx.train_step(state, batch, np.int32(position))
        meter.start()  # after the first dispatch, which compiled the step
        step, position = step + 1, position + 1
        profiler.after_step(step, step_metrics)
        ctx.faults.maybe_hang(step, run.model_dir)
        run.goodput.step(step, ctx.redo_until)
        if pending is not None:
            rollback = ladder.observe(pending[0], int(jax.device_get(pending[1]["anomaly"])))
            meter.completed()
            if _should_log(pending[0], ctx):
                logged = _log(run, ctx, *pending, meter)
            if rollback:
                state, position, rolled_back_to = _roll_back(run, ctx, pending[0], rollback)
                run.goodput.roll_back(step, rolled_back_to)
                step, batches, pending = rolled_back_to, ctx.batches_from(position), None
                continue
        pending = (step, step_metrics)
        if _evaluation_due(ctx, step):
            _finish(step_metrics)
        with run.goodput.spend("evaluation"):
            _maybe_evaluate(run, ctx, step, state["params"], eval_batches)
        stop = preemption.should_stop()
        force_save = stop or step == ctx.train_steps
        if run.checkpointer.due(step, force_save):
            _finish(step_metrics)
        with run.goodput.spend("checkpointing"):
            _save_if_healthy(run, step, state, position, ladder, force=force_save)
            ctx.faults.maybe_corrupt_checkpoint(step, run.model_dir, run.checkpointer)
        ctx.faults.maybe_signal(step, run.model_dir)
        if stop:
            meter.completed()  # the save waited for it
            _log(run, ctx, *pending, meter)
            with run.goodput.spend("checkpointing"):
                run.checkpointer.wait()
            raise Preempted(step)
        watchdog.beat()
    if pending is not None:
        ladder.observe(pending[0], int(jax.device_get(pending[1]["anomaly"])))
        meter.completed()
        logged = _log(run, ctx, *pending, meter)
    return logged


def _finish(step_metrics) -> None:
    """Waits for the step outside the `Goodput.spend` block that would otherwise wait for it
    (an eval or a save reads the new state), so its compute stays on the tokens/s clock.
    Only where that block is due: the block would have synchronized anyway."""
    jax.block_until_ready(step_metrics)


def _due(step: int, every: int | None, ctx: _LoopContext) -> bool:
    return bool(every) and (step % every == 0 or step == ctx.train_steps)


def _evaluation_due(ctx: _LoopContext, step: int) -> bool:
    return _due(step, ctx.eval_every, ctx) or bool(ctx.task_eval) and _due(
        step, ctx.task_eval_every, ctx)


def _maybe_evaluate(run: Run, ctx: _LoopContext, step: int, params, eval_batches) -> None:
    if _due(step, ctx.eval_every, ctx):
        eval_loss = _evaluate(ctx.eval_step, params, eval_batches)
        run.writer.write(step, {"eval_loss": eval_loss})
        run.writer.message(f"step {step}: eval_loss {eval_loss:.4f}")
    if ctx.task_eval and _due(step, ctx.task_eval_every, ctx):
        from t5x_lite.inference import evaluation
        results = evaluation.evaluate(run.spec, params, run.mesh, ctx.task_eval, step,
                                      evaluator_=ctx.evaluator)
        evaluation.write_results(run.model_dir, step, results)
        for line in evaluation.summary_lines(step, results):
            run.writer.message(line)


@jax.jit
def _all_finite(params) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))


def _save_if_healthy(run: Run, step: int, state, position: int, ladder: DivergenceLadder,
                     force: bool) -> None:
    """Saves when due. A checkpoint with a non-finite parameter is never written, and
    the regular save waits while an anomaly streak is open (a forced one does not)."""
    if not run.checkpointer.due(step, force):
        return
    if ladder.streak_open and not force:
        run.recovery.record(step, "anomaly_streak_open", "checkpoint_deferred")
        return
    if not bool(jax.device_get(_all_finite(state["params"]))):
        run.recovery.record(step, "non_finite_params", "checkpoint_not_written")
        return
    run.checkpointer.save(step, state, _record(run.spec.cfg, position, run.data, run.row_offset,
                                               run.window), force=True)
    run.goodput.checkpointed(step)


def _roll_back(run: Run, ctx: _LoopContext, step: int, rollback: Rollback):
    """(state, data position, step) after returning to the checkpoint the ladder asks for,
    or to the initial state (step 0, data position 0) when there is no checkpoint yet."""
    with run.goodput.spend("restore"):
        run.checkpointer.wait()
        restored = run.checkpointer.restore_latest(run.abstract, run.shardings,
                                                   before=rollback.before)
    if restored is None:
        restored_step, state, position, target = 0, ctx.initial_state(), 0, "initial_state"
        run.row_offset, run.window = 0, None
    else:
        restored_step, state, meta = restored
        record = CheckpointRecord.from_json(meta)
        position, target = record.data_position, f"step_{restored_step}"
        run.row_offset = record.row_offset(run.data.global_batch_size)
        run.window = record.data_window
    if rollback.lower_lr:
        health = {**state["health"], "lr_scale": state["health"]["lr_scale"]
                  * ctx.divergence.lr_factor}
        state = {**state, "health": health}
    skipped = ctx.divergence.skip_batches
    action = "rollback_lower_lr" if rollback.lower_lr else "rollback"
    run.recovery.record(step, "repeated_anomalies", f"{action}_to_{target}",
                        batches_skipped=skipped)
    return state, position + skipped, restored_step


def _should_log(step: int, ctx: _LoopContext) -> bool:
    return step == 1 or step % ctx.log_every == 0


class _Throughput:
    """Tokens per second of completed steps between consecutive logged steps.

    The clock (`Goodput.outside_blocks`) stops during evaluation, checkpoint saves and
    restores. It starts once the loop's first step is dispatched, so the compile of that
    step is not in the first interval; a step counts once its metrics were fetched (the
    fetch waits for the step), and each measurement is taken right after such a fetch. So
    an interval holds the work of the steps it counts, and no step that is still running.
    """

    def __init__(self, tokens_per_step: int, clock):
        self.tokens_per_step, self.clock = tokens_per_step, clock
        self.since, self.steps = None, 0

    def start(self) -> None:
        if self.since is None:
            self.since = self.clock()

    def completed(self) -> None:
        self.steps += 1

    def tokens_per_second(self) -> float:
        now = self.clock()
        rate = self.steps * self.tokens_per_step / max(now - self.since, 1e-9)
        self.since, self.steps = now, 0
        return rate


def _log(run: Run, ctx: _LoopContext, step: int, step_metrics, meter: _Throughput) -> dict:
    values = jax.tree.map(float, jax.device_get(step_metrics))
    tokens_per_second = meter.tokens_per_second()
    scalars = {"loss": values["loss"], "learning_rate": values["learning_rate"],
               "grad_norm": values["grad_norm"], **values["aux"],
               "tokens_per_second": tokens_per_second,
               "mfu": tokens_per_second * ctx.flops_per_token / ctx.peak_flops}
    run.writer.write(step, scalars)
    run.writer.progress(step, scalars)
    return {"step": step, **scalars}


def _check_train_steps(train_steps: int) -> None:
    if isinstance(train_steps, bool) or not isinstance(train_steps, int) or train_steps < 1:
        raise ConfigError(f"TRAIN_STEPS={train_steps!r} (train.train_steps) must be a positive "
                          "step count, the step to train to: set TRAIN_STEPS to 1 or more.")


def _write_config(model_dir: epath.Path) -> None:
    """MODEL_DIR/config.gin: the operative gin config (process 0)."""
    if jax.process_index() == 0:
        storage.write_atomic(model_dir / "config.gin", gin.config_str())
