"""Gymnasium environments over the simulated world (``RecSimPost/<preset>-v0``)."""

from .registration import env_id, register_envs

__all__ = ["env_id", "register_envs"]
