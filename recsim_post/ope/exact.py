"""The exact truth of OPE's estimand: r*(u_i, a, t_i) at every logged context, for every item.

    V_exact(pi) = (1/n) sum_i sum_a pi(a | x_i) r*(u_i, a, t_i)

r*(u, a, t) = theta_u(t) . v_a + q_a - strength * S_u,genre(a)(t) changes over time through
satiation (and preference drift). S(t) is rebuilt from the public clicks (S(0) = 0, S(t+1) = decay *
S(t) + clicks of genre g in round t) and checked against the sealed satiation at T and the sealed r*
of every logged row; theta_u(t) comes from the sealed theta history. Any mismatch raises LogError:
the truth is exact or it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import LogError
from ..logs.public import PublicLogs
from ..truth.ground_truth import GroundTruth
from ..world.kernels import replay_satiation, true_reward_pairs, true_reward_rows
from .data import CHUNK_ROWS, LoggedContexts


def satiation_at_rows(
    ctx: LoggedContexts, clicks: pd.DataFrame, genre: np.ndarray, n_users: int, n_genres: int, decay: float, n_rounds: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-genre satiation of each row's user at the start of its round, (n, G), and the state at the
    end: the world's own satiation update (world.kernels.replay_satiation) replayed on the public clicks."""
    try:
        return replay_satiation(
            n_users, n_genres, decay, n_rounds,
            clicks["user_id"].to_numpy(np.int64), genre[clicks["item_id"].to_numpy(np.int64)],
            clicks["timestamp"].to_numpy(np.int64), ctx.user, ctx.timestamp,
        )
    except ValueError as err:
        raise LogError(f"the logged clicks do not fit the sealed world: {err}") from None


@dataclass(frozen=True)
class ExactReward:
    """r*(u_i, a, t_i) for the logged rows, rebuilt exactly (see the module docstring)."""

    truth: GroundTruth
    ctx: LoggedContexts
    sat_rows: np.ndarray  # (n, G)

    def rows(self, sl: slice) -> np.ndarray:
        """r*(u_i, a, t_i) = theta_u(t_i) . v_a + q_a - strength * S_u,genre(a)(t_i) for rows ``sl``, all a.

        theta_u(t_i) is the preference at the start of round t_i (sealed history; constant without drift).
        """
        tr, s = self.truth, self.truth.scenario.satiation.strength
        theta = tr.user_theta(self.ctx.user[sl], self.ctx.timestamp[sl])
        return true_reward_rows(theta, self.sat_rows[sl], tr.vectors, tr.quality, tr.genre, s)

    def at(self, sl: slice, items: np.ndarray) -> np.ndarray:
        """r*(u_i, items[i], t_i) for the rows ``sl``: (rows,), one item per row (no catalogue-wide rows)."""
        tr, s = self.truth, self.truth.scenario.satiation.strength
        theta = tr.user_theta(self.ctx.user[sl], self.ctx.timestamp[sl])
        return true_reward_pairs(theta, self.sat_rows[sl], tr.vectors, tr.quality, tr.genre, s, items)


def exact_reward(truth: GroundTruth, logs: PublicLogs, ctx: LoggedContexts, sealed_r: np.ndarray, tol: float = 1e-6) -> ExactReward:
    """Rebuild r* at every logged (u, t) and check it against the sealed satiation and rewards.

    Satiation S(t) is rebuilt from the public clicks; with preference drift (dynamics.drift_rate > 0)
    theta_u(t) comes from the sealed theta history (GroundTruth.user_theta), whose last state must be
    the sealed theta at T. A log without that history (older versions) raises LogError.
    """
    sc = truth.scenario
    n_rounds = sc.simulation.n_rounds
    if sc.dynamics.drift_rate > 0 and not np.array_equal(truth.theta_at(n_rounds), truth.theta):
        raise LogError("the sealed theta history does not end at the sealed preferences at T")
    clicks = logs.interactions[logs.interactions["click"].to_numpy() == 1]
    sat_rows, S_T = satiation_at_rows(
        ctx, clicks, truth.genre, truth.n_users, truth.satiation.shape[1], sc.satiation.decay, n_rounds
    )
    if sc.satiation.strength != 0 and not np.allclose(S_T, truth.satiation, atol=tol):
        raise LogError("satiation rebuilt from the public clicks does not match the sealed satiation at T")
    ex = ExactReward(truth, ctx, sat_rows)
    worst = 0.0
    for lo in range(0, len(ctx), CHUNK_ROWS):
        sl = slice(lo, lo + CHUNK_ROWS)
        worst = max(worst, float(np.abs(ex.at(sl, ctx.action[sl]) - sealed_r[sl]).max()))
    if worst > 1e-4:
        raise LogError(f"exact r* rebuilt for the logged rows differs from the sealed r* by up to {worst:.3g}")
    return ex


__all__ = ["ExactReward", "exact_reward", "satiation_at_rows"]
