"""Sequence policies over item ids (SASRec, HSTU) and over semantic-ID tokens (``token.py``).
Never imports the world, the logger or the sealed logs."""

from .device import autocast, pick_device
from .hstu import HSTU, HSTUConfig, pointwise_attention_weights
from .policy import MODEL_CONFIGS, ModelConfig, SequencePolicy, build_model, model_config_from_dict
from .sasrec import SASRec, SASRecConfig
from .token import PrefixTrie, TokenHeadConfig, TokenModel, TokenPolicy, sample_next, target_scorer
from .load import TrainedPolicy, load_policy

__all__ = [
    "autocast",
    "pick_device",
    "HSTU",
    "HSTUConfig",
    "pointwise_attention_weights",
    "SASRec",
    "SASRecConfig",
    "SequencePolicy",
    "build_model",
    "model_config_from_dict",
    "ModelConfig",
    "MODEL_CONFIGS",
    "PrefixTrie",
    "TokenHeadConfig",
    "TokenModel",
    "TokenPolicy",
    "TrainedPolicy",
    "load_policy",
    "sample_next",
    "target_scorer",
]
