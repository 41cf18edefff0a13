"""recsim-post: simulated worlds in which post-training of generative recommenders is scored
against the ground truth.

The pipeline, one module each (imports point down this list)::

    world       catalogue, users, trends, true reward, feedback noise, choice model
    behavior    the trend-driven logging policy and its exact propensities
    logs        roll the logger through the world -> public logs + a sealed table
    envs        Gymnasium environments over the same world
    models      sequence policies (SASRec-style) -- never see the world
    posttrain   one file per post-training method -- never see the world
    evaluation  the only reader of the truth: exact ground-truth value, offline metrics
"""

__version__ = "0.1.0"

from .envs.registration import register_envs as _register_envs

_register_envs()
