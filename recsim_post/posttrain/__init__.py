"""Post-training of sequence policies from public logs, one file per method.

Never imports the world, the logger or the sealed logs: training sees only what a real company has.
``METHODS`` maps each method's name to its module (``CONFIG``, ``needs_reward_model``, ``train``).
"""

from .asft import ASFTConfig, asft_loss
from .bc import BCConfig, bc_loss
from .cql import CQLConfig, cql_loss
from .data import Batch, PostTrainData, Windows, make_windows
from .dpo import DPOConfig, dpo_loss
from .exp_rsft import ExpRSFTConfig, exp_rsft_loss
from .grpo import GRPOConfig, grpo_loss
from .ipo import IPOConfig, ipo_loss
from .linear_rsft import LinearRSFTConfig, linear_rsft_loss
from .loop import Run, TrainConfig, decay_groups, fit, param_group, train_copy, window_batches
from .ppo import PPOConfig, ppo_loss
from .recipe import (
    METHODS, AgentConfig, MethodConfig, fit_reward, load_agent, method_config_from_dict,
    needs_reward_model, post_train, pretrain,
)
from .reward_model import (
    GlobalMeanReward, ItemMeanReward, RewardEnsemble, RewardModel, RewardModelConfig,
    TableRewardModel, UserMeanReward, fit_reward_model,
)

__all__ = [
    "AgentConfig", "ASFTConfig", "Batch", "BCConfig", "CQLConfig", "DPOConfig", "ExpRSFTConfig",
    "GRPOConfig", "GlobalMeanReward", "IPOConfig", "ItemMeanReward", "LinearRSFTConfig", "METHODS",
    "MethodConfig", "PPOConfig", "PostTrainData", "RewardEnsemble", "RewardModel",
    "RewardModelConfig", "Run", "TableRewardModel", "TrainConfig", "UserMeanReward", "Windows",
    "asft_loss", "bc_loss", "cql_loss", "decay_groups", "dpo_loss", "exp_rsft_loss", "fit", "fit_reward",
    "fit_reward_model", "grpo_loss", "ipo_loss", "linear_rsft_loss", "load_agent", "make_windows",
    "method_config_from_dict", "needs_reward_model", "param_group", "post_train", "ppo_loss", "pretrain",
    "train_copy", "window_batches",
]
