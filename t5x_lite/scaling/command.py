"""`t5x_lite scaling sweep`, the IsoFLOP sweep of the parsed gin config, and `scaling fit`,
the scaling laws of a sweep's finished runs."""

import dataclasses
import json
import os
from collections.abc import Sequence

import gin

from t5x_lite import storage
from t5x_lite.errors import ConfigError
from t5x_lite.models import family as family_lib
from t5x_lite.pipeline import input_pipeline
from t5x_lite.scaling import fit, sizes, sweep

DEFAULT_WARMUP_STEPS = 100  # create_schedule's own default


def _bound(name: str, default):
    try:
        return gin.query_parameter(name)
    except ValueError:
        return default


def planned_runs(budgets: Sequence[float], per_budget: int, span: float):
    """(base config, the runs) of the parsed config: its model resolved against its task,
    sized by the gin `SizeRule`, each budget's runs at its batch and row length."""
    bindings = gin.get_bindings("train")
    base = bindings.get("model_config") or family_lib.default_config()
    data = bindings.get("data")
    if data is None:
        raise ConfigError("the gin config binds no train.data; give a run file after the "
                          "model file (e.g. models/decoder/tiny.gin runs/pretrain.gin).")
    base = input_pipeline.resolve_vocab(base, data.mixture_or_task_name)
    lengths = dict(data.task_feature_lengths)
    ladder = sizes.ladder(base, sizes.SizeRule(), lengths,
                          max_params=sizes.size_range(max(budgets), span)[1])
    tokens_per_step = data.global_batch_size * sum(lengths.values())
    return base, sizes.isoflop_runs(ladder, budgets, tokens_per_step, per_budget, span)


def sweep_command(gin_files: Sequence[str], gin_bindings: Sequence[str],
                  budgets: Sequence[float], out_dir: str, per_budget: int, span: float) -> None:
    base, runs = planned_runs(budgets, per_budget, span)
    sweep.check_steps(runs)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "sweep.json"), "w") as f:
        json.dump({"gin_files": list(gin_files), "gin_bindings": list(gin_bindings),
                   "budgets": list(budgets),
                   "runs": [sweep.run_name(run) for run in runs]}, f, indent=1)
    warmup = _bound("create_schedule.warmup_steps", DEFAULT_WARMUP_STEPS)
    records = sweep.run_sweep(runs, out_dir, lambda run, model_dir: sweep.train_argv(
        gin_files, gin_bindings, base, run, os.path.abspath(model_dir), warmup))
    for entry in records:
        print(f"C={entry['budget']:.3g}  N={entry['params']:>12,}  D={entry['tokens']:>12,}  "
              f"eval loss {entry['eval_loss']:.4f}")


def fitted_runs(sweep_dir: str) -> list[fit.Run]:
    """The finished runs of a sweep as the fits take them, each at its budget's C (its
    steps spend the budget to within one step)."""
    if not os.path.isdir(sweep_dir):
        raise ConfigError(f"--sweep_dir={sweep_dir}: no such directory; give the --out of a "
                          "`t5x_lite scaling sweep`.")
    records = sweep.read_records(sweep_dir)
    if len(records) < 6:
        raise ConfigError(f"{sweep_dir} holds {len(records)} finished runs; a fit needs at "
                          "least 6 (2 budgets of 3 sizes): run or continue the sweep first.")
    return [fit.Run(N=r["params"], D=r["tokens"], C=r["budget"], loss=r["eval_loss"])
            for r in records]


def fit_report(runs: Sequence[fit.Run], bootstrap_samples: int) -> dict:
    """Approach 3 with bootstrap intervals, approach 2, and their optimal exponents."""
    law = fit.fit_law(runs)
    isoflop = fit.fit_isoflop(runs)
    return {"runs": len(runs),
            "approach_3": {**law.as_dict(), "optimal_exponent": law.optimal_exponent,
                           "intervals_90": fit.bootstrap(runs, law, bootstrap_samples)},
            "approach_2": {"a": isoflop.a, "b": isoflop.b, "G_N": isoflop.G_N,
                           "G_D": isoflop.G_D, "warnings": isoflop.warnings,
                           "minima": [dataclasses.asdict(m) for m in isoflop.minima]}}


def report_lines(report: dict) -> list[str]:
    law, iso = report["approach_3"], report["approach_2"]
    interval = law["intervals_90"]
    lines = [f"{report['runs']} runs; approach 3: L(N, D) = E + A / N^alpha + B / D^beta"]
    lines += [f"  {name:<16} {law[name]:>12.4g}   90% [{interval[name][0]:.4g}, "
              f"{interval[name][1]:.4g}]" for name in ("E", "A", "B", "alpha", "beta",
                                                       "optimal_exponent")]
    lines.append(f"approach 2: N* ~ C^{iso['a']:.3f}, D* ~ C^{iso['b']:.3f}; approach 3's "
                 f"a = beta / (alpha + beta) = {law['optimal_exponent']:.3f}")
    lines += [f"  C={m['C']:.3g}: N* {m['N_opt']:,.0f}, D* {m['D_opt']:,.0f}, loss "
              f"{m['loss_at_min']:.4f}" + (" (at the grid's edge)" if m["at_edge"] else "")
              for m in iso["minima"]]
    return lines + [f"warning: {warning}" for warning in iso["warnings"]]


def fit_command(sweep_dir: str, out: str | None, bootstrap_samples: int = 200) -> None:
    report = fit_report(fitted_runs(sweep_dir), bootstrap_samples)
    print("\n".join(report_lines(report)))
    path = out or os.path.join(sweep_dir, "fit.json")
    storage.write_atomic(path, json.dumps(report, indent=1))
    print(f"wrote {path}")
