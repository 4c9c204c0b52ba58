"""The decode loop: batches of prompts of different lengths, stop tokens, rows that end early.

    generate(model, [[ids...], ...], GenerationConfig(...))  -> new token ids per prompt

How a batch is laid out (the same as transformers, so greedy decoding matches its `generate`
token for token): prompts are *left*-padded to one length, so every row's next token is at the
same column. A row's RoPE positions count only its real tokens (`cumsum(mask) - 1`), and the
attention mask hides the pad columns from every query, so a padded prompt decodes exactly as
it would alone. The cache is allocated once for prompt + new tokens; each decode step runs the
model on one token per row and asks for the last position's logits only. On CPU the matmuls,
most of a decode step, run on kernels chosen for a few rows (`kernels.decode_linear`). A row that
ends (EOS, a stop token or string) leaves the batch: its cache rows are dropped, so the rest
decode with fewer rows: a finished answer costs nothing more while the others run on.
`GenerationConfig(compile=True)` decodes with one compiled step over a fixed-size cache instead
(`static_cache.decode_step`).

References: transformers `generation/utils.py` (left padding, position ids, top-p rule),
OLMo-core `generate/` (GenerationConfig fields), OLMo `olmo/model.py` `generate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from olmolab import kernels
from olmolab.errors import UserError
from olmolab.generation.config import GenerationConfig, TokenCallback
from olmolab.generation.sampling import next_token
from olmolab.generation.static_cache import compiled_decoding, static_cache_len
from olmolab.model.kv_cache import KVCache, StaticKVCache
from olmolab.model.transformer import Transformer, flat_positions


def check_prompts(model: Transformer, prompts: Sequence[Sequence[int]]) -> None:
    """Prompts are non-empty, fit the context window, and hold ids the model has embeddings for."""
    c = model.config
    if not prompts:
        raise UserError("no prompts to generate from")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise UserError(f"prompt {i} is empty; give it at least one token")
        if len(prompt) > c.max_seq_len:
            raise UserError(
                f"prompt {i} has {len(prompt)} tokens, longer than the model's context window of "
                f"{c.max_seq_len} tokens; shorten it"
            )
        bad = [t for t in prompt if not 0 <= t < c.embedding_size]
        if bad:
            raise UserError(
                f"prompt {i} holds token id {bad[0]}, outside the model's vocabulary [0, {c.embedding_size}); "
                f"was it encoded with another model's tokenizer?"
            )


def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig | None = None,
    *,
    on_token: TokenCallback | None = None,
) -> list[list[int]]:
    """The new tokens of each prompt, in order.

    A row ends at EOS or a stop token (which is kept as its last token, as transformers does),
    when `on_token` returns True, after `max_new_tokens`, or when the context window is full.
    `on_token(row, token)` sees every new token as it is chosen: use it to stream.
    """
    config = config or GenerationConfig()
    check_prompts(model, prompts)
    on_cpu = next(model.parameters()).device.type == "cpu"
    # On CPU a batch decodes faster eagerly, through oneDNN, than compiled (bench/README.md).
    compiled = config.compile and not (on_cpu and len(prompts) > 1)
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    with kernels.using("linear", kernels.decode_linear(weights, len(prompts))), torch.inference_mode():
        return _generate(model, prompts, config, on_token, compiled)


def _generate(
    model: Transformer, prompts, config: GenerationConfig, on_token: TokenCallback | None, compiled: bool
) -> list[list[int]]:
    c = model.config
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    batch, width = len(prompts), max(len(p) for p in prompts)
    # The last new token is never fed back, so a prompt that fills the window still gets one.
    budget = min(config.max_new_tokens, c.max_seq_len - width + 1)
    eos = c.eos_token_id if config.eos_token_id is None else config.eos_token_id
    stop_ids = set(config.stop_token_ids) | ({eos} if config.stop_at_eos else set())
    generator = None
    if not config.greedy and config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)

    cache_len = width + budget - 1
    if compiled:
        cache_len = static_cache_len(cache_len, c.max_seq_len)
    # Left padding: (B, width) ids, and which columns of the whole sequence are real tokens.
    ids = torch.full((batch, width), c.pad_token_id, dtype=torch.long)
    real = torch.ones(batch, max(width + budget, cache_len), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        real[row, : width - len(prompt)] = False
    ids, real = ids.to(device), real.to(device)
    padded = not bool(real.all())
    last = flat_positions("last", ids)  # each row's last position: its logits start decoding

    cache = KVCache.allocate(c, batch, cache_len, device=device, dtype=dtype)
    position = torch.full((batch, 1), width, device=device)  # each row's next RoPE position
    key_mask = real[:, None, None, :]  # (B, 1, 1, columns): sliced per step
    if padded:
        positions = (real[:, :width].long().cumsum(-1) - 1).clamp(min=0)  # (B, width)
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        # A pad query attends to itself only: a fully masked row would be NaN, and NaN values
        # would leak through the zero attention weights other queries give its keys.
        diagonal = torch.eye(width, dtype=torch.bool, device=device)
        mask = (causal & real[:, None, None, :width]) | diagonal  # (B, 1, width, width)
        logits = model.logits(model.trunk(ids, positions=positions, attn_mask=mask, cache=cache, outputs_at=last)[:, None])
        position = positions[:, -1:] + 1
    else:
        logits = model.logits(model.trunk(ids, cache=cache, outputs_at=last)[:, None])
    if compiled:
        decode = compiled_decoding()
        static = StaticKVCache.continuing(cache)  # the prompt's keys, on the same buffers
        key_mask = key_mask[..., :cache_len]

    vocab = c.vocab_size  # ids past the tokenizer's vocabulary are padding rows: never choose them
    outputs: list[list[int]] = [[] for _ in range(batch)]
    rows = list(range(batch))  # the prompt index of each row of the batch
    done = [False] * batch  # per row of the batch; compiled decoding keeps finished rows
    for step in range(budget):
        tokens = next_token(logits[:, -1, :vocab], config, generator)  # (b,)
        keep = _record(tokens.tolist(), rows, done, outputs, stop_ids, on_token)
        if not keep or step == budget - 1:
            break
        if compiled:  # static shapes: finished rows stay, fed padding that no one reads
            tokens = tokens.masked_fill(torch.tensor(done, device=device), c.pad_token_id)
            logits = decode(model, tokens[:, None], position, key_mask, static)
            position += 1
            continue
        if len(keep) < len(rows):
            # Finished rows leave the batch, so a few long answers do not carry the finished ones along.
            index = torch.tensor(keep, device=device)
            rows, done = [rows[i] for i in keep], [False] * len(keep)
            tokens, position, key_mask = tokens[index], position[index], key_mask[index]
            cache.keep_rows(index)
        if padded:
            length = cache.length + 1
            hidden = model.trunk(tokens[:, None], positions=position, attn_mask=key_mask[..., :length], cache=cache)
            logits = model.logits(hidden, at="last")
            position += 1
        else:
            logits = model.logits(model.trunk(tokens[:, None], cache=cache), at="last")
    return outputs


def _record(
    chosen: list[int], rows: list[int], done: list[bool], outputs: list[list[int]], stop_ids: set[int],
    on_token: TokenCallback | None,
) -> list[int]:
    """Append each running row's new token to its output; mark the rows that end; return the
    batch positions of the rows that go on."""
    keep = []
    for i, row in enumerate(rows):
        if done[i]:
            continue
        token = chosen[i]
        outputs[row].append(token)
        stop = token in stop_ids
        if on_token is not None and on_token(row, token):
            stop = True
        if stop:
            done[i] = True
        else:
            keep.append(i)
    return keep

