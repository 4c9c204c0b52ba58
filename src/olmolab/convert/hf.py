"""olmolab <-> Hugging Face transformers (`OlmoForCausalLM`, `Olmo2ForCausalLM`).

`export(model, dir)` writes a directory that `AutoModelForCausalLM.from_pretrained(dir)` loads
natively (no `trust_remote_code`); `load(dir)` reads such a directory back, including real
OLMo checkpoints saved by transformers. Every tensor is mapped by name and checked for shape
both ways: a key left over or missing is an error, never a silently re-initialised weight.

The name map (layer i; d = d_model, kv = n_kv_heads * head_dim, h = mlp_hidden_size):

| olmolab                                  | transformers                                     |
|------------------------------------------|--------------------------------------------------|
| embeddings.weight                        | model.embed_tokens.weight                        |
| blocks.i.attention.w_qkv.weight [d+2kv,d]| model.layers.i.self_attn.{q,k,v}_proj.weight     |
| blocks.i.attention.w_out.weight          | model.layers.i.self_attn.o_proj.weight           |
| blocks.i.attention.{q,k}_norm.weight     | model.layers.i.self_attn.{q,k}_norm.weight       |
| blocks.i.feed_forward.w_in.weight [2h,d] | model.layers.i.mlp.{up,gate}_proj.weight (up 1st)|
| blocks.i.feed_forward.w_out.weight       | model.layers.i.mlp.down_proj.weight              |
| blocks.i.attention_norm.weight           | model.layers.i.post_attention_layernorm.weight   |
| blocks.i.feed_forward_norm.weight        | model.layers.i.post_feedforward_layernorm.weight |
| norm.weight                              | model.norm.weight                                |
| lm_head.weight (absent when tied)        | lm_head.weight                                   |

OLMo 1 has no norm weights at all (its LayerNorm is non-parametric).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from olmolab.errors import UserError, first_line, refused_unpickling
from olmolab.files import write_safetensors
from olmolab.model import ModelConfig, Transformer
from olmolab.tokenizer import CHAT_TEMPLATE

ARCHITECTURES = {"olmo": "OlmoForCausalLM", "olmo2": "Olmo2ForCausalLM"}


# ---------------------------------------------------------------------- configs


def to_hf_config(config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    hf = {
        "architectures": [ARCHITECTURES[config.family]],
        "model_type": config.family,
        "vocab_size": config.embedding_size,  # HF's vocab_size is the padded embedding size
        "hidden_size": config.d_model,
        "intermediate_size": config.mlp_hidden_size,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "initializer_range": config.init_std,
        "use_cache": True,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "tie_word_embeddings": config.weight_tying,
        # Both spellings: older transformers read `rope_theta`, v5 reads `rope_parameters`.
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "dtype": str(dtype).removeprefix("torch."),
    }
    if config.family == "olmo2":
        hf["rms_norm_eps"] = config.norm_eps
    else:
        hf["clip_qkv"] = config.clip_qkv
    return hf


def from_hf_config(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UserError(
            f"{source}: model_type {model_type!r} is not an OLMo model; olmolab reads 'olmo' "
            f"(OlmoForCausalLM) and 'olmo2' (Olmo2ForCausalLM)"
        )
    if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias", False):
        raise UserError(f"{source}: only SwiGLU (hidden_act 'silu') without attention biases is supported")
    if hf.get("rope_scaling") or (hf.get("rope_parameters") or {}).get("rope_type", "default") != "default":
        raise UserError(f"{source}: RoPE scaling is not supported (rope_type must be 'default')")
    rope_theta = (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10_000.0))
    eos = hf.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    olmo2 = model_type == "olmo2"
    vocab = hf["vocab_size"]
    return ModelConfig(
        name=hf.get("_name_or_path") or model_type,
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        mlp_hidden_size=hf["intermediate_size"],
        vocab_size=vocab,
        embedding_size=vocab,
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=float(rope_theta),
        norm="rmsnorm" if olmo2 else "layernorm",
        norm_placement="post" if olmo2 else "pre",
        qk_norm=olmo2,
        norm_eps=hf.get("rms_norm_eps", 1e-5) if olmo2 else 1e-5,  # OLMo 1's eps is fixed in HF
        clip_qkv=None if olmo2 else hf.get("clip_qkv"),
        weight_tying=bool(hf.get("tie_word_embeddings", False)),
        init="normal" if olmo2 else "mitchell",
        init_std=hf.get("initializer_range", 0.02),
        eos_token_id=eos if eos is not None else 0,
        pad_token_id=hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 1,
        bos_token_id=hf.get("bos_token_id"),
    )


# ---------------------------------------------------------------------- weights


def to_hf_state_dict(model: Transformer) -> dict[str, Tensor]:
    c = model.config
    ours = model.state_dict()
    hf = {"model.embed_tokens.weight": ours["embeddings.weight"]}
    for i in range(c.n_layers):
        p, o = f"model.layers.{i}.", f"blocks.{i}."
        q, k, v = ours[o + "attention.w_qkv.weight"].split([c.d_model, c.kv_dim, c.kv_dim])
        up, gate = ours[o + "feed_forward.w_in.weight"].chunk(2)
        hf |= {
            p + "self_attn.q_proj.weight": q,
            p + "self_attn.k_proj.weight": k,
            p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": ours[o + "attention.w_out.weight"],
            p + "mlp.up_proj.weight": up,
            p + "mlp.gate_proj.weight": gate,
            p + "mlp.down_proj.weight": ours[o + "feed_forward.w_out.weight"],
        }
        if c.qk_norm:
            hf[p + "self_attn.q_norm.weight"] = ours[o + "attention.q_norm.weight"]
            hf[p + "self_attn.k_norm.weight"] = ours[o + "attention.k_norm.weight"]
        if c.norm == "rmsnorm":
            hf[p + "post_attention_layernorm.weight"] = ours[o + "attention_norm.weight"]
            hf[p + "post_feedforward_layernorm.weight"] = ours[o + "feed_forward_norm.weight"]
    if c.norm == "rmsnorm":
        hf["model.norm.weight"] = ours["norm.weight"]
    if not c.weight_tying:
        hf["lm_head.weight"] = ours["lm_head.weight"]
    return {k: t.contiguous() for k, t in hf.items()}


def from_hf_state_dict(hf: dict[str, Tensor], config: ModelConfig, source: str = "weights") -> dict[str, Tensor]:
    hf = dict(hf)
    if config.weight_tying:
        hf.pop("lm_head.weight", None)  # some writers store the tied head twice

    def take(key: str) -> Tensor:
        if key not in hf:
            raise UserError(f"{source}: missing tensor {key!r} (the file does not match its config.json)")
        return hf.pop(key)

    ours = {"embeddings.weight": take("model.embed_tokens.weight")}
    for i in range(config.n_layers):
        p, o = f"model.layers.{i}.", f"blocks.{i}."
        qkv = [take(p + f"self_attn.{x}_proj.weight") for x in "qkv"]
        ours[o + "attention.w_qkv.weight"] = torch.cat(qkv)
        ours[o + "attention.w_out.weight"] = take(p + "self_attn.o_proj.weight")
        ours[o + "feed_forward.w_in.weight"] = torch.cat([take(p + "mlp.up_proj.weight"),
                                                          take(p + "mlp.gate_proj.weight")])
        ours[o + "feed_forward.w_out.weight"] = take(p + "mlp.down_proj.weight")
        if config.qk_norm:
            ours[o + "attention.q_norm.weight"] = take(p + "self_attn.q_norm.weight")
            ours[o + "attention.k_norm.weight"] = take(p + "self_attn.k_norm.weight")
        if config.norm == "rmsnorm":
            ours[o + "attention_norm.weight"] = take(p + "post_attention_layernorm.weight")
            ours[o + "feed_forward_norm.weight"] = take(p + "post_feedforward_layernorm.weight")
    if config.norm == "rmsnorm":
        ours["norm.weight"] = take("model.norm.weight")
    if not config.weight_tying:
        ours["lm_head.weight"] = take("lm_head.weight")
    leftover = sorted(k for k in hf if not k.endswith("rotary_emb.inv_freq"))
    if leftover:
        raise UserError(f"{source}: unexpected tensors {leftover[:5]}{' ...' if len(leftover) > 5 else ''}")
    return ours


# ---------------------------------------------------------------------- directories


def export(model: Transformer, out_dir: str | Path, tokenizer=None, dtype: torch.dtype | None = None) -> Path:
    """Write `model` (and optionally its tokenizer) as a transformers model directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = dtype or next(model.parameters()).dtype
    state = {k: t.detach().to("cpu", dtype) for k, t in to_hf_state_dict(model).items()}
    write_safetensors(state, out / "model.safetensors")
    config = model.config
    (out / "config.json").write_text(json.dumps(to_hf_config(config, dtype), indent=2) + "\n")
    generation = {"eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id}
    if config.bos_token_id is not None:
        generation["bos_token_id"] = config.bos_token_id
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    if tokenizer is not None:
        write_tokenizer(tokenizer, out, config)
    return out


def write_tokenizer(tokenizer, out: Path, config: ModelConfig) -> None:
    """tokenizer.json plus the small files that let `AutoTokenizer.from_pretrained(out)` load it.

    `tokenizer` is an `olmolab.tokenizer.Tokenizer` or a path to a tokenizer.json. It must fit the
    model: no more tokens than embedding rows, and the model's EOS / PAD ids among its tokens.
    """
    from tokenizers import Tokenizer as HFTokenizer

    if isinstance(tokenizer, str | Path):
        try:
            raw = HFTokenizer.from_file(str(tokenizer))
        except Exception as e:  # tokenizers raises plain Exception for missing or bad files
            raise UserError(f"cannot load tokenizer {tokenizer}: {e}; pass a tokenizer.json file") from e
        source = str(tokenizer)
    else:
        raw, source = tokenizer.hf, f"tokenizer {tokenizer.name}"
    size = raw.get_vocab_size(with_added_tokens=True)
    if size > config.embedding_size:
        raise UserError(
            f"{source}: has {size} tokens but the model's embedding has only {config.embedding_size} rows; "
            f"this tokenizer does not belong to this model"
        )
    special = {}
    for what in ("eos", "pad", "bos"):
        token_id = getattr(config, f"{what}_token_id")
        if token_id is None:
            continue
        token = raw.id_to_token(token_id) if 0 <= token_id < size else None
        if token is None:
            raise UserError(
                f"{source}: the model's {what}_token_id {token_id} is not a token of this tokenizer "
                f"(ids 0..{size - 1}); fix the model config or pass the model's own tokenizer"
            )
        special[f"{what}_token"] = token
    if "eos_token" in special:  # the chat template starts with `bos_token`: OLMo 2's is its EOS
        special.setdefault("bos_token", special["eos_token"])
    raw.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.max_seq_len,
        "add_bos_token": False,
        "add_eos_token": False,
        **special,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def read_hf_weights(hf_dir: Path) -> dict[str, Tensor]:
    """All tensors of a transformers directory: one or sharded safetensors, else torch .bin files."""
    for index_name, loader in (("model.safetensors.index.json", load_file),
                               ("pytorch_model.bin.index.json", _load_torch_bin)):
        index = hf_dir / index_name
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state |= loader(str(hf_dir / shard))
            return state
    if (hf_dir / "model.safetensors").exists():
        return load_file(str(hf_dir / "model.safetensors"))
    if (hf_dir / "pytorch_model.bin").exists():
        return _load_torch_bin(str(hf_dir / "pytorch_model.bin"))
    raise UserError(f"{hf_dir}: no model.safetensors, sharded safetensors index or pytorch_model.bin found")


def _load_torch_bin(path: str) -> dict[str, Tensor]:
    """A .bin of tensors only: torch's restricted unpickler, never one that builds arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise refused_unpickling(path, e, "use a safetensors copy of the weights") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"{path}: cannot read the weights ({first_line(e)}); the file is missing or corrupt") from e
    if not isinstance(state, dict) or not all(isinstance(t, Tensor) for t in state.values()):
        raise UserError(f"{path}: expected a mapping of names to tensors")
    return state


def load(hf_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Transformer:
    """An olmolab `Transformer` from a transformers OLMo / OLMo 2 directory."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.exists():
        raise UserError(f"{hf_dir}: not a Hugging Face model directory (no config.json)")
    config = from_hf_config(json.loads(config_path.read_text()), source=str(config_path))
    state = from_hf_state_dict(read_hf_weights(hf_dir), config, source=str(hf_dir))
    check_shapes(state, config, source=str(hf_dir))
    return Transformer.from_state_dict(config, state, device=device).to(dtype)


def check_shapes(state: dict[str, Tensor], config: ModelConfig, source: str) -> None:
    """Every tensor has the shape its config implies; say which one does not, and how."""
    with torch.device("meta"):
        expected = Transformer(config).state_dict()
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise UserError(
                f"{source}: {key} has shape {tuple(tensor.shape)}, its config implies {tuple(expected[key].shape)}"
            )
