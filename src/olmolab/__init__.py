"""olmolab: a fully open OLMo / OLMo 2 stack."""

from olmolab.model import KVCache, ModelConfig, Transformer
from olmolab.model_files import load

__version__ = "0.1.0"

__all__ = ["KVCache", "ModelConfig", "Transformer", "load", "__version__"]
