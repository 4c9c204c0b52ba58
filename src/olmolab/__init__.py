"""olmolab: a fully open OLMo / OLMo 2 stack."""

from olmolab.model import KVCache, ModelConfig, Transformer

__version__ = "0.1.0"


def load(path, device="cpu"):
    """(model, tokenizer) from an olmolab checkpoint, a revision directory or an HF directory."""
    from olmolab.io import load as _load

    return _load(path, device=device)


__all__ = ["KVCache", "ModelConfig", "Transformer", "load", "__version__"]
