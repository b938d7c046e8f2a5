"""Fitting scaling laws to finished runs: the parametric fit of the loss law (Chinchilla's
approach 3), IsoFLOP minima and their power laws (approach 2), and bootstrap intervals.
"""

import dataclasses
import itertools
import math

import numpy as np
import scipy.optimize

from t5x_lite.scaling.law import LossLaw

# Starts in (e, a, b, alpha, beta) = (log E, log A, log B, alpha, beta): Chinchilla's grid,
# 5 x 6 x 6 x 5 x 5 = 4500 points. The objective is evaluated at all of them at once and
# L-BFGS-B runs only from the NUM_REFINED best: on synthetic Chinchilla-like sweeps this
# finds the same optimum as minimising from every start, in a small fraction of the time.
CHINCHILLA_STARTS = np.array(list(itertools.product(
    (-1.0, -0.5, 0.0, 0.5, 1.0), (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    (0.0, 5.0, 10.0, 15.0, 20.0, 25.0), (0.0, 0.5, 1.0, 1.5, 2.0), (0.0, 0.5, 1.0, 1.5, 2.0))))
NUM_REFINED = 10
# The objective is ~1e-4 at the optimum, below scipy's default absolute tolerances.
_LBFGS_OPTIONS = {"ftol": 1e-13, "gtol": 1e-10, "maxiter": 1000}
SAME_BUDGET_RTOL = 0.01


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished run: parameters N, training tokens D, FLOPs C and its final eval loss."""

    N: float
    D: float
    C: float
    loss: float


def _log_columns(runs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log N, log D and log loss of `runs`, as arrays."""
    columns = np.array([(run.N, run.D, run.loss) for run in runs], dtype=float)
    return np.log(columns[:, 0]), np.log(columns[:, 1]), np.log(columns[:, 2])


def _huber(residual, delta):
    """Huber loss of each residual, and its derivative."""
    small = np.abs(residual) <= delta
    value = np.where(small, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta))
    return value, np.clip(residual, -delta, delta)


def _objective(theta, log_N, log_D, log_loss, delta):
    """Sum of Huber losses of the log-loss residuals, and its gradient in theta."""
    e, a, b, alpha, beta = theta
    terms = np.stack([a - alpha * log_N, b - beta * log_D, np.full_like(log_N, e)])
    top = terms.max(axis=0)
    exps = np.exp(terms - top)
    total = exps.sum(axis=0)
    value, slope = _huber(top + np.log(total) - log_loss, delta)
    weighted = slope * exps / total
    gradient = np.array([weighted[2].sum(), weighted[0].sum(), weighted[1].sum(),
                         -weighted[0] @ log_N, -weighted[1] @ log_D])
    return value.sum(), gradient


def _objective_at_starts(starts, log_N, log_D, log_loss, delta) -> np.ndarray:
    """The objective at each row of `starts`, in one vectorised pass."""
    e, a, b, alpha, beta = (column[:, None] for column in starts.T)
    predicted = np.logaddexp(np.logaddexp(a - alpha * log_N, b - beta * log_D), e)
    return _huber(predicted - log_loss, delta)[0].sum(axis=1)


def _minimise(starts, num_refined, log_N, log_D, log_loss, delta) -> np.ndarray:
    """The best theta found by L-BFGS-B from the `num_refined` best of `starts`.

    log N and log D are centred for the optimiser (a and alpha are otherwise strongly
    coupled); the starts and the result are shifted to and from that parametrisation.
    """
    mean_N, mean_D = log_N.mean(), log_D.mean()
    values = _objective_at_starts(starts, log_N, log_D, log_loss, delta)
    best, best_value = None, np.inf
    for start in starts[np.argsort(values)[:num_refined]]:
        centred = start - [0.0, start[3] * mean_N, start[4] * mean_D, 0.0, 0.0]
        result = scipy.optimize.minimize(
            _objective, centred, args=(log_N - mean_N, log_D - mean_D, log_loss, delta),
            jac=True, method="L-BFGS-B", options=_LBFGS_OPTIONS)
        if result.fun < best_value:
            best, best_value = result.x, result.fun
    e, a, b, alpha, beta = best
    return np.array([e, a + alpha * mean_N, b + beta * mean_D, alpha, beta])


def _law(theta) -> LossLaw:
    e, a, b, alpha, beta = (float(value) for value in theta)
    return LossLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


def _theta(law: LossLaw) -> np.ndarray:
    return np.array([math.log(law.E), math.log(law.A), math.log(law.B), law.alpha, law.beta])


def fit_law(runs, huber_delta: float = 1e-3, starts=None,
            num_refined: int = NUM_REFINED) -> LossLaw:
    """Approach 3: the LossLaw minimising the summed Huber loss of log-loss residuals.

    The law's log loss is logsumexp(a - alpha log N, b - beta log D, e) with e, a, b the
    logs of E, A, B. `starts` are rows (e, a, b, alpha, beta); the default is
    CHINCHILLA_STARTS. L-BFGS-B runs from the `num_refined` starts of lowest objective.
    """
    starts = CHINCHILLA_STARTS if starts is None else np.atleast_2d(np.asarray(starts, float))
    return _law(_minimise(starts, num_refined, *_log_columns(runs), huber_delta))


@dataclasses.dataclass(frozen=True)
class IsoFlopMinimum:
    """The fitted loss minimum along one budget's IsoFLOP curve."""

    C: float
    N_opt: float
    D_opt: float
    loss_at_min: float
    at_edge: bool  # the sizes do not bracket the minimum (see `isoflop_minimum`)


@dataclasses.dataclass(frozen=True)
class IsoFlopFit:
    """Approach 2: per-budget minima and the power laws N_opt = G_N C^a, D_opt = G_D C^b."""

    minima: tuple[IsoFlopMinimum, ...]
    a: float
    b: float
    G_N: float
    G_D: float
    warnings: list[str]

    @property
    def optimal_exponent(self) -> float:
        """a, as in `LossLaw.optimal_exponent`."""
        return self.a


def group_by_budget(runs, budgets=None) -> dict[float, list[Run]]:
    """Runs keyed by budget: C equal within 1% (relative) share one.

    Without `budgets`, each group is keyed by its smallest C; with them, a run joins the
    budget within 1% of its C, and runs near no budget are left out.
    """
    groups: dict[float, list[Run]] = {}
    if budgets is None:
        for run in sorted(runs, key=lambda run: run.C):
            key = next((C for C in groups if abs(run.C - C) <= SAME_BUDGET_RTOL * C), run.C)
            groups.setdefault(key, []).append(run)
        return groups
    for run in runs:
        key = next((C for C in budgets if abs(run.C - C) <= SAME_BUDGET_RTOL * C), None)
        if key is not None:
            groups.setdefault(float(key), []).append(run)
    return dict(sorted(groups.items()))


def isoflop_minimum(C: float, runs) -> tuple[IsoFlopMinimum, str | None]:
    """The minimum of a parabola in log N fitted to the losses of one budget's runs, and a
    warning when the runs' sizes do not bracket it.

    Not bracketed: the parabola's minimum is not strictly between the smallest and largest
    N, the lowest-loss run is the smallest or the largest, or the parabola opens downward
    (then the lowest-loss run stands in for the minimum).
    """
    if len(runs) < 3:
        raise ValueError(f"IsoFLOP curve of C={C:.3g} has {len(runs)} runs; it needs 3")
    log_N = np.log([run.N for run in runs])
    losses = np.array([run.loss for run in runs])
    flops_per_param_token = np.mean([run.C / (run.N * run.D) for run in runs])
    curvature, slope, intercept = np.polyfit(log_N, losses, 2)
    grid = f"(N from {np.exp(log_N.min()):.3g} to {np.exp(log_N.max()):.3g})"
    if curvature <= 0:
        log_N_opt, loss_at_min = log_N[np.argmin(losses)], losses.min()
        warning = (f"IsoFLOP curve of C={C:.3g} opens downward {grid}: it has no minimum; "
                   "the lowest-loss run stands in for it")
    else:
        log_N_opt = -slope / (2 * curvature)
        loss_at_min = np.polyval([curvature, slope, intercept], log_N_opt)
        at_edge = (not log_N.min() < log_N_opt < log_N.max()
                   or np.argmin(losses) in (np.argmin(log_N), np.argmax(log_N)))
        warning = (f"IsoFLOP minimum of C={C:.3g} lies at the edge of its grid {grid}: the "
                   "grid does not bracket the optimum; extend it") if at_edge else None
    N_opt = float(np.exp(log_N_opt))
    minimum = IsoFlopMinimum(C=float(C), N_opt=N_opt, D_opt=C / (flops_per_param_token * N_opt),
                             loss_at_min=float(loss_at_min), at_edge=warning is not None)
    return minimum, warning


def _power_law(C, values) -> tuple[float, float]:
    """(exponent, coefficient) of values = coefficient C^exponent, by least squares in logs."""
    exponent, log_coefficient = np.polyfit(np.log(C), np.log(values), 1)
    return float(exponent), float(np.exp(log_coefficient))


def fit_isoflop(runs, budgets=None) -> IsoFlopFit:
    """Approach 2: IsoFLOP minima per budget (see `group_by_budget`), then power laws in C.

    D_opt = C / (k N_opt), with k the budget's mean C / (N D). Budgets whose sizes do not
    bracket their minimum stay in the power-law fits and are named in `warnings`.
    """
    groups = group_by_budget(runs, budgets)
    if len(groups) < 2:
        raise ValueError(f"approach 2 needs at least 2 budgets, got {len(groups)}")
    results = [isoflop_minimum(C, group) for C, group in groups.items()]
    minima = tuple(minimum for minimum, _ in results)
    C = [minimum.C for minimum in minima]
    a, G_N = _power_law(C, [minimum.N_opt for minimum in minima])
    b, G_D = _power_law(C, [minimum.D_opt for minimum in minima])
    return IsoFlopFit(minima=minima, a=a, b=b, G_N=G_N, G_D=G_D,
                      warnings=[warning for _, warning in results if warning])


def bootstrap(runs, fit: LossLaw, num_samples: int = 200, seed: int = 0,
              huber_delta: float = 1e-3) -> dict[str, tuple[float, float]]:
    """5th and 95th percentiles of each LossLaw field and of `optimal_exponent` over
    approach-3 fits of runs resampled with replacement.

    Each resampled fit starts from `fit` (the fit of all runs) alone, not from the grid of
    starts: on synthetic sweeps both gave the same fits, this one at a small fraction of
    the cost.
    """
    runs = list(runs)
    rng = np.random.default_rng(seed)
    start = _theta(fit)
    samples = []
    for _ in range(num_samples):
        resampled = [runs[i] for i in rng.integers(0, len(runs), len(runs))]
        law = fit_law(resampled, huber_delta, starts=start, num_refined=1)
        samples.append({**law.as_dict(), "optimal_exponent": law.optimal_exponent})
    return {name: tuple(float(q) for q in np.percentile([s[name] for s in samples], [5, 95]))
            for name in samples[0]}
