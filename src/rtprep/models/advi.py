"""Mean-field ADVI stepped in numpy on a compiled log density, with checks that say whether the
fit converged, and a recovery when it did not.

The objective is ``pm.fit(method="advi")``'s (a Gaussian q with independent coordinates in the
unconstrained space, the reparameterised ELBO gradient from one Monte Carlo draw per step, Adam);
stepping it in numpy costs ~15× less per step than ``pm.fit``. The rate warms up linearly over
``WARMUP_STEPS``, stays constant to half the run, then decays (cosine) to 1/50; the variational
parameters are averaged over the last quarter (iterate averaging removes most of the
stochastic-gradient jitter from the means).

Why checks: on this posterior (hundreds to thousands of parameters whose curvatures differ by
eight orders of magnitude) a run at a constant rate can be thrown out of its basin by one draw
and end far worse than it was, with nothing in its last steps to show it (a realistic export's
lib ended at loss +2,148 after −40,800 at mid-run). So every run keeps the state of its best
window and is judged on a fixed set of draws (common random numbers: the same draws for every
state compared, so the comparison's noise is that of a paired difference):

- **left its basin**: the final state's loss is worse than the reference (the best window's
  state, or the start where the run never got below it) by more than the margin: the larger
  of ``FAR_REL`` × |loss| (0.5%: healthy runs end at or below their best window; the failure
  above is 100% off) and one sd of the reference's loss under its q (the objective's own
  noise, which keeps the rule meaningful where the loss happens to be near 0);
- **still improving**: a Newton step from the final state would still gain more than
  ``CONV_REMAINING_PER_PARAMETER`` nats per parameter (:meth:`FixedDraws.remaining`; the loss
  windows are reported but do not decide: a run whose rate decayed before it got there has flat
  last windows, and a short healthy run has noisy ones); a fit run **until converged**
  (:attr:`AdviSettings.until_converged`, the outlier screen's) gets further rounds from its
  final state, each as long as the first, until one improves the fixed-draw loss by no more
  than the margin (``ROUND_REL``), and is still improving if its ``max_steps`` run out first;
- **recovery** (from either): a further run at ``RESTART_RATE`` × the rate for
  ``RESTART_FRACTION`` of the steps, from the best window's state (left its basin) or the final
  state (still improving); the better of the two states on the same draws is kept;
- **verdict**: ``converged`` (no problem), ``recovered`` (a problem, and the kept state passes
  both checks), ``not converged`` (it does not).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: A compiled log density and its gradient at a flat parameter vector.
LogDensity = Callable[[np.ndarray], tuple[float, np.ndarray]]

#: The rate rises linearly over the first steps (at most a tenth of the run): at full rate from
#: the first step, Adam's equal-sized steps in every coordinate overshoot along the sharp
#: (collinear-covariate) directions.
WARMUP_STEPS = 100
#: A draw whose loss is more than ``SPIKE_K`` median absolute deviations above the median of
#: the last ``SPIKE_WINDOW`` steps is skipped: one such draw's gradient can throw the fit out of
#: its basin.
SPIKE_WINDOW = 100
SPIKE_K = 10.0
#: Loss windows: a twentieth of the run, at least ``MIN_WINDOW`` steps.
N_WINDOWS = 20
MIN_WINDOW = 25
#: Draws of the fixed-draw loss that compares states (paired: the same draws for each state).
CHECK_DRAWS = 64
#: "Far worse": relative margin (see the module docstring).
FAR_REL = 0.005
#: Still improving: a Newton step would gain more than this many nats per parameter
#: (:meth:`FixedDraws.remaining`; at the optimum it is 0 up to its noise, ~1/64 per parameter).
CONV_REMAINING_PER_PARAMETER = 2.0
#: Until converged: a further round improves the fixed-draw loss by at most this share.
ROUND_REL = 2e-3
#: Recovery run: rate and length relative to the failed run.
RESTART_RATE = 0.2
RESTART_FRACTION = 0.5
#: Progress lines on long runs, every this many seconds.
PROGRESS_SECONDS = 30.0

VERDICTS = ("converged", "recovered", "not converged")


@dataclass
class Gaussian:
    """A mean-field Gaussian q: means ``mu`` and log standard deviations ``omega``."""

    mu: np.ndarray
    omega: np.ndarray

    def sample(self, n: int, seed: int) -> np.ndarray:
        """``n`` draws (rows) from q with a seeded generator."""
        e = np.random.default_rng(seed).standard_normal((n, len(self.mu)))
        return self.mu[None, :] + np.exp(self.omega)[None, :] * e


@dataclass
class AdamRun:
    """One Adam run: its final (iterate-averaged) state, its best window and the loss record."""

    q: Gaussian
    best: Gaussian
    best_loss: float
    best_step: int
    window_loss: np.ndarray   # mean loss of each window (nan: every draw skipped)
    last_window_sd: float     # sd of the per-step loss in the last window
    window_steps: int
    steps: int
    spikes: int
    nonfinite: int
    rate_scale: float
    seconds: float

    def last_change(self) -> tuple[float, float, float]:
        """(last window's loss, its improvement on the window before, relative improvement)."""
        w = self.window_loss[np.isfinite(self.window_loss)]
        if w.size < 2:
            return (float(w[-1]) if w.size else float("nan")), float("nan"), float("nan")
        gain = float(w[-2] - w[-1])
        return float(w[-1]), gain, gain / max(abs(float(w[-1])), 1.0)


@dataclass(frozen=True)
class AdviSettings:
    """How one ADVI fit runs (``label`` names it in the log)."""

    steps: int
    learning_rate: float
    seed: int
    label: str = "ADVI"
    until_converged: bool = False
    max_steps: int | None = None


def run_adam(fn: LogDensity, q0: Gaussian, steps: int, learning_rate: float, seed: int,
             label: str = "ADVI") -> AdamRun:
    """Maximise the ELBO from ``q0`` for ``steps`` Adam steps (see the module docstring)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    dim = len(q0.mu)
    adam = _Adam(np.concatenate([q0.mu, q0.omega]).astype(np.float64))
    avg = np.zeros_like(adam.params)
    n_avg = 0
    avg_from = int(steps * 0.75)
    warmup = max(1, min(WARMUP_STEPS, steps // 10))
    losses = np.full(steps, np.nan)
    windows = _Windows(max(MIN_WINDOW, steps // N_WINDOWS), adam.params)
    skipped = spikes = 0
    rate_scale = 1.0
    last_good = adam.params.copy()
    t_log = time.perf_counter()
    for t in range(1, steps + 1):  # optimisation steps (each one vectorised over parameters)
        if time.perf_counter() - t_log > PROGRESS_SECONDS:
            t_log = time.perf_counter()
            _log_progress(label, t, steps, losses, t_log - t0)
        mu, omega = adam.params[:dim], adam.params[dim:]
        sd = np.exp(omega)
        e = rng.standard_normal(dim)
        logp, grad = fn(mu + sd * e)
        if not (np.isfinite(logp) and np.all(np.isfinite(grad))):
            # a step too far: back to the last good point, with half the step from now on
            # (skipping alone can leave the iterate where every later draw is non-finite)
            skipped += 1
            adam.params = last_good.copy()
            rate_scale *= 0.5
        else:
            loss = -(float(logp) + float(omega.sum()))
            if _is_spike(losses, t, loss):
                # a draw far out in the tail: its gradient would kick every moment estimate
                # (Adam's step after one huge gradient is ~3x the rate, and the momentum
                # carries it on): skip the draw
                spikes += 1
            else:
                last_good = adam.params.copy()
                losses[t - 1] = loss
                adam.ascend(np.concatenate([grad, grad * e * sd + 1.0]), t,
                            rate_scale * _rate(t, steps, warmup, learning_rate))
                if t > avg_from:
                    avg += adam.params
                    n_avg += 1
        windows.add(adam.params, losses, t, steps)
    params = avg / n_avg if n_avg else adam.params
    if skipped > steps // 10:
        log.warning("%s: %d of %d ADVI steps hit a non-finite density", label, skipped, steps)
    best = windows.best
    return AdamRun(q=Gaussian(params[:dim].copy(), params[dim:].copy()),
                   best=Gaussian(best[:dim].copy(), best[dim:].copy()),
                   best_loss=float(windows.best_loss), best_step=int(windows.best_step),
                   window_loss=np.asarray(windows.window_loss),
                   last_window_sd=windows.last_sd, window_steps=windows.window, steps=steps,
                   spikes=spikes, nonfinite=skipped, rate_scale=rate_scale,
                   seconds=time.perf_counter() - t0)


class _Adam:
    """Adam's moment estimates and the iterate (ascent on the ELBO)."""

    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def __init__(self, params: np.ndarray) -> None:
        self.params = params
        self.m1 = np.zeros_like(params)
        self.m2 = np.zeros_like(params)

    def ascend(self, g: np.ndarray, t: int, lr: float) -> None:
        b1, b2 = self.beta1, self.beta2
        self.m1 = b1 * self.m1 + (1 - b1) * g
        self.m2 = b2 * self.m2 + (1 - b2) * g * g
        self.params = self.params + lr * (self.m1 / (1 - b1**t)) / (
            np.sqrt(self.m2 / (1 - b2**t)) + self.eps)


def _rate(t: int, steps: int, warmup: int, learning_rate: float) -> float:
    """The step size at step ``t``: a linear warm-up, then a cosine decay over the second half
    to 2% of the rate."""
    frac = min(1.0, max(0.0, (t - steps / 2) / (steps / 2)))
    return learning_rate * min(1.0, t / warmup) * (
        0.02 + 0.98 * 0.5 * (1.0 + np.cos(np.pi * frac)))


class _Windows:
    """The loss per window of steps, and the state (mean iterate) of the best window."""

    def __init__(self, window: int, params: np.ndarray) -> None:
        self.window = window
        self.win_sum = np.zeros_like(params)
        self.win_n = 0
        self.best_loss, self.best_step, self.best = np.inf, 0, params.copy()
        self.window_loss: list[float] = []
        self.last_sd = np.inf

    def add(self, params: np.ndarray, losses: np.ndarray, t: int, steps: int) -> None:
        self.win_sum += params
        self.win_n += 1
        if t % self.window == 0 or t == steps:
            seg = losses[t - self.win_n:t]
            mean = float(np.nanmean(seg)) if np.isfinite(seg).any() else np.nan
            self.window_loss.append(mean)
            self.last_sd = float(np.nanstd(seg)) if np.isfinite(seg).sum() > 1 else np.inf
            if np.isfinite(mean) and mean < self.best_loss:
                self.best_loss, self.best_step, self.best = mean, t, self.win_sum / self.win_n
            self.win_sum = np.zeros_like(params)
            self.win_n = 0


def _log_progress(label: str, t: int, steps: int, losses: np.ndarray, seconds: float) -> None:
    recent = losses[max(0, t - 101):t - 1]
    log.info("%s: ADVI step %d of %d (%.0f%%), loss %.6g, %.1fs", label, t, steps,
             100.0 * t / steps,
             float(np.nanmean(recent)) if np.isfinite(recent).any() else np.nan, seconds)


def _is_spike(losses: np.ndarray, t: int, loss: float) -> bool:
    if t <= SPIKE_WINDOW:
        return False
    recent = losses[t - 1 - SPIKE_WINDOW:t - 1]
    recent = recent[np.isfinite(recent)]
    if recent.size < SPIKE_WINDOW // 2:
        return False
    med = float(np.median(recent))
    mad = float(np.median(np.abs(recent - med)))
    return loss > med + SPIKE_K * max(mad, 1e-9 * abs(med))


class FixedDraws:
    """The loss ``-(log p(θ) + Σ ω)`` of states on one fixed set of standard-normal draws, and
    the loss still to gain from each state (:meth:`remaining`)."""

    def __init__(self, fn: LogDensity, dim: int, seed: int, n: int = CHECK_DRAWS) -> None:
        self.fn = fn
        self.e = np.random.default_rng(seed).standard_normal((n, dim))
        self._remaining: dict[int, float] = {}
        self.seconds = 0.0

    def losses(self, q: Gaussian) -> np.ndarray:
        """Per-draw loss of ``q`` (inf where the density is not finite)."""
        t0 = time.perf_counter()
        sd = np.exp(q.omega)
        out = np.empty(len(self.e))
        k = len(self.e)
        s1 = np.zeros(2 * len(q.mu))
        s2 = np.zeros(2 * len(q.mu))
        for i, e in enumerate(self.e):  # a loop over the check's draws (tens)
            logp, grad = self.fn(q.mu + sd * e)
            ok = np.isfinite(logp) and np.all(np.isfinite(grad))
            out[i] = -(float(logp) + float(q.omega.sum())) if ok else np.inf
            if ok:
                g = np.concatenate([grad, grad * e * sd + 1.0])  # ELBO gradient, (μ, ω)
                s1 += g
                s2 += g * g
        if np.isfinite(out).all() and np.isfinite(s2).all():
            mean = s1 / k
            var = (s2 - k * mean**2) / (k - 1)
            # E[ḡ²] = (E g)² + var/k: subtract the draws' own noise (unbiased for (E g)²)
            sq = mean**2 - var / k
            dim = len(q.mu)
            self._remaining[id(q)] = float(0.5 * (sd**2 * sq[:dim]).sum()
                                           + 0.25 * sq[dim:].sum())
        else:
            self._remaining[id(q)] = np.inf
        self.seconds += time.perf_counter() - t0
        return out

    def remaining(self, q: Gaussian) -> float:
        """The loss a Newton step would still gain from ``q`` (nats; ~0 at the optimum).

        With the mean-field curvatures at the optimum (``1/sd²`` in a mean, 2 in a log sd), a
        gradient ``g`` of the ELBO is worth ``½ sd² g²`` (mean) and ``g²/4`` (log sd); ``g²``
        is estimated without bias from the fixed draws (the squared mean gradient less its
        variance over the draws). Computed by :meth:`losses`.
        """
        if id(q) not in self._remaining:
            self.losses(q)
        return self._remaining[id(q)]


def _worse_by(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of ``a - b`` over paired draws (inf when ``a`` is not finite, -inf when only ``b``
    is not)."""
    if not np.isfinite(a).all():
        return np.inf
    if not np.isfinite(b).all():
        return -np.inf
    return float((a - b).mean())


def fit(fn: LogDensity, q0: Gaussian, settings: AdviSettings) -> tuple[Gaussian, dict[str, Any]]:
    """Run ADVI from ``q0``, check it, and recover from a run that left its basin or was still
    improving at its end (see the module docstring).

    Returns the state kept and its diagnostics: ``verdict`` (one of :data:`VERDICTS`), the
    fixed-draw loss of the kept and the best states, the last window's loss and relative change,
    the best window's loss and step, spikes and non-finite steps, rounds and the restart (with
    their losses), steps and seconds in all.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # a run far out is judged, not warned
        return _fit(fn, q0, settings)


def _fit(fn: LogDensity, q0: Gaussian, settings: AdviSettings) -> tuple[Gaussian, dict[str, Any]]:
    s = settings
    t0 = time.perf_counter()
    check = FixedDraws(fn, len(q0.mu), seed=s.seed + 7919)
    runs = _Runs(check)
    runs.add(run_adam(fn, q0, s.steps, s.learning_rate, s.seed, s.label))
    settled = _rounds(fn, runs, s) if s.until_converged else True
    ref_q, ref, ref_step = runs.reference(q0)
    problem = _problem(runs.kept.q, runs.final, ref, check, settled)
    restart: dict[str, Any] | None = None
    if problem is not None:
        origin, at = (ref_q, ref_step) if problem == "left its basin" else (runs.kept.q,
                                                                            runs.spent)
        log.warning("%s: ADVI %s (loss %.6g at the end, %.6g at step %d); restarting from "
                    "step %d at %.2g× the rate", s.label, problem, _mean(runs.final),
                    _mean(ref), ref_step, at, RESTART_RATE)
        rerun = run_adam(fn, origin, max(1, int(s.steps * RESTART_FRACTION)),
                         s.learning_rate * RESTART_RATE, s.seed + 1000, s.label)
        kept = runs.add(rerun, keep_if_better=True)
        restart = {"reason": problem, "from_step": at, "steps": rerun.steps,
                   "learning_rate": s.learning_rate * RESTART_RATE,
                   "loss": _num(_mean(runs.losses[-1])), "kept": kept}
        problem = _problem(runs.kept.q, runs.final, ref, check, True)
    verdict = ("not converged" if problem is not None
               else "recovered" if restart is not None else "converged")
    info = _diagnostics(runs, ref, ref_step, verdict, problem, restart)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    level = logging.INFO if verdict == "converged" else logging.WARNING
    log.log(level, "%s: ADVI %s after %d steps in %.1fs: loss %.6g (best %.6g at step %d; "
            "a Newton step would gain %.3g)", s.label, verdict, info["steps"], info["seconds"],
            _mean(runs.final), _mean(ref), ref_step, info["remaining_gain"] or np.inf)
    return runs.kept.q, info


class _Runs:
    """The runs of one fit, their fixed-draw losses, and the one kept (the best final state)."""

    def __init__(self, check: FixedDraws) -> None:
        self.check = check
        self.runs: list[AdamRun] = []
        self.offsets: list[int] = []
        self.losses: list[np.ndarray] = []
        self.kept_index = 0
        self.rounds: list[dict[str, Any]] = []

    @property
    def spent(self) -> int:
        return sum(r.steps for r in self.runs)

    @property
    def kept(self) -> AdamRun:
        return self.runs[self.kept_index]

    @property
    def final(self) -> np.ndarray:
        return self.losses[self.kept_index]

    def add(self, run: AdamRun, keep_if_better: bool = True) -> bool:
        """Record ``run``; keep its final state if it is better than the kept one."""
        self.offsets.append(self.spent)
        self.runs.append(run)
        self.losses.append(self.check.losses(run.q))
        better = len(self.runs) == 1 or _mean(self.losses[-1]) < _mean(self.final)
        if better and keep_if_better:
            self.kept_index = len(self.runs) - 1
        return bool(better)

    def reference(self, q0: Gaussian) -> tuple[Gaussian, np.ndarray, int]:
        """The best window's state over all runs (or the start, where no run got below it),
        its fixed-draw losses and its step."""
        i = min(range(len(self.runs)), key=lambda j: _finite_or_inf(self.runs[j].best_loss))
        q, step = self.runs[i].best, self.offsets[i] + self.runs[i].best_step
        losses = self.check.losses(q)
        start = self.check.losses(q0)
        if _mean(start) < _mean(losses):  # the whole run went wrong: its start is the reference
            return q0, start, 0
        return q, losses, step


def _rounds(fn: LogDensity, runs: _Runs, s: AdviSettings) -> bool:
    """Further rounds from the kept state until one no longer improves it (True) or the budget
    runs out (False)."""
    budget = max(s.max_steps or s.steps, s.steps)
    while runs.spent + s.steps <= budget:
        before = runs.final
        runs.add(run_adam(fn, runs.kept.q, s.steps, s.learning_rate, s.seed + len(runs.runs),
                          s.label))
        gain = _worse_by(before, runs.losses[-1])
        runs.rounds.append({"steps": s.steps, "loss": _num(_mean(runs.losses[-1])),
                            "improvement": _num(gain)})
        if gain <= _margin(runs.final, ROUND_REL):
            return True  # another round would not move it
    return False


def _diagnostics(runs: _Runs, ref: np.ndarray, ref_step: int, verdict: str,
                 problem: str | None, restart: dict[str, Any] | None) -> dict[str, Any]:
    run = runs.kept
    last, _, rel = run.last_change()
    return {
        "verdict": verdict,
        "problem": problem,
        "steps": int(runs.spent),
        "final_loss": _num(_mean(runs.final)),
        "best_loss": _num(_mean(ref)),
        "best_step": int(ref_step),
        "best_window_loss": _num(min(_finite_or_inf(r.best_loss) for r in runs.runs)),
        "last_window_loss": _num(last),
        "last_window_change": _num(rel),
        "last_window_sd": _num(run.last_window_sd),
        "remaining_gain": _num(runs.check.remaining(run.q)),
        "window_steps": run.window_steps,
        "spike_steps": int(sum(r.spikes for r in runs.runs)),
        "nonfinite_steps": int(sum(r.nonfinite for r in runs.runs)),
        "rate_scale": run.rate_scale,
        "check_draws": CHECK_DRAWS,
        "check_seconds": round(runs.check.seconds, 3),
        "rounds": 1 + len(runs.rounds),
        "round_losses": runs.rounds,
        "restart": restart,
    }


def _margin(ref: np.ndarray, rel: float) -> float:
    """How much worse (or better) than the reference a state may be and still count as the
    same: ``rel`` × |loss|, or one sd of the reference's loss under its q (the objective's own
    noise, which keeps the rule meaningful where the loss happens to be near 0), whichever is
    larger. The noise is the reference's, never the other state's: a state far out has a
    wildly varying loss, which must not widen its own margin."""
    if not np.isfinite(ref).all():
        return 0.0
    return max(rel * abs(float(ref.mean())), float(ref.std()))


def _problem(q: Gaussian, final: np.ndarray, best: np.ndarray, check: FixedDraws,
             settled: bool) -> str | None:
    """``left its basin``, ``still improving`` or None (see the module docstring)."""
    if _worse_by(final, best) > _margin(best, FAR_REL):
        return "left its basin"
    if not settled or check.remaining(q) > CONV_REMAINING_PER_PARAMETER * len(q.mu):
        return "still improving"
    return None


def _finite_or_inf(v: float) -> float:
    return v if np.isfinite(v) else np.inf


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if np.isfinite(a).all() else np.inf


def _num(v: float) -> float | None:
    """A JSON-safe number (None for inf / nan)."""
    v = float(v)
    return v if np.isfinite(v) else None
