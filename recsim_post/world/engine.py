"""One round of the world, written once.

Every consumer of the world runs the same round: ``simulate`` (the logging policy writes the logs),
closed-loop rollouts (a trained policy is deployed after the logs end), both Gymnasium envs (an
agent serves the world's requests) and the benchmarks. A round is::

    begin   who asks for a slate (activity, presence), their random numbers, the trend they see
    serve   a slate for each of them (the caller's: a logger, a policy, an agent)
    respond each user chooses (at most) one item of her slate by the choice model, and every
            feedback signal of the click is recorded (world/feedback.py)
    end     the world moves on: popularity feeds on exposure and clicks, shocks decay and arrive,
            satiation decays and grows, preferences drift, sessions end and users come back

:func:`step_round` runs the four in one call; an env that serves requests one at a time calls
:func:`begin_round`, :func:`respond` per request and :func:`end_round` once everyone was served.
The choice and the signals are computed row by row, so serving a round in pieces gives exactly what
serving it at once gives: an env driven by the logger's slates reproduces ``simulate``'s logs.

Random streams (:class:`Streams`) are named, so the same world can be run under the logs' names
(``Streams.logging``) or a rollout's (``Streams.flat``) and each stream is drawn in the same order
by every consumer. With ``simulation.streams = "per-user"`` (:meth:`Streams.logging` of such a
scenario) every per-user number (activity, choice, signal draws, slate uniforms, returns) is keyed
by (round, user) instead (``world/keyed.py``): a round served for any subset of the users gives
those users exactly the numbers it gives them in the whole population, which is what lets
``logs/sharded.py`` split the users into shards. Shocks stay sequential (population-level).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..seeding import SeedTree
from . import feedback
from .keyed import UserStreams
from .world import World


@dataclass
class Streams:
    """The random streams one run of the world draws from."""

    activity: np.random.Generator  # who asks for a slate: one uniform per user and round
    choice: np.random.Generator  # what each asking user picks: one uniform per request
    shocks: np.random.Generator  # exogenous shocks at the end of each round
    dynamics: np.random.Generator  # who comes back after leaving (sessions)
    signals: dict[str, np.random.Generator] = field(default_factory=dict)  # per signal stream name
    keyed: UserStreams | None = None  # per-user streams: then activity, choice, signals, dynamics go unused

    @classmethod
    def logging(cls, tree: SeedTree, per_user: bool = False) -> "Streams":
        """The streams of ``simulate`` under the scenario's root ``tree``: users/activity,
        users/choice, world/shocks, users/dynamics and the signal streams at the root;
        ``per_user``: the per-user numbers keyed under ``per-user/`` instead (shocks unchanged)."""
        users = tree.child("users")
        return cls(users.generator("activity"), users.generator("choice"), tree.child("world").generator("shocks"),
                   users.generator("dynamics"), {s: tree.generator(s) for s in feedback.SIGNAL_STREAMS},
                   UserStreams.create(tree) if per_user else None)

    @classmethod
    def flat(cls, tree: SeedTree) -> "Streams":
        """Every stream a direct child of ``tree`` (a closed-loop rollout's ``seed/rollout``)."""
        return cls(tree.generator("activity"), tree.generator("choice"), tree.generator("shocks"),
                   tree.generator("dynamics"), {s: tree.generator(s) for s in feedback.SIGNAL_STREAMS})


@dataclass
class Round:
    """A round that has begun: who asks, with what random numbers, seeing which trend."""

    t: int  # the world's round
    users: np.ndarray  # (n,) int64: the users asking for a slate, ascending
    trend: np.ndarray  # (I,) the trend at the start of the round, what every slate is chosen against
    u_choice: np.ndarray  # (n,) the choice model's uniforms
    draws: dict[str, np.ndarray]  # (n,) per signal draw (world/feedback.py DRAWS)

    @property
    def n(self) -> int:
        return len(self.users)


@dataclass
class Responses:
    """What users did with their slates (rows of a round)."""

    choice: np.ndarray  # (m,) int32: slate position chosen, -1 for no click
    rstar: np.ndarray  # (m, K) float64: r* of every shown item at the round's start
    signals: dict[str, np.ndarray]  # (m,) float32 per signal (NaN without a click)

    @property
    def clicked(self) -> np.ndarray:
        return self.choice >= 0

    @property
    def rstar_chosen(self) -> np.ndarray:
        """(m,) r* of the chosen item (of position 0 where nothing was chosen)."""
        return self.rstar[np.arange(len(self.choice)), np.maximum(self.choice, 0)]


SlateFn = Callable[[World, Round], tuple[np.ndarray, Mapping[str, np.ndarray]]]
"""Serves a round: ``(world, round) -> (slates (n, K) int, per-row extras {name: (n, ...)})``."""


@dataclass
class RoundRecord:
    """One finished round: the requests, the slates, the responses and the server's extras."""

    t: int
    users: np.ndarray
    slates: np.ndarray
    responses: Responses
    extras: Mapping[str, np.ndarray]

    @property
    def clicked_users(self) -> np.ndarray:
        return self.users[self.responses.clicked]

    @property
    def clicked_items(self) -> np.ndarray:
        c = self.responses.choice
        return self.slates[c >= 0, c[c >= 0]].astype(np.int64)


def begin_round(world: World, streams: Streams, cohort: np.ndarray | None = None) -> Round:
    """Who asks for a slate this round, and their random numbers.

    ``cohort``: (N,) bool, the users served at all (a rollout's cohort); the others ask for nothing
    (their activity uniforms are still drawn, so the cohort does not move any stream).
    """
    t, keyed = world.state.round, streams.keyed
    if keyed is not None:
        users = world.active_users(keyed.uniforms("activity", t, np.arange(world.n_users)))
    else:
        users = world.active_users(streams.activity.random(world.n_users))
    if cohort is not None:
        users = users[cohort[users]]
    n = len(users)
    if keyed is not None:
        u_choice = keyed.uniforms("choice", t, users)
        draws = {d.name: (keyed.normals if d.kind == "normal" else keyed.uniforms)(d.name, t, users)
                 for d in feedback.DRAWS}
    else:
        u_choice = streams.choice.random(n)
        draws = feedback.draw(streams.signals, n)
    return Round(t, users, world.trend(), u_choice, draws)


def respond(world: World, rnd: Round, slates: np.ndarray, rows: slice | np.ndarray | None = None,
            reference: bool = False) -> Responses:
    """Users of ``rnd`` (all, or ``rows``) choose from their ``slates`` (one row per user served
    here) and every signal of their click is recorded. Row by row: serving a round in pieces gives
    what serving it at once gives. ``reference`` runs the choice's plain-numpy reference."""
    take = slice(None) if rows is None else rows
    users = rnd.users[take]
    choice, rstar, _ = world.choose(users, slates, rnd.u_choice[take], trend=rnd.trend, reference=reference)
    clicked = choice >= 0
    r_chosen = rstar[np.arange(len(choice)), np.maximum(choice, 0)]
    draws = {k: v[take] for k, v in rnd.draws.items()}
    if world.users.rating_bias is not None:  # the user's fixed offset, not a random number of the round
        draws[feedback.RATING_BIAS] = world.users.rating_bias[users]
    observed = feedback.observe(world.cfg.feedback, r_chosen, clicked, draws)
    return Responses(choice, rstar, observed)


def end_round(world: World, rnd: Round, slates: np.ndarray, choice: np.ndarray, streams: Streams) -> None:
    """The world moves on after every user of ``rnd`` was served ``slates`` and chose ``choice``."""
    clicked = choice >= 0
    items = slates[clicked, choice[clicked]].astype(np.int64)
    world.advance(slates, rnd.users[clicked], items, streams.shocks, rnd.users, streams.dynamics,
                  u_return=return_uniforms(world, streams.keyed))


def return_uniforms(world: World, keyed: UserStreams | None) -> np.ndarray | None:
    """Per-user streams with sessions on: every held user's uniform of coming back this round
    (None otherwise: :meth:`World.advance` then draws them from its sequential stream)."""
    if keyed is None or world.cfg.dynamics.session_budget <= 0:
        return None
    return keyed.uniforms("dynamics", world.state.round, np.arange(world.n_users))


def step_round(world: World, streams: Streams, serve: SlateFn, cohort: np.ndarray | None = None) -> RoundRecord:
    """One whole round: begin, ``serve`` every request, respond, end."""
    rnd = begin_round(world, streams, cohort)
    slates, extras = serve(world, rnd)
    slates = np.ascontiguousarray(slates, dtype=np.int32)
    if slates.ndim != 2 or slates.shape[0] != rnd.n:
        raise ValueError(f"serve returned slates of shape {slates.shape}, expected ({rnd.n}, K)")
    resp = respond(world, rnd, slates)
    end_round(world, rnd, slates, resp.choice, streams)
    return RoundRecord(rnd.t, rnd.users, slates, resp, dict(extras))


__all__ = [
    "Responses", "Round", "RoundRecord", "SlateFn", "Streams", "begin_round", "end_round", "respond", "return_uniforms",
    "step_round",
]
