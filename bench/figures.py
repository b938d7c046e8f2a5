"""Shakespeare suite figures from what each run leaves behind.

t5x_lite logs `tokens_per_second` over the interval since its previous logged
step, counting completed steps only. The first interval holds step 1 (its first
run, without the compile, which goodput.jsonl books as `compile`); intervals that
hold an eval or a checkpoint save are not training-only. Both are left out of the
medians.
"""

import ast
import dataclasses
import json
import pathlib
import statistics

from harness import BenchError


@dataclasses.dataclass(frozen=True)
class Interval:
    """Steps (first_step, last_step] between two logged records."""

    first_step: int
    last_step: int
    seconds: float
    tokens_per_second: float
    mfu: float

    @property
    def steps(self) -> int:
        return self.last_step - self.first_step


def read_jsonl(path: pathlib.Path) -> list[dict]:
    if not path.is_file():
        raise BenchError(f"no metrics file at {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_gin_bindings(path: pathlib.Path) -> dict[str, str]:
    """`name = value` lines of an operative gin config, with `%MACRO` values resolved."""
    bindings = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, value = (part.strip() for part in line.split("=", 1))
            bindings[name] = value
    return {name: _resolve_macro(value, bindings) for name, value in bindings.items()}


def _resolve_macro(value: str, bindings: dict[str, str]) -> str:
    while value.startswith("%") and value[1:] in bindings:
        value = bindings[value[1:]]
    return value


def gin_int(bindings: dict[str, str], name: str) -> int | None:
    if name not in bindings:
        raise BenchError(f"{name} is missing from the run's config.gin")
    value = ast.literal_eval(bindings[name])
    return None if value is None else int(value)


def tokens_per_step(bindings: dict[str, str]) -> int:
    batch_size = gin_int(bindings, "DataConfig.global_batch_size")
    lengths = ast.literal_eval(bindings["DataConfig.task_feature_lengths"])
    return batch_size * int(lengths["targets"])


def intervals(train_records: list[dict], step_tokens: int) -> list[Interval]:
    """The logged intervals in step order, starting from step 0."""
    result, previous_step = [], 0
    for record in sorted(train_records, key=lambda r: r["step"]):
        steps = record["step"] - previous_step
        seconds = steps * step_tokens / record["tokens_per_second"]
        result.append(Interval(previous_step, record["step"], seconds,
                               record["tokens_per_second"], record["mfu"]))
        previous_step = record["step"]
    return result


def event_steps(train_steps: int, every: int | None) -> set[int]:
    """Steps at which an every-N event (eval, checkpoint save) runs; the last step always."""
    steps = set(range(every, train_steps + 1, every)) if every else set()
    return steps | {train_steps}


def is_training_only(interval: Interval, events: set[int]) -> bool:
    """Not the compile interval, and no eval or save inside (first_step, last_step]."""
    return interval.first_step > 0 and not any(
        interval.first_step < step <= interval.last_step for step in events)


def t5x_lite_figures(model_dir: pathlib.Path) -> dict:
    """Throughput, compile time, MFU and eval loss of one t5x_lite run."""
    bindings = read_gin_bindings(model_dir / "config.gin")
    train_steps = gin_int(bindings, "train.train_steps")
    step_tokens = tokens_per_step(bindings)
    records = read_jsonl(model_dir / "metrics.jsonl")
    logged = intervals([r for r in records if "tokens_per_second" in r], step_tokens)
    evals = [r for r in records if "eval_loss" in r]
    events = (event_steps(train_steps, gin_int(bindings, "train.eval_every"))
              | event_steps(train_steps, gin_int(bindings, "CheckpointConfig.save_every")))
    clean = [i for i in logged if is_training_only(i, events)]
    if not clean or not evals or logged[0].last_step != 1:
        raise BenchError(f"too few logged steps in {model_dir / 'metrics.jsonl'} to measure "
                         "(need step 1, an eval and one interval without compile or eval); "
                         "use more --steps")
    median_rate = statistics.median(i.tokens_per_second for i in clean)
    loop_seconds = sum(i.seconds for i in logged)
    flops_per_token = _t5x_lite_flops_per_token(model_dir, bindings)
    return {
        "steps": train_steps,
        "tokens_per_step": step_tokens,
        "tokens_per_second_median": median_rate,
        "tokens_per_second_overall": (sum(i.steps for i in clean) * step_tokens
                                      / sum(i.seconds for i in clean)),
        "tokens_per_second_loop": train_steps * step_tokens / loop_seconds,
        "step_time_ms": 1000 * step_tokens / median_rate,
        "compile_s": _compile_seconds(model_dir),
        "loop_s": loop_seconds,
        "mfu": statistics.median(i.mfu for i in clean),
        "peak_flops_measured": clean[0].tokens_per_second * flops_per_token / clean[0].mfu,
        "flops_per_token": flops_per_token,
        "final_val_loss": evals[-1]["eval_loss"],
        "final_val_loss_step": evals[-1]["step"],
        "val_losses": {str(r["step"]): r["eval_loss"] for r in evals},
        "intervals_used": len(clean),
        "intervals_logged": len(logged),
    }


def _compile_seconds(model_dir: pathlib.Path) -> float:
    """The first batch and the dispatch of step 1, which compiles it (goodput `compile`)."""
    lines = (model_dir / "goodput.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["seconds"]["compile"]


def _t5x_lite_flops_per_token(model_dir: pathlib.Path, bindings: dict[str, str]) -> float:
    """The trainer's own FLOP accounting, for the resolved model config in the last checkpoint."""
    from t5x_lite.models.decoder import DECODER
    from t5x_lite.models.decoder.config import DecoderConfig

    metadata = sorted((model_dir / "checkpoints").glob("*/meta/metadata"),
                      key=lambda path: int(path.parts[-3]))
    if not metadata:
        raise BenchError(f"no checkpoint metadata under {model_dir / 'checkpoints'}")
    model_config = json.loads(metadata[-1].read_text())["model_config"]
    seq_len = ast.literal_eval(bindings["DataConfig.task_feature_lengths"])["targets"]
    return float(DECODER.flops_per_token(DecoderConfig(**model_config), {"targets": seq_len}))


def torch_constants(reference_path: pathlib.Path) -> dict[str, int]:
    """The module-level integer constants of the PyTorch reference (its model shape)."""
    constants = {}
    for node in ast.parse(reference_path.read_text()).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int)):
            constants[node.targets[0].id] = node.value.value
    return constants


def torch_flops_per_token(constants: dict[str, int]) -> float:
    """Same accounting as t5x_lite's: 6 x matmul params + 12 L T D for attention.

    The reference's blocks hold qkv (3 D^2), proj (D^2) and a 4D MLP (8 D^2); its
    output projection is the tied embedding (V D).
    """
    layers, width = constants["NUM_LAYERS"], constants["WIDTH"]
    matmul_params = layers * 12 * width**2 + constants["VOCAB_SIZE"] * width
    return 6 * matmul_params + 12 * layers * constants["CONTEXT"] * width


def torch_figures(summary: dict, flops_per_token: float, peak_flops: float | None) -> dict:
    """The reference's own summary, in the harness's names."""
    # Its summary does not name the batch; tokens per step = rate x mean step time.
    step_tokens = round(summary["tokens_per_second"] * summary["step_time_ms_mean"] / 1000)
    median_rate = 1000 * step_tokens / summary["step_time_ms_median"]
    return {
        "steps": summary["steps"],
        "tokens_per_step": step_tokens,
        "tokens_per_second_median": median_rate,
        "tokens_per_second_overall": summary["tokens_per_second"],
        "step_time_ms": summary["step_time_ms_median"],
        "compile_s": None,
        "mfu": median_rate * flops_per_token / peak_flops if peak_flops else None,
        "flops_per_token": flops_per_token,
        "final_val_loss": summary["final_val_loss"],
        "final_val_loss_step": summary["steps"],
        "val_losses": summary["val_losses"],
        "self_reported_peak_rss_mb": summary["peak_rss_mb"],
        "threads": summary["threads"],
    }
