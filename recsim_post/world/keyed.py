"""Per-user random streams: every random number a pure function of (stream, round, user, draw).

With ``simulation.streams = "per-user"`` a user's random numbers of round t do not come from a
whole-population generator drawn in user order (``"sequential"``, the default), but are hashed
from counters::

    x = mix(mix(mix(key + G * (t + 1)) + G * (user + 1)) + G * (j + 1))      (uint64, wrapping)
    uniform = (x >> 11) * 2^-53                                                in [0, 1)
    normal  = sqrt(-2 log(1 - u_2j)) * cos(2 pi u_2j+1)                        (Box-Muller)

``key`` is the stream's 64-bit key (:meth:`UserStreams.create`, from the scenario's seed tree and
the stream's name), ``mix`` SplitMix64's finaliser and G its odd increment (the golden ratio).
Nothing depends on which users are drawn together, so a shard that owns users lo .. hi - 1 draws
exactly the numbers the whole population would have given them: logs simulated in any number of
shards are byte-identical (``logs/sharded.py``).

The Numba kernels have plain-numpy references (``tests/test_keyed.py`` holds them equal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ..seeding import SeedTree
from . import feedback

GAMMA = np.uint64(0x9E3779B97F4A7C15)
"""SplitMix64's increment: odd, so adding multiples of it never collides within 2^64 steps."""
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_ONE = np.uint64(1)
_TWO_53 = 2.0 ** -53


@numba.njit(cache=True, inline="always")
def _mix(z):  # pragma: no cover - compiled
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def keyed_uniforms(key: np.uint64, t: int, users: np.ndarray, k: int) -> np.ndarray:  # pragma: no cover - compiled
    """(len(users), k) float64 uniforms in [0, 1): draw j of ``users[b]`` in round ``t``."""
    gamma = np.uint64(0x9E3779B97F4A7C15)
    one = np.uint64(1)
    out = np.empty((users.shape[0], k), dtype=np.float64)
    base = _mix(np.uint64(key) + gamma * (np.uint64(t) + one))
    for b in range(users.shape[0]):
        h = _mix(base + gamma * (np.uint64(users[b]) + one))
        for j in range(k):
            x = _mix(h + gamma * (np.uint64(j) + one))
            out[b, j] = np.float64(x >> np.uint64(11)) * 1.1102230246251565e-16  # 2^-53
    return out


@numba.njit(cache=True, nogil=True)
def keyed_normals(key: np.uint64, t: int, users: np.ndarray, k: int) -> np.ndarray:  # pragma: no cover - compiled
    """(len(users), k) standard normals: Box-Muller of keyed uniforms 2j and 2j + 1."""
    u = keyed_uniforms(key, t, users, 2 * k)
    out = np.empty((users.shape[0], k), dtype=np.float64)
    for b in range(users.shape[0]):
        for j in range(k):
            out[b, j] = np.sqrt(-2.0 * np.log(1.0 - u[b, 2 * j])) * np.cos(2.0 * np.pi * u[b, 2 * j + 1])
    return out


def _mix_ref(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def keyed_uniforms_ref(key: int, t: int, users: np.ndarray, k: int) -> np.ndarray:
    """Plain-numpy reference of :func:`keyed_uniforms` (uint64 arrays wrap like the kernel)."""
    with np.errstate(over="ignore"):
        base = _mix_ref(np.array([key], np.uint64) + GAMMA * (np.array([t], np.uint64) + _ONE))
        h = _mix_ref(base + GAMMA * (np.asarray(users).astype(np.uint64) + _ONE))
        x = _mix_ref(h[:, None] + GAMMA * (np.arange(k, dtype=np.uint64) + _ONE)[None, :])
    return (x >> np.uint64(11)).astype(np.float64) * _TWO_53


def keyed_normals_ref(key: int, t: int, users: np.ndarray, k: int) -> np.ndarray:
    """Plain-numpy reference of :func:`keyed_normals`."""
    u = keyed_uniforms_ref(key, t, users, 2 * k)
    return np.sqrt(-2.0 * np.log(1.0 - u[:, 0::2])) * np.cos(2.0 * np.pi * u[:, 1::2])


def stream_key(tree: SeedTree) -> int:
    """The 64-bit key of a stream: the first word of its node's SeedSequence state."""
    return int(tree.sequence().generate_state(1, np.uint64)[0])


STREAM_NAMES: tuple[str, ...] = ("activity", "choice", "slates", "dynamics") + tuple(d.name for d in feedback.DRAWS)
"""The per-user streams: who asks (activity), what she picks (choice), her slate's K uniforms
(slates), whether she comes back (dynamics) and one stream per signal draw (world/feedback.py
DRAWS: a key each, so a normal and a uniform of one sequential stream never share counters).
Population-level randomness (shocks, suggestion campaigns, the switching chain) stays on the
sequential generators of the driver."""


@dataclass(frozen=True)
class UserStreams:
    """The keys of the per-user streams of a run, and the id of the first user held here.

    ``offset``: a shard holds users ``offset ..`` under local ids ``0 ..``; draws are keyed by the
    global id ``offset + local``, so they do not depend on how the population is split.
    """

    keys: dict[str, int]
    offset: int = 0

    @classmethod
    def create(cls, tree: SeedTree, offset: int = 0) -> "UserStreams":
        """Keys under ``tree/per-user/<name>``: a branch of its own, so no sequential stream moves."""
        node = tree.child("per-user")
        return cls({name: stream_key(node.child(name)) for name in STREAM_NAMES}, offset)

    def shifted(self, offset: int) -> "UserStreams":
        """The same streams for a shard whose first user is ``offset``."""
        return UserStreams(self.keys, offset)

    def uniforms(self, stream: str, t: int, users: np.ndarray, k: int | None = None) -> np.ndarray:
        """Uniforms of local ``users`` in round ``t``: (n,), or (n, k) with ``k``."""
        ids = np.asarray(users, dtype=np.int64) + self.offset
        u = keyed_uniforms(np.uint64(self.keys[stream]), t, ids, 1 if k is None else k)
        return u[:, 0] if k is None else u

    def normals(self, stream: str, t: int, users: np.ndarray, k: int | None = None) -> np.ndarray:
        """Standard normals of local ``users`` in round ``t``: (n,), or (n, k) with ``k``."""
        ids = np.asarray(users, dtype=np.int64) + self.offset
        z = keyed_normals(np.uint64(self.keys[stream]), t, ids, 1 if k is None else k)
        return z[:, 0] if k is None else z


__all__ = [
    "STREAM_NAMES", "UserStreams", "keyed_normals", "keyed_normals_ref", "keyed_uniforms", "keyed_uniforms_ref",
    "stream_key",
]
