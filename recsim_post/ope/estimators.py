"""Off-policy evaluation of a single-item target policy from logged bandit data.

Logged rows (x_i, a_i, r_i, p_i) with p_i = pi_0(a_i | x_i) the logger's exact propensity; the
target policy pi is given by its action probabilities on every logged context, or -- all the
estimators need -- by pi(a_i | x_i) and, for DM / DR / Switch-DR, the per-row sums
sum_a pi(a | x_i) q^(x_i, a) and q^(x_i, a_i), so no (n x A) matrix has to exist. Every estimator is
a frozen dataclass with ``estimate(data) -> float`` and ``interval(data, n_bootstrap, alpha, rng)``;
:func:`intervals` gives several estimators' intervals from one set of resamples. With
w_i = pi(a_i | x_i) / p_i::

    IPS        V = (1/n) sum_i w_i r_i
    SNIPS      V = sum_i w_i r_i / sum_i w_i
    DM         V = (1/n) sum_i sum_a pi(a | x_i) q^(x_i, a)
    DR         V = DM + (1/n) sum_i w_i (r_i - q^(x_i, a_i))
    Switch-DR  V = DM + (1/n) sum_i 1[w_i <= tau] w_i (r_i - q^(x_i, a_i))

The estimand is V(pi) = E_x E_{a ~ pi(.|x)} E[r | x, a] over the logged contexts' distribution;
IPS and DR are unbiased for it when the propensities are exact and pi_0 covers pi's support.
Where it does not (deficient support: pi_0(a | x) = 0 on a set U(x) of actions the logger never
takes), no logged row holds such an action, so no weight is infinite, but::

    E[IPS] = V - E_x sum_{a in U(x)} pi(a | x) r(x, a)
    E[DR]  = V - E_x sum_{a in U(x)} pi(a | x) (r(x, a) - q^(x, a))

(tests/test_ope_report.py computes both by hand on a small bandit).

Logs of the simulator become :class:`BanditData` through :func:`bandit_data_from_logs`, and any
:class:`BanditData` becomes Open Bandit Pipeline's ``bandit_feedback`` dict through
:func:`to_obp_bandit_feedback`, so obp's estimators run unchanged on our data.

Intervals (``method``):

* ``"bootstrap"`` (default): a percentile bootstrap with Poisson(1) resampling weights (Hanley &
  MacGibbon 2006, "Creating non-parametric bootstrap samples using Poisson frequencies"; Chamandy
  et al. 2012, "Estimating uncertainty for massive data streams"). Every estimator is a ratio of
  per-row sums, V = sum_i num_i / sum_i den_i (den_i = 1 for the plain means), so a resample with
  weights N_bi ~ Poisson(1) is V_b = sum_i N_bi num_i / sum_i N_bi den_i: one weighted sum per
  resample and column (counts x columns, a matrix product), streamed over blocks of logged rows by a
  kernel that never stores the counts. Every block draws its uniforms from its
  own child stream of ``rng``, so the draws do not depend on the number of threads. Resamples whose
  denominator is 0 are left out.
* ``"normal"``: V +- z_{1 - alpha/2} se, se the delta-method standard error of the ratio,
  sd_i(num_i - V den_i) / (mean_i(den_i) sqrt(n)) (the plain standard error for den_i = 1): no
  resampling, for large n.

References: Horvitz & Thompson (1952) for IPS; Swaminathan & Joachims (2015), "The Self-Normalized
Estimator for Counterfactual Learning" for SNIPS; Dudik, Langford & Li (2011), "Doubly Robust Policy
Evaluation and Learning" for DR; Wang, Agarwal & Dudik (2017), "Optimal and Adaptive Off-policy
Evaluation in Contextual Bandits" for Switch; Saito et al. (2021), Open Bandit Pipeline, whose
``SwitchDoublyRobust`` is the variant above.
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError, LogError
from ..signals import REWARDS
from ..world.kernels import kernel_threads, run_on_threads
from ..truth.kernels import poisson_accumulate

PI_SUM_TOL = 1e-6
"""Rows of ``pi_all`` must sum to one within this tolerance."""

BOOTSTRAP_BLOCK_ROWS = 2**14
"""Logged rows per block of the streamed Poisson bootstrap (each block has its own child stream)."""

IntervalMethod = Literal["bootstrap", "normal"]
INTERVAL_METHODS = ("bootstrap", "normal")


def _float_array(name: str, x, n: int | None = None) -> np.ndarray:  # noqa: ANN001
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if n is not None and len(a) != n:
        raise ValueError(f"{name} has {len(a)} rows, expected {n} (one per logged row)")
    return a


@dataclass(frozen=True)
class BanditData:
    """Logged bandit feedback, one row per logged decision, plus the target policy on those rows.

    Fields (n logged rows, A actions):
        context: (n,) int, the context of each row (here the user id; any integer key works).
        action: (n,) int in [0, A), the logged action a_i.
        reward: (n,) float, finite, the reward r_i.
        pscore: (n,) float in (0, 1], the logger's propensity p_i = pi_0(a_i | x_i).
        pi_on_action: (n,) float in [0, 1], the target's pi(a_i | x_i). Taken from ``pi_all`` when
            omitted.
        pi_all: (n, A) optional, the target's full action distribution on each logged context
            (rows sum to one). With ``q_hat_all``, what DM, DR and Switch-DR need.
        q_hat_all: (n, A) optional, a reward model's q^(x_i, a) on each logged context.
        n_actions: A; inferred from ``pi_all`` or ``q_hat_all`` when omitted.
        timestamp: (n,) int, optional, when each row was logged (kept for the record and export).
        q_hat_pi: (n,) optional, sum_a pi(a | x_i) q^(x_i, a): with ``q_hat_on_action``, what DM,
            DR and Switch-DR need, without the (n, A) matrices (computed from them when both are given).
        q_hat_on_action: (n,) optional, q^(x_i, a_i).
    """

    context: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray
    pi_on_action: np.ndarray | None = None
    pi_all: np.ndarray | None = None
    q_hat_all: np.ndarray | None = None
    n_actions: int | None = None
    timestamp: np.ndarray | None = field(default=None)
    q_hat_pi: np.ndarray | None = None
    q_hat_on_action: np.ndarray | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        action = np.asarray(self.action)
        if action.ndim != 1:
            raise ValueError(f"action must be one-dimensional, got shape {action.shape}")
        n = len(action)
        if n == 0:
            raise ValueError("bandit data needs at least one logged row, got 0")
        if not np.issubdtype(action.dtype, np.integer):
            raise ValueError(f"action must be integer ids, got dtype {action.dtype}")
        context = np.asarray(self.context)
        if context.shape != (n,):
            raise ValueError(f"context has shape {context.shape}, expected ({n},) (one per logged row)")
        reward = _float_array("reward", self.reward, n)
        if not np.all(np.isfinite(reward)):
            raise ValueError(f"reward has {int((~np.isfinite(reward)).sum())} NaN or infinite values; rewards must be finite")
        pscore = _float_array("pscore", self.pscore, n)
        bad = ~((pscore > 0) & (pscore <= 1))
        if bad.any():
            raise ValueError(f"pscore must lie in (0, 1], got {pscore[bad][0]!r} ({int(bad.sum())} bad rows)")

        n_actions = self.n_actions
        for name in ("pi_all", "q_hat_all"):
            m = getattr(self, name)
            if m is None:
                continue
            m = np.asarray(m, dtype=np.float64)
            if m.ndim != 2 or m.shape[0] != n:
                raise ValueError(f"{name} has shape {m.shape}, expected ({n}, n_actions)")
            if n_actions is None:
                n_actions = m.shape[1]
            elif m.shape[1] != n_actions:
                raise ValueError(f"{name} has {m.shape[1]} actions, expected {n_actions}")
            if not np.all(np.isfinite(m)):
                raise ValueError(f"{name} has NaN or infinite values")
            set_(name, m)
        if n_actions is not None and int(n_actions) < 1:
            raise ValueError(f"n_actions must be >= 1, got {n_actions}")
        lo, hi = int(action.min()), int(action.max())
        if lo < 0 or (n_actions is not None and hi >= n_actions):
            raise ValueError(f"action ids must lie in [0, {n_actions}), got range [{lo}, {hi}]")

        if self.pi_all is not None:
            pi = self.pi_all
            if pi.min() < 0 or pi.max() > 1:
                raise ValueError(f"pi_all must lie in [0, 1], got range [{pi.min()}, {pi.max()}]")
            dev = np.abs(pi.sum(axis=1) - 1.0).max()
            if dev > PI_SUM_TOL:
                raise ValueError(f"rows of pi_all must sum to 1, worst row is off by {dev:.3g}")
            from_all = pi[np.arange(n), action]
            if self.pi_on_action is None:
                pi_on = from_all
            else:
                pi_on = _float_array("pi_on_action", self.pi_on_action, n)
                if not np.allclose(pi_on, from_all, rtol=0, atol=1e-9):
                    raise ValueError("pi_on_action disagrees with pi_all at the logged actions")
        elif self.pi_on_action is None:
            raise ValueError("give the target policy as pi_on_action (n,) or pi_all (n, n_actions)")
        else:
            pi_on = _float_array("pi_on_action", self.pi_on_action, n)
        if not np.all((pi_on >= 0) & (pi_on <= 1)):
            raise ValueError(f"pi_on_action must lie in [0, 1], got range [{pi_on.min()}, {pi_on.max()}]")

        for name in ("q_hat_pi", "q_hat_on_action"):
            if getattr(self, name) is not None:
                v = _float_array(name, getattr(self, name), n)
                if not np.all(np.isfinite(v)):
                    raise ValueError(f"{name} has NaN or infinite values")
                set_(name, v)
        if (self.q_hat_pi is None) != (self.q_hat_on_action is None):
            raise ValueError("give q_hat_pi and q_hat_on_action together (DM, DR and Switch-DR need both)")
        if self.q_hat_all is not None and self.q_hat_on_action is not None:
            if not np.allclose(self.q_hat_on_action, self.q_hat_all[np.arange(n), action], rtol=0, atol=1e-9):
                raise ValueError("q_hat_on_action disagrees with q_hat_all at the logged actions")

        if self.timestamp is not None:
            ts = np.asarray(self.timestamp)
            if ts.shape != (n,):
                raise ValueError(f"timestamp has shape {ts.shape}, expected ({n},)")
            set_("timestamp", ts)
        set_("context", context)
        set_("action", action.astype(np.int64))
        set_("reward", reward)
        set_("pscore", pscore)
        set_("pi_on_action", pi_on)
        set_("n_actions", None if n_actions is None else int(n_actions))

    def __len__(self) -> int:
        return len(self.action)

    @property
    def weight(self) -> np.ndarray:
        """Importance weights w_i = pi(a_i | x_i) / pi_0(a_i | x_i): (n,)."""
        return self.pi_on_action / self.pscore

    def with_policy(self, pi_all: np.ndarray | None = None, pi_on_action: np.ndarray | None = None) -> "BanditData":
        """The same logs with another target policy (a validated copy)."""
        return BanditData(
            self.context, self.action, self.reward, self.pscore, pi_on_action, pi_all, self.q_hat_all,
            self.n_actions, self.timestamp,  # q_hat_pi belonged to the old policy
        )

    def with_reward_model(self, q_hat_all: np.ndarray) -> "BanditData":
        """The same logs and policy with a reward model q^(x_i, a): (n, n_actions)."""
        return BanditData(
            self.context, self.action, self.reward, self.pscore, self.pi_on_action, self.pi_all, q_hat_all,
            self.n_actions, self.timestamp,
        )

    def model_terms(self, who: str = "this estimator") -> tuple[np.ndarray, np.ndarray]:
        """(sum_a pi(a | x_i) q^(x_i, a), q^(x_i, a_i)): (n,) each, from ``pi_all`` and ``q_hat_all``
        when the data hold them, else the given ``q_hat_pi`` and ``q_hat_on_action``."""
        if self.pi_all is not None and self.q_hat_all is not None:
            q = self.q_hat_all
            return (self.pi_all * q).sum(axis=1), q[np.arange(len(self)), self.action]
        if self.q_hat_pi is not None and self.q_hat_on_action is not None:
            return self.q_hat_pi, self.q_hat_on_action
        missing = " and ".join(k for k in ("pi_all", "q_hat_all") if getattr(self, k) is None)
        raise ValueError(f"{who} needs {missing} on the bandit data (or q_hat_pi and q_hat_on_action)")


class _Estimator:
    """Shared machinery: estimate = sum_i num_i / sum_i den_i, with intervals from :func:`intervals`."""

    name: str = ""

    def _terms(self, data: BanditData) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-row numerator and denominator (None means den_i = 1: a plain mean)."""
        raise NotImplementedError

    def estimate(self, data: BanditData) -> float:
        """The estimated value of the target policy."""
        num, den = self._terms(data)
        return float(num.mean()) if den is None else float(num.sum() / den.sum())

    def interval(
        self,
        data: BanditData,
        n_bootstrap: int = 1000,
        alpha: float = 0.05,
        rng: np.random.Generator | None = None,
        method: IntervalMethod = "bootstrap",
    ) -> tuple[float, float]:
        """(1 - alpha) interval: Poisson-bootstrap percentiles (draws from ``rng``) or the normal /
        delta-method approximation (see the module docstring)."""
        return intervals([self], data, n_bootstrap, alpha, rng, method)[0]


def _check_interval_args(n_bootstrap: int, alpha: float, rng, method: str) -> None:  # noqa: ANN001
    if method not in INTERVAL_METHODS:
        raise ValueError(f"interval method must be one of {', '.join(map(repr, INTERVAL_METHODS))}, got {method!r}")
    if method == "bootstrap" and not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a seeded numpy.random.Generator, got {type(rng).__name__}")
    if int(n_bootstrap) != n_bootstrap or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be a positive integer, got {n_bootstrap!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")


def poisson_bootstrap_sums(x: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """S[b, j] = sum_i N_bi x[i, j], N_bi ~ Poisson(1) independent: (n_bootstrap, k) float64.

    Streamed over blocks of :data:`BOOTSTRAP_BLOCK_ROWS` logged rows on a few threads: block j draws
    its (rows, n_bootstrap) uniforms from child stream j of a seed taken from ``rng`` and adds its
    rows' weighted sums (truth/kernels.py, the counts never stored); the blocks' partial sums
    are added in block order, so the result depends on ``rng`` only, not on the threads.
    """
    x = np.ascontiguousarray(x, np.float64)
    n, k = x.shape
    B = int(n_bootstrap)
    starts = range(0, n, BOOTSTRAP_BLOCK_ROWS)
    children = np.random.SeedSequence(rng.integers(0, 2**63, size=4).tolist()).spawn(len(starts))
    partial = np.zeros((len(starts), k, B))
    claim = itertools.count()

    def work() -> None:
        buf = np.empty(min(BOOTSTRAP_BLOCK_ROWS, n) * B)
        while (j := next(claim)) < len(starts):
            lo = starts[j]
            rows = min(BOOTSTRAP_BLOCK_ROWS, n - lo)
            u = buf[: rows * B].reshape(rows, B)
            np.random.default_rng(children[j]).random(out=u)
            poisson_accumulate(u, x[lo : lo + rows], partial[j])

    run_on_threads(work, min(kernel_threads(), len(starts)))
    return partial.sum(axis=0).T


def intervals(
    estimators: Sequence["_Estimator"],
    data: BanditData | Sequence[BanditData],
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    rng: np.random.Generator | None = None,
    method: IntervalMethod = "bootstrap",
) -> list[tuple[float, float]]:
    """(1 - alpha) intervals of several estimators, each on its data (one BanditData for all, or
    one per estimator, over the same logged rows), from ONE set of Poisson-bootstrap resamples:
    every estimator's (num, den) columns go into one (n, k) matrix and each resample is one
    weighted sum per column (see the module docstring; ``method="normal"`` draws nothing).
    A ratio whose denominator is 0 on a resample skips that resample; with none left it is NaN.
    """
    _check_interval_args(n_bootstrap, alpha, rng, method)
    datas = [data] * len(estimators) if isinstance(data, BanditData) else list(data)
    if len(datas) != len(estimators):
        raise ValueError(f"{len(estimators)} estimators but {len(datas)} bandit data")
    terms = [est._terms(d) for est, d in zip(estimators, datas)]
    n = len(terms[0][0]) if terms else 0
    if any(len(num) != n for num, _ in terms):
        raise ValueError("every estimator's data must hold the same logged rows")
    if method == "normal":
        return [_normal_interval(num, den, alpha) for num, den in terms]
    # columns: 0 = the counts' sum (the plain means' denominator), then num_j (and den_j) per estimator
    cols, index = [np.ones(n)], []
    for num, den in terms:
        index.append((len(cols), 0 if den is None else len(cols) + 1))
        cols += [num] if den is None else [num, den]
    sums = poisson_bootstrap_sums(np.stack(cols, axis=1), n_bootstrap, rng)
    out = []
    for i_num, i_den in index:
        with np.errstate(divide="ignore", invalid="ignore"):
            boot = sums[:, i_num] / sums[:, i_den]
        # a ratio is undefined on a resample whose denominator is zero (possible when the target puts
        # mass on few logged actions, e.g. most of it off the logger's support): such resamples are
        # left out, and with none left the interval is NaN
        boot = boot[np.isfinite(boot)]
        if len(boot) == 0:
            out.append((math.nan, math.nan))
            continue
        low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
        out.append((float(low), float(high)))
    return out


def _normal_interval(num: np.ndarray, den: np.ndarray | None, alpha: float) -> tuple[float, float]:
    """V +- z se with the delta-method se of sum(num) / sum(den) (den None: the plain mean's se)."""
    n = len(num)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    if den is None:
        v, psi = float(num.mean()), num
    else:
        total = den.sum()
        if total == 0:
            return math.nan, math.nan
        v = float(num.sum() / total)
        psi = (num - v * den) / (total / n)  # the ratio's influence function
    se = float(psi.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    return v - z * se, v + z * se


@dataclass(frozen=True)
class IPS(_Estimator):
    """Inverse propensity scoring (Horvitz & Thompson 1952).

        V^_IPS = (1/n) sum_i w_i r_i,   w_i = pi(a_i | x_i) / pi_0(a_i | x_i)

    Unbiased when the propensities are exact and pi_0(a | x) > 0 wherever pi(a | x) > 0.
    """

    name = "ips"

    def _terms(self, data: BanditData) -> tuple[np.ndarray, None]:
        return data.weight * data.reward, None


@dataclass(frozen=True)
class SNIPS(_Estimator):
    """Self-normalised IPS (Swaminathan & Joachims 2015).

        V^_SNIPS = sum_i w_i r_i / sum_i w_i

    Biased (consistent) but scale-invariant and of lower variance than IPS; equals IPS when
    mean_i w_i = 1. Undefined if every weight is zero (raises).
    """

    name = "snips"

    def _terms(self, data: BanditData) -> tuple[np.ndarray, np.ndarray]:
        w = data.weight
        if w.sum() <= 0:
            raise ValueError("SNIPS is undefined: every importance weight is zero")
        return w * data.reward, w


@dataclass(frozen=True)
class DM(_Estimator):
    """Direct method: plug a reward model into the target policy.

        V^_DM = (1/n) sum_i sum_a pi(a | x_i) q^(x_i, a)

    Uses no logged rewards; biased by the reward model's error, with low variance.
    """

    name = "dm"

    def _terms(self, data: BanditData) -> tuple[np.ndarray, None]:
        dm, _ = data.model_terms("DM")
        return dm, None


@dataclass(frozen=True)
class DR(_Estimator):
    """Doubly robust (Dudik, Langford & Li 2011).

        V^_DR = (1/n) sum_i [ sum_a pi(a | x_i) q^(x_i, a) + w_i (r_i - q^(x_i, a_i)) ]

    Unbiased with exact propensities whatever q^ is; its variance shrinks as q^ approaches E[r|x,a].
    """

    name = "dr"

    def _terms(self, data: BanditData) -> tuple[np.ndarray, None]:
        dm, q_fact = data.model_terms("DR")
        return dm + data.weight * (data.reward - q_fact), None


@dataclass(frozen=True)
class SwitchDR(_Estimator):
    """Switch doubly robust (Wang, Agarwal & Dudik 2017; in the DR form of Open Bandit Pipeline).

        V^_Switch-DR = (1/n) sum_i [ sum_a pi(a | x_i) q^(x_i, a)
                                     + 1[w_i <= tau] w_i (r_i - q^(x_i, a_i)) ]

    The importance-weighted correction is kept only where the weight is at most tau; rows with
    larger weights rely on the reward model alone. tau = 0 gives DM exactly (a zero weight adds
    zero), tau = inf gives DR exactly.

    Args:
        tau: the switching threshold, >= 0 (``math.inf`` allowed).
    """

    tau: float = math.inf
    name = "switch-dr"

    def __post_init__(self) -> None:
        if not (isinstance(self.tau, numbers.Real) and not isinstance(self.tau, bool) and self.tau >= 0):  # NaN fails the comparison
            raise ValueError(f"tau must be a number >= 0, got {self.tau!r}")

    def _terms(self, data: BanditData) -> tuple[np.ndarray, None]:
        dm, q_fact = data.model_terms("Switch-DR")
        w = data.weight
        keep = w <= self.tau
        return dm + np.where(keep, w * (data.reward - q_fact), 0.0), None


def to_obp_bandit_feedback(
    data: BanditData, context: np.ndarray | None = None, action_context: np.ndarray | None = None
) -> dict:
    """Open Bandit Pipeline's ``bandit_feedback`` dict for ``data`` (a single slot: position 0).

    ``context`` defaults to the context key as one column, (n, 1); ``action_context`` to the
    identity, (A, A). The target policy goes to obp's estimators as ``action_dist =
    pi_all[:, :, None]`` and a reward model as ``estimated_rewards_by_reg_model = q_hat_all[:, :, None]``
    (see :func:`obp_action_dist`).

    On this dict obp's ``InverseProbabilityWeighting``, ``SelfNormalizedInverseProbabilityWeighting``,
    ``DirectMethod``, ``DoublyRobust`` and ``SwitchDoublyRobust`` give :class:`IPS`, :class:`SNIPS`,
    :class:`DM`, :class:`DR` and :class:`SwitchDR` to float rounding (tests/test_ope.py, obp 0.5.7 and
    0.4.1), with two conventions to mind: obp's ``lambda_`` is a weight *clipping* cap in IPS and DR
    (keep its default, inf, to match ours) but the switching threshold ``tau`` in
    ``SwitchDoublyRobust`` (spelled ``tau`` in obp 0.4), and obp's DM divides by sum_a pi(a | x), so
    it matches ours exactly only when the rows of ``pi_all`` sum to one (ours accept PI_SUM_TOL).
    ``context`` holds the context key only (a user id here, not the round in ``timestamp``): fine for
    the estimators, which ignore it, but no feature for obp's ``RegressionModel``.
    """
    if data.n_actions is None:
        raise ValueError("to_obp_bandit_feedback needs n_actions (give it, or pi_all / q_hat_all)")
    n, A = len(data), data.n_actions
    ctx = data.context.astype(np.float64)[:, None] if context is None else np.asarray(context)
    if ctx.ndim != 2 or ctx.shape[0] != n:
        raise ValueError(f"context has shape {ctx.shape}, expected ({n}, dim_context)")
    act_ctx = np.eye(A) if action_context is None else np.asarray(action_context)
    if act_ctx.ndim != 2 or act_ctx.shape[0] != A:
        raise ValueError(f"action_context has shape {act_ctx.shape}, expected ({A}, dim_action_context)")
    return {
        "n_rounds": n,
        "n_actions": A,
        "action": data.action.copy(),
        "position": np.zeros(n, dtype=np.int64),
        "reward": data.reward.copy(),
        "pscore": data.pscore.copy(),
        "context": ctx,
        "action_context": act_ctx,
    }


def obp_action_dist(probabilities: np.ndarray) -> np.ndarray:
    """(n, A) action probabilities or reward-model values as obp's (n, A, len_list=1) array."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"expected an (n, n_actions) array, got shape {p.shape}")
    return p[:, :, None]


RewardKind = str
"""``"true"`` (the sealed r*) or a name in ``signals.REWARDS``."""


def bandit_data_from_logs(
    interactions: pd.DataFrame,
    sealed_impressions: pd.DataFrame,
    position: int = 0,
    reward: RewardKind = "true",
    n_actions: int | None = None,
    pscore: np.ndarray | None = None,
) -> BanditData:
    """Bandit rows from the simulator's logs: one row per slate, the item at ``position``.

    Context x_i = (user u_i, round t_i) (``context`` holds the user id, ``timestamp`` the round),
    action a_i = the item shown at ``position``, pscore = the sealed ``propensity_item``, the
    logger's single-draw probability pi_0(a_i | u_i, t_i). Only at position 0 is this the exact
    propensity of the logged action (the first Plackett-Luce draw is one draw from pi_0); later
    positions are drawn without replacement, so ``position`` other than 0 is refused.

    Reward, and the estimand each choice estimates with a target pi(a | x):

    * ``"true"``: the sealed r*(u_i, a_i, t_i). Estimand: the mean over logged contexts of
      E_{a ~ pi(.|x)} r*(x, a), i.e. V = E_x sum_a pi(a | x) r*(u, a, t) with x drawn as the logs
      drew them (the ground truth's V(pi) when r* does not change over time, e.g. satiation
      strength 0, and pi depends on the user only).
    * ``"click"``: the observed click on the top item. Estimand: the probability that the user
      clicks the top item when pi picks it and the logger fills the rest of the slate (its
      Plackett-Luce continuation given the top item), with the logs' position bias and trend pull.
    * a signal of a click (``"rating"``, ``"watch"``, any of ``signals.SIGNALS``): its observed value
      on the top item if clicked, 0 otherwise (and 0 where a clicked item has no feedback, NaN in the
      logs). Estimand: the expected (noisy, trend-biased) signal collected at the top slot under the
      same slates.

    ``pscore`` (n_rows,), if given, replaces the sealed ``propensity_item`` (e.g. estimated
    propensities); it is required when the sealed impressions hold none (logs simulated with
    ``logging.propensity_mode = "none"``).

    The returned data carry a placeholder target (pi_on_action = 0); set the target policy with
    ``data.with_policy(pi_all=...)`` (and a reward model with ``with_reward_model``).
    """
    if position != 0:
        raise ValueError(f"only position 0 has an exact single-draw propensity, got position={position}")
    if reward not in ("true", *REWARDS):
        raise ConfigError(f"reward = {reward!r} is not allowed: must be one of true, {', '.join(REWARDS)}")
    if len(interactions) != len(sealed_impressions):
        raise ValueError(
            f"interactions ({len(interactions)} rows) and sealed impressions ({len(sealed_impressions)}) are not aligned"
        )
    keys = ["slate_id", "position"]
    if not all(np.array_equal(interactions[k].to_numpy(), sealed_impressions[k].to_numpy()) for k in keys):
        raise ValueError("interactions and sealed impressions are not aligned row by row (slate_id, position differ)")
    top = (interactions["position"].to_numpy() == position)
    pub = interactions.loc[top]
    sealed = sealed_impressions.loc[top]
    if reward == "true":
        r = sealed["true_reward"].to_numpy(np.float64)
    elif reward == "click":
        r = pub["click"].to_numpy(np.float64)
    else:
        r = np.where(pub["click"].to_numpy() == 1, pub[reward].to_numpy(np.float64), 0.0)
        r = np.nan_to_num(r, nan=0.0)  # a clicked item without feedback counts as 0
    if pscore is None:
        if "propensity_item" not in sealed.columns:
            raise LogError(
                "the sealed impressions hold no propensities (propensity_mode = 'none'); "
                "pass estimated ones as pscore"
            )
        pscore = sealed["propensity_item"].to_numpy(np.float64)
    return BanditData(
        context=pub["user_id"].to_numpy(np.int64),
        action=pub["item_id"].to_numpy(np.int64),
        reward=r,
        pscore=pscore,
        pi_on_action=np.zeros(len(pub)),  # placeholder until with_policy(...) sets the target
        n_actions=n_actions,
        timestamp=pub["timestamp"].to_numpy(np.int64),
    )
