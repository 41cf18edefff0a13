"""Register every scenario preset as a Gymnasium id, ``RecSimPost/<preset>-v0``.

Kept light (no numba, no torch) because ``import recsim_post`` runs it.
"""

from __future__ import annotations

import gymnasium

from ..presets import preset_names

NAMESPACE = "RecSimPost"


def env_id(preset: str) -> str:
    """The Gymnasium id of a scenario preset."""
    return f"{NAMESPACE}/{preset}-v0"


def register_envs() -> list[str]:
    """Register all presets (idempotent); returns their ids."""
    ids = []
    for name in preset_names("envs"):
        eid = env_id(name)
        if eid not in gymnasium.registry:
            gymnasium.register(
                id=eid,
                entry_point="recsim_post.envs.recsim_env:RecSimEnv",
                vector_entry_point="recsim_post.envs.vector_env:RecSimVectorEnv",
                kwargs={"scenario": name},
                max_episode_steps=None,
            )
        ids.append(eid)
    return ids
