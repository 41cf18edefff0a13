"""One integer seed -> a tree of independent, named random streams.

``SeedTree(7).child("world").generator("items")`` always gives the same stream, and it does not
change when another branch (say ``"logging"``) is consumed differently or re-seeded. Names are
hashed with CRC-32 (stable across processes, unlike ``hash``) into numpy ``SeedSequence`` spawn keys.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np


def _key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


@dataclass(frozen=True)
class SeedTree:
    """A node in the seed tree: a root seed and the path of names that leads here."""

    seed: int
    path: tuple[int, ...] = ()

    def child(self, name: str) -> "SeedTree":
        """The independent sub-tree called ``name``."""
        return SeedTree(self.seed, self.path + (_key(name),))

    def sequence(self) -> np.random.SeedSequence:
        return np.random.SeedSequence(self.seed, spawn_key=self.path)

    def generator(self, name: str | None = None) -> np.random.Generator:
        """A numpy Generator for this node (or for its child ``name``)."""
        node = self.child(name) if name is not None else self
        return np.random.Generator(np.random.PCG64(node.sequence()))

    def integer(self, name: str) -> int:
        """A 63-bit integer seed for libraries that want one (torch, gymnasium)."""
        return int(self.child(name).sequence().generate_state(2, np.uint64)[0] >> np.uint64(1))
