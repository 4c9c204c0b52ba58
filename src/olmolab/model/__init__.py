"""The OLMo / OLMo 2 model: config and presets, the decoder, its loss."""

from olmolab.model.config import ModelConfig, pad_vocab
from olmolab.model.loss import LMLoss, cross_entropy_loss, linear_cross_entropy
from olmolab.model.transformer import KVCache, Transformer

__all__ = [
    "KVCache",
    "LMLoss",
    "ModelConfig",
    "Transformer",
    "cross_entropy_loss",
    "linear_cross_entropy",
    "pad_vocab",
]
