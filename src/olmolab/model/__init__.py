"""The OLMo / OLMo 2 model: config and presets, the decoder, its loss, its caches for decoding."""

from olmolab.model.config import ModelConfig, pad_vocab
from olmolab.model.kv_cache import KVCache, StaticKVCache
from olmolab.model.loss import LMLoss, cross_entropy_loss, linear_cross_entropy
from olmolab.model.transformer import Transformer

__all__ = [
    "KVCache",
    "LMLoss",
    "ModelConfig",
    "StaticKVCache",
    "Transformer",
    "cross_entropy_loss",
    "linear_cross_entropy",
    "pad_vocab",
]
