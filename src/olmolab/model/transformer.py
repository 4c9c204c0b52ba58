"""The OLMo / OLMo 2 decoder, top to bottom.

References: Groeneveld et al. 2024, "OLMo: Accelerating the Science of Language Models";
OLMo Team 2024, "2 OLMo 2 Furious"; the checkpoints' Hugging Face implementations
(`transformers/models/olmo`, `.../olmo2`), which this model matches logit for logit.

Both families are a stack of blocks: causal self-attention with RoPE and a SwiGLU MLP, no
biases anywhere. What differs is where and which norm (see `ModelConfig`):

    OLMo 1 ("pre"):   h = x + Attn(LN(x));        out = h + MLP(LN(h))        LN has no weight
    OLMo 2 ("post"):  h = x + RMS(Attn(x));       out = h + RMS(MLP(h))       + QK-norm in Attn

Projections are fused the way OLMo stores them: one `w_qkv` matmul for queries, keys and
values, and one `w_in` for the SwiGLU's up and gate halves. One larger matmul is faster than
three small ones; `olmolab.convert.hf` splits them into Hugging Face's names.

Each op is named by the formula it computes (`F.linear`, RMSNorm, RoPE, SwiGLU, causal SDPA);
how it is computed on the machine at hand is `olmolab.kernels`' choice, asked through `kernel`.
Distributed training wraps this module from outside (`olmolab.train.distributed`); nothing
here knows about processes. Decoding passes a cache (`olmolab.model.kv_cache`), which says
where new tokens sit, what they may see and which keys attention reads; nothing here knows
which kind it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from olmolab.kernels import kernel, round_up, token_multiple
from olmolab.model.config import ModelConfig
from olmolab.model.kv_cache import Cache
from olmolab.model.label_log_probs import linear_label_log_probs
from olmolab.model.loss import IGNORE_INDEX, LMLoss, linear_cross_entropy
from olmolab.model.shared_prefix import SharedPrefix

LogitsAt = Literal["all", "last"] | tuple[Tensor, Tensor]
"""Where `Transformer.logits` runs the LM head: every position, the last one, or the given
(batch indices, position indices)."""


class Linear(nn.Linear):
    """A projection without bias: F.linear(x, weight)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return kernel("linear")(x, self.weight)


class Norm(nn.Module):
    """OLMo 1's LayerNorm without weight or bias, or OLMo 2's RMSNorm with a weight.

    Computed in fp32 whatever the input dtype, as both reference implementations do.
    """

    def __init__(self, kind: str, size: int, eps: float):
        super().__init__()
        self.kind, self.size, self.eps = kind, size, eps
        self.weight = nn.Parameter(torch.ones(size)) if kind == "rmsnorm" else None

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """norm(x), or residual + norm(x) (one kernel: the add rides on the norm's last pass)."""
        if self.kind == "rmsnorm":
            return kernel("rms_norm")(x, self.weight, self.eps, residual)  # F.rms_norm in fp32
        y = F.layer_norm(x.float(), (self.size,), None, None, self.eps).to(x.dtype)
        return y if residual is None else residual + y


class RotaryEmbedding(nn.Module):
    """RoPE in the "rotate half" layout (not interleaved), as OLMo and transformers use it.

    The cos/sin tables follow from the config, so they are not weights: they are built on first
    use on the input's device, always in fp32 (a model cast to bf16 keeps exact angles).
    """

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta
        self._tables: tuple[Tensor, Tensor] | None = None

    @torch.inference_mode(False)  # tables first built while generating must still serve training
    @torch.no_grad()
    def _build(self, device: torch.device) -> tuple[Tensor, Tensor]:
        hd = self.head_dim
        inv_freq = 1.0 / self.theta ** (torch.arange(0, hd, 2, dtype=torch.float32, device=device) / hd)
        angles = torch.outer(torch.arange(self.max_seq_len, dtype=torch.float32, device=device), inv_freq)
        return angles.cos(), angles.sin()  # (max_seq_len, head_dim / 2): one angle per feature pair

    def tables(self, positions: slice | Tensor, device) -> tuple[Tensor, Tensor]:
        """cos and sin at a range of positions, (T, 1, hd / 2), or at (B, T) positions, (B, T, 1, hd / 2)."""
        if self._tables is None or self._tables[0].device != device:
            self._tables = self._build(device)
        if isinstance(positions, slice) and positions.stop > self.max_seq_len:  # a slice would be cut short
            raise ValueError(
                f"sequence of {positions.stop} tokens is longer than the model's context window "
                f"(max_seq_len={self.max_seq_len})"
            )
        cos, sin = self._tables
        return cos[positions, None, :], sin[positions, None, :]  # a range is a view; positions gather


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer  # which of a cache's buffers hold this layer's keys and values
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.d_model, self.kv_dim = config.d_model, config.kv_dim
        self.clip_qkv = config.clip_qkv
        self.w_qkv = Linear(config.d_model, config.d_model + 2 * config.kv_dim)
        self.w_out = Linear(config.d_model, config.d_model)
        # OLMo 2's QK-norm acts on the full projected width, before the split into heads.
        self.q_norm = Norm(config.norm, config.d_model, config.norm_eps) if config.qk_norm else None
        self.k_norm = Norm(config.norm, config.kv_dim, config.norm_eps) if config.qk_norm else None

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        mask: Tensor | None,
        cache: Cache | None,
        shared_prefix: SharedPrefix | None = None,
    ) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.w_qkv(x).split([self.d_model, self.kv_dim, self.kv_dim], dim=-1)
        if self.clip_qkv is not None:  # OLMo 1.7's guard against loss spikes
            q, k, v = (t.clamp(-self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        # RoPE rotates each (x_i, x_{i+hd/2}) feature pair by its position's angle
        rotary = kernel("rotary")
        q = rotary(q.view(B, T, self.n_heads, self.head_dim), *rope)  # (B, T, nh, hd)
        k = rotary(k.view(B, T, self.n_kv_heads, self.head_dim), *rope)  # (B, T, nkv, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if shared_prefix is not None:  # each conversation of the stream attends within a row of its own
            q, k, v = (shared_prefix.gather_rows(t) for t in (q, k, v))  # (rows, S, heads, hd)
            T = q.shape[1]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, hd)
        if cache is not None:
            k, v = cache.write(self.layer, k, v)  # (B, nkv, S, hd): the cached keys, then these
        if T > 1 and k.shape[2] == T:  # no keys before these (training, scoring, a prompt)
            y = kernel("causal_attention")(q, k, v, mask)  # SDPA(is_causal=True), or under the mask
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv_heads != self.n_heads)
        y = y.transpose(1, 2).flatten(2)  # (B, T, d)
        if shared_prefix is not None:  # back to the stream: each token's output from its conversation's row
            y = shared_prefix.gather_outputs(y)
        return self.w_out(y)


class FeedForward(nn.Module):
    """SwiGLU: w_out(silu(gate) * up), with `w_in` holding [up; gate] as OLMo's ff_proj does."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w_in = Linear(config.d_model, 2 * config.mlp_hidden_size)
        self.w_out = Linear(config.mlp_hidden_size, config.d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_out(kernel("swiglu")(self.w_in(x)))  # silu(gate) * up


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.norm_placement = config.norm_placement
        self.attention = Attention(config, layer)
        self.feed_forward = FeedForward(config)
        self.attention_norm = Norm(config.norm, config.d_model, config.norm_eps)
        self.feed_forward_norm = Norm(config.norm, config.d_model, config.norm_eps)

    def forward(self, x: Tensor, rope, mask=None, cache=None, shared_prefix=None, outputs_at=None) -> Tensor:
        """outputs_at: flat indices into x's (B * T) positions: the block's output at these only,
        (N, d). Attention still reads every position's keys and values; the rest runs on N rows."""
        if self.norm_placement == "pre":  # OLMo 1: normalise what goes into each sub-layer
            a = self.attention(self.attention_norm(x), rope, mask, cache, shared_prefix)
            h = _at(x, outputs_at) + _at(a, outputs_at)
            return h + self.feed_forward(self.feed_forward_norm(h))
        # OLMo 2: normalise what comes out of each sub-layer, before the residual add
        a = self.attention(x, rope, mask, cache, shared_prefix)
        h = self.attention_norm(_at(a, outputs_at), residual=_at(x, outputs_at))  # x + norm(a)
        return self.feed_forward_norm(self.feed_forward(h), residual=h)  # h + norm(ff(h))


@dataclass(frozen=True)
class Labelled:
    """The flat positions of a batch's labels whose outputs a loss needs: the `count` labelled
    ones, then repeats of the last up to a multiple of `olmolab.kernels.token_multiple` (bf16 on
    a CPU: the last block's and the LM head's products then come in a few shapes)."""

    positions: Tensor
    count: int

    def labels(self, labels: Tensor) -> Tensor:
        """Their labels, the repeats' ignored."""
        picked = labels.flatten()[self.positions]
        picked[self.count :] = IGNORE_INDEX
        return picked


def _labelled_positions(labels: Tensor, always: bool, multiple: int) -> Labelled | None:
    """The labelled positions (`Labelled`), where a loss needs the model's output at those alone:
    `always` (scoring, which reads them anyway), or on a CPU where a sixteenth or more are not
    (post-training's prompts and padding). On a GPU, reading the labels would stall the queue
    every step; and pretraining's one unlabelled position a row is not worth the copy."""
    valid = labels.flatten() != IGNORE_INDEX
    if not (always or (labels.device.type == "cpu" and valid.sum() * 16 <= valid.numel() * 15)):
        return None
    positions = valid.nonzero().squeeze(1)
    count = len(positions)
    if count:
        positions = torch.cat([positions, positions[-1:].expand(round_up(count, multiple) - count)])
    return Labelled(positions, count)


def flat_positions(at: LogitsAt, input_ids: Tensor) -> Tensor | None:
    """The flat indices into input_ids' (B * T) positions that `at` selects (`Transformer.logits`):
    None for "all", each row's last for "last", else (batch indices, position indices)'s."""
    B, T = input_ids.shape
    if at == "all":
        return None
    if at == "last":
        return torch.arange(B, device=input_ids.device) * T + T - 1
    rows, positions = at
    return rows * T + positions


def _at(t: Tensor, outputs_at: Tensor | None) -> Tensor:
    """(B, T, d) -> (N, d) at the flat positions `outputs_at` (all of t where None)."""
    # index_select, not t[outputs_at]: its backward adds the rows back (index_add_, ~0.3 ms at
    # 2056 of 2656 rows of 384) where indexing's accumulates through index_put_ (~2.6 ms).
    return t if outputs_at is None else t.flatten(0, 1).index_select(0, outputs_at)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.embedding_size, config.d_model)
        self.rope = RotaryEmbedding(config.head_dim, config.max_seq_len, config.rope_theta)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layers))
        self.norm = Norm(config.norm, config.d_model, config.norm_eps)
        self.lm_head = Linear(config.d_model, config.embedding_size)
        if config.weight_tying:
            self.lm_head.weight = self.embeddings.weight
        self.compiled_loss = False
        """Whether the loss may use torch.compile'd kernels (`linear_cross_entropy`'s `compiled`):
        set where training compiles the blocks (`trainer.compile`)."""
        self.init_weights()

    # ------------------------------------------------------------------ forward

    @overload
    def forward(self, input_ids: Tensor, *, positions: Tensor | None = None, attn_mask: Tensor | None = None,
                at: LogitsAt = "all") -> Tensor: ...

    @overload
    def forward(
        self, input_ids: Tensor, labels: Tensor, *, positions: Tensor | None = None,
        attn_mask: Tensor | None = None, z_loss_multiplier: float = 0.0, loss_div_factor: float | Tensor | None = None,
    ) -> LMLoss: ...

    @overload
    def forward(self, input_ids: Tensor, labels: Tensor, *, positions: Tensor | None = None,
                attn_mask: Tensor | None = None, shared_prefix: SharedPrefix | None = None,
                label_log_probs: Literal[True]) -> Tensor: ...

    def forward(self, input_ids, labels=None, *, positions=None, attn_mask=None, shared_prefix=None, at="all",
                z_loss_multiplier=0.0, loss_div_factor=None, label_log_probs=False):
        """Logits (B, T, embedding_size) (or at the positions `at` selects, see `logits`), or with
        `labels` the loss without materialising them, or with `label_log_probs` too each label's
        log-probability (B, T) (0 where ignored; see `label_log_probs`).

        labels: (B, T) target ids aligned with the inputs (already shifted; -100 = ignore).
        positions, attn_mask, shared_prefix: see `trunk` (packed sequences: RoPE restarting, no
        attention across documents; conversations sharing a prefix). z_loss_multiplier,
        loss_div_factor: see `loss`.
        Training goes through `forward` because it is what DDP and FSDP wrap; decoding calls
        `trunk` with a cache, then `logits` at the last position.
        """
        if labels is None:  # the last block after attention, and the LM head, at `at`'s positions only
            hidden = self.trunk(input_ids, positions=positions, attn_mask=attn_mask, shared_prefix=shared_prefix,
                                outputs_at=flat_positions(at, input_ids))
            logits = self.lm_head(hidden)
            return logits[:, None] if at == "last" else logits
        multiple = token_multiple(self.lm_head.weight.dtype, input_ids.device)  # (bf16 under FSDP2's mixed precision)
        labelled = _labelled_positions(labels, always=label_log_probs, multiple=multiple)
        hidden = self.trunk(input_ids, positions=positions, attn_mask=attn_mask, shared_prefix=shared_prefix,
                            outputs_at=None if labelled is None else labelled.positions)
        if label_log_probs:
            return self.label_log_probs(hidden, labels, labelled)
        labels = labels if labelled is None else labelled.labels(labels)  # hidden's rows
        return self.loss(hidden, labels, z_loss_multiplier=z_loss_multiplier, div_factor=loss_div_factor)

    def trunk(
        self,
        input_ids: Tensor,
        *,
        positions: Tensor | None = None,
        attn_mask: Tensor | None = None,
        cache: Cache | None = None,
        shared_prefix: SharedPrefix | None = None,
        outputs_at: Tensor | None = None,
    ) -> Tensor:
        """The final norm's output, (B, T, d_model): everything but the LM head.

        positions: (B, T) RoPE positions, e.g. for left-padded batches; default the T positions
            after the cached ones.
        attn_mask: boolean (B, 1, T, S), True = may attend; default causal (over the cache).
        cache: a KVCache or StaticKVCache to read from and append to (generation).
        shared_prefix: the rows are streams of conversations that share their first tokens,
            each attending only within itself (`olmolab.model.shared_prefix`); positions then
            count per conversation.
        outputs_at: flat indices into the (B * T) positions whose outputs are wanted (the ones a
            loss is labelled at, the targets evaluation scores, a prompt's last token): the
            output is then theirs, (N, d_model). Every block but the last runs on all positions,
            whose keys and values the next layer reads; the last runs its attention's queries
            for all and everything after for these alone.
        """
        if shared_prefix is not None and (attn_mask is not None or cache is not None or positions is None):
            raise ValueError("shared_prefix takes the conversations' positions, and no attn_mask or cache")
        T = input_ids.shape[1]
        if cache is not None:  # the new tokens come after the cached ones
            positions = cache.positions(T) if positions is None else positions
            attn_mask = cache.causal_mask(T, input_ids.device) if attn_mask is None else attn_mask
        x = self.embeddings(input_ids)  # (B, T, d)
        rope = self.rope.tables(slice(0, T) if positions is None else positions, input_ids.device)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, attn_mask, cache, shared_prefix, outputs_at if i == len(self.blocks) - 1 else None)
        if cache is not None:
            cache.advance(T)
        return self.norm(x)

    def logits(self, hidden: Tensor, at: LogitsAt = "all") -> Tensor:
        """The LM head on `trunk`'s output: at "all" positions, (B, T, V); at the "last" one,
        (B, 1, V), what decoding needs; or at N (batch indices, position indices), (N, V), what
        scoring needs (the LM head is a large share of the compute, and scoring needs few)."""
        if at == "last":
            hidden = hidden[:, -1:]
        elif at != "all":
            hidden = hidden[at]
        return self.lm_head(hidden)

    def loss(
        self, hidden: Tensor, labels: Tensor, *, z_loss_multiplier: float = 0.0,
        div_factor: float | Tensor | None = None,
    ) -> LMLoss:
        """The loss of `trunk`'s output against `labels` (B, T), without materialising the logits;
        or of its (N, d) output at `outputs_at` against those positions' labels (N,).

        div_factor: what the summed token losses are divided by; default the number of labelled
        tokens here (a trainer passes the global count so micro-batches add up).
        """
        return linear_cross_entropy(
            hidden.flatten(0, -2), self.lm_head.weight, labels.flatten(),
            z_loss_multiplier=z_loss_multiplier, div_factor=div_factor, compiled=self.compiled_loss,
        )

    def label_log_probs(self, hidden: Tensor, labels: Tensor, labelled: Labelled | None = None) -> Tensor:
        """(B, T) fp32 log-probability of each label under `trunk`'s output `hidden` (0 where the
        label is ignored), what scoring a turn sums: only the labelled positions go through the
        LM head, chunked, without keeping their logits' autograd graph. `labelled`: where
        `hidden` is already theirs alone (`trunk`'s `outputs_at`)."""
        if labelled is None:
            labelled = _labelled_positions(labels, always=True, multiple=1)
            hidden = hidden.flatten(0, 1)[labelled.positions]
        picked = linear_label_log_probs(hidden, self.lm_head.weight, labelled.labels(labels).clamp(min=0))
        out = picked.new_zeros(labels.shape)  # (returned whole: FSDP2 warns of modules returning views)
        out.view(-1).index_put_((labelled.positions[: labelled.count],), picked[: labelled.count])
        return out

    @classmethod
    def from_state_dict(cls, config: ModelConfig, state: dict[str, Tensor], device="cpu") -> Transformer:
        """A model holding `state`'s weights, built without spending time on a random init."""
        with torch.device("meta"):
            model = cls(config)
        model.to_empty(device=device)
        if config.weight_tying:
            model.lm_head.weight = model.embeddings.weight
            state = {**state, "lm_head.weight": state["embeddings.weight"]}
        model.load_state_dict(state, strict=True)
        return model

    # ------------------------------------------------------------------ initialisation

    @torch.no_grad()
    def init_weights(self) -> None:
        """OLMo 2: every matrix ~ TruncNormal(0, 0.02, ±3σ), no depth scaling.
        OLMo 1 ("mitchell"): 1/sqrt(fan_in) for inputs; output projections shrink with depth,
        1/sqrt(2 * fan_in * (layer + 1)), so deeper residual branches start smaller."""
        c = self.config

        def normal(weight: Tensor, std: float) -> None:
            cutoff = c.init_cutoff_factor * std
            nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-cutoff, b=cutoff)

        mitchell = c.init == "mitchell"
        normal(self.embeddings.weight, 1 / math.sqrt(c.d_model) if mitchell else c.init_std)
        if not c.weight_tying:
            normal(self.lm_head.weight, 1 / math.sqrt(c.d_model) if mitchell else c.init_std)
        for layer, block in enumerate(self.blocks):
            depth = 2 * (layer + 1)
            normal(block.attention.w_qkv.weight, 1 / math.sqrt(c.d_model) if mitchell else c.init_std)
            normal(block.feed_forward.w_in.weight, 1 / math.sqrt(c.d_model) if mitchell else c.init_std)
            normal(block.attention.w_out.weight, 1 / math.sqrt(depth * c.d_model) if mitchell else c.init_std)
            normal(block.feed_forward.w_out.weight,
                   1 / math.sqrt(depth * c.mlp_hidden_size) if mitchell else c.init_std)
        for module in self.modules():
            if isinstance(module, Norm) and module.weight is not None:
                module.weight.fill_(1.0)

    # ------------------------------------------------------------------ sizes

    def num_params(self, include_embedding: bool = True) -> int:
        params = {id(p): p for p in self.parameters()}  # a tied weight counts once
        total = sum(p.numel() for p in params.values())
        if not include_embedding:
            total -= self.embeddings.weight.numel()
            if not self.config.weight_tying:
                total -= self.lm_head.weight.numel()
        return total
