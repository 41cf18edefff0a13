"""Post-training of sequence policies from public logs, one file per method.

Never imports the world, the logger or the sealed logs: training sees only what a real company has.
"""

from .bc import BCConfig, bc_loss
from .data import Batch, Windows, make_windows
from .exp_rsft import ExpRSFTConfig, exp_rsft_loss
from .loop import TrainConfig, fit
from .recipe import METHODS, AgentConfig, MethodConfig, load_agent, method_config_from_dict, post_train, pretrain

__all__ = [
    "AgentConfig",
    "Batch",
    "BCConfig",
    "ExpRSFTConfig",
    "METHODS",
    "MethodConfig",
    "TrainConfig",
    "Windows",
    "bc_loss",
    "exp_rsft_loss",
    "fit",
    "load_agent",
    "make_windows",
    "method_config_from_dict",
    "post_train",
    "pretrain",
]
