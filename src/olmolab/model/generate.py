"""Text generation: a static KV cache, greedy / temperature / top-k / top-p sampling, stop
tokens and stop strings, and batches of prompts of different lengths.

Two levels:

    generate(model, [[ids...], ...], GenerationConfig(...))  -> new token ids per prompt
    generate_text(model, tokenizer, ["text", ...], config, stop_strings=[...])  -> new text per prompt
    complete_ids(model, tokenizer, [[ids...], ...], config, stop_strings=[...])  -> the same from ids

How a batch is laid out (the same as transformers, so greedy decoding matches its `generate`
token for token): prompts are *left*-padded to one length, so every row's next token is at the
same column. A row's RoPE positions count only its real tokens (`cumsum(mask) - 1`), and the
attention mask hides the pad columns from every query, so a padded prompt decodes exactly as
it would alone. The cache is allocated once for prompt + new tokens; each decode step runs the
model on one token per row and asks for the last position's logits only. On CPU the matmuls,
most of a decode step, run on kernels chosen for a few rows (`cpu_linear_kernels`). A row that
ends (EOS, a stop token or string) leaves the batch: its cache rows are dropped, so the rest
decode with fewer rows: a finished answer costs nothing more while the others run on.
`GenerationConfig(compile=True)` decodes with one compiled step over a fixed-size cache instead
(`decode_step`), about twice as fast per token for a single prompt.

References: transformers `generation/utils.py` (left padding, position ids, top-p rule),
OLMo-core `generate/` (GenerationConfig fields), OLMo `olmo/model.py` `generate`.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from olmolab.errors import UserError
from olmolab.model.ops import onednn_linear, onednn_linear_works
from olmolab.model.transformer import KVCache, Transformer

TokenCallback = Callable[[int, int], bool | None]
"""on_token(row, token_id) -> True to end that row now (e.g. a stop string appeared)."""


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    """At most this many new tokens per prompt (fewer when the context window fills up)."""
    temperature: float = 0.0
    """0 = greedy (argmax); otherwise sample from softmax(logits / temperature)."""
    top_k: int | None = None
    """Sample only among the k most likely tokens (None or 0 = no limit)."""
    top_p: float | None = None
    """Nucleus sampling: the smallest set of tokens whose probability reaches p (None or 1 = all)."""
    seed: int | None = None
    """Seed of the sampling generator, for reproducible samples; None draws from torch's global RNG."""
    stop_token_ids: Sequence[int] = field(default_factory=tuple)
    """Tokens that end a row (kept as its last token), in addition to EOS."""
    eos_token_id: int | None = None
    """None = the model's `config.eos_token_id`."""
    stop_at_eos: bool = True
    """False generates `max_new_tokens` whatever comes (what a throughput benchmark wants)."""
    compile: bool = False
    """Decode with one `torch.compile`d step over a fixed-size cache (see `compiled_decoding`):
    1.7x faster per token for one prompt on the bench CPU, after a one-off compilation of
    ~10 s per model, batch size and cache size. On CPU, batches keep the eager path, which
    is faster there."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.temperature < 0:
            raise UserError(f"temperature={self.temperature} must be >= 0 (0 means greedy)")
        if self.top_k is not None and self.top_k < 0:
            raise UserError(f"top_k={self.top_k} must be >= 1 (or 0 / unset for no limit)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"top_p={self.top_p} must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# ---------------------------------------------------------------------- choosing the next token


def next_token(logits: Tensor, config: GenerationConfig, generator: torch.Generator | None) -> Tensor:
    """(B, V) logits -> (B,) token ids: argmax, or a sample after temperature, top-k and top-p
    (applied in that order, as transformers does)."""
    if config.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / config.temperature
    if config.top_k and config.top_k < logits.shape[-1]:
        kth_best = logits.topk(config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if config.top_p is not None and config.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the best one stays.
        outside = probs.cumsum(dim=-1) - probs >= config.top_p
        sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


# ---------------------------------------------------------------------- token-level generation


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


# ---------------------------------------------------------------------- CPU matmul kernels

_DERIVED: weakref.WeakKeyDictionary[nn.Linear, tuple[weakref.ref, tuple, Tensor]] = weakref.WeakKeyDictionary()


def _one_row_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear for a single row, as multiply-and-sum: inside `torch.compile` this becomes one
    vectorised, multi-threaded pass over the weight, which is what bounds a batch-1 decode step
    (27 GB/s on the bench CPU, against 20 for oneDNN and 10 for MKL). Never run it eagerly: it
    would materialise the (out, in) product."""
    out = (x.unsqueeze(-2) * weight).sum(-1)
    return out if bias is None else out + bias


def _derived_weight(module: nn.Linear, kind: str) -> Tensor:
    """`module.weight` laid out for `kind`, kept with the module and rebuilt when the weight
    changes: a new tensor, or an in-place update that bumps its version counter. The fused
    AdamW step (the trainer's) does not bump it: code that trains between generations calls
    `forget_derived_weights` first."""
    weight = module.weight
    key = (weight.data_ptr(), weight._version, kind)
    cached = _DERIVED.get(module)
    if cached is None or cached[0]() is not weight or cached[1] != key:
        with torch.inference_mode(False), torch.no_grad():
            w = weight.detach()
            derived = w.t().contiguous() if kind == "transposed" else torch.ops.mkldnn._reorder_linear_weight(w, 8)
        _DERIVED[module] = cached = (weakref.ref(weight), key, derived)
    return cached[2]


def forget_derived_weights(model: nn.Module) -> None:
    """Drop the model's cached weight layouts (`_derived_weight`); the next generation rebuilds
    them from the current weights. Needed after an optimizer step that leaves the weights'
    version counters alone (torch's fused AdamW), or generation would use the old weights."""
    for module in model.modules():
        _DERIVED.pop(module, None)


def _transposed_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear with the weight given as its (in, out) transposed copy."""
    out = torch.matmul(x, weight)
    return out if bias is None else out + bias


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear with the weight given packed by `torch.ops.mkldnn._reorder_linear_weight`."""
    out = onednn_linear(x, weight)
    return out if bias is None else out + bias


def _kernel_kind(batch_size: int) -> str | None:
    if batch_size == 1 and torch.get_num_threads() == 1:
        return "transposed"
    if onednn_linear_works():
        return "onednn"
    return "transposed" if batch_size == 1 else None


def _swap_kernel(module: nn.Linear, kind: str | None, compiled: bool):
    """The forward `module` gets: the eager kernel of `kind` (None: its own), and in compiled
    decoding, multiply-and-sum for the single row of a compiled step (the prompt stays eager)."""
    eager = module.forward if kind is None else functools.partial(
        {"transposed": _transposed_linear, "onednn": _onednn_linear}[kind],
        weight=_derived_weight(module, kind), bias=module.bias,
    )
    if not compiled:
        return eager

    def forward(x: Tensor) -> Tensor:
        if torch.compiler.is_compiling() and x.shape[:-1].numel() == 1:
            return _one_row_linear(x, module.weight, module.bias)
        return eager(x)
    return forward


@contextmanager
def cpu_linear_kernels(model: nn.Module, batch_size: int, compiled: bool = False) -> Iterator[None]:
    """While inside, the model's fp32 CPU `nn.Linear` layers multiply with the kernel that is
    fastest for `batch_size` rows; on exit the model is as it was.

    Why: decoding multiplies one row per sequence by every weight matrix, which is most of a
    decode step, and MKL's `F.linear` is slow at that on this project's CPUs (AMD EPYC). Measured
    on the bench model (bench/decode.py), whole decode steps:
    - with 2+ threads, oneDNN with each weight packed into its blocked layout: 1.7x faster at
      batch 1 and 1.9x at batch 8 (oneDNN splits a matrix-vector product across threads, MKL
      does not);
    - with 1 thread and one row, a plain matmul by the transposed (in, out) weight: 1.4x faster;
    - in a compiled decode step of one row, multiply-and-sum, which inductor turns into one pass
      over the weight at close to memory bandwidth (`_one_row_linear`).
    Values are the same; only the order of the sums differs, at the level of fp32 rounding.
    The copies live as long as the model (about the size of its linear weights), so later calls
    skip the copying. Layers on other devices or dtypes keep `F.linear`.
    """
    kind = _kernel_kind(batch_size)
    swapped = []
    for module in model.modules() if kind is not None or compiled else ():
        weight = getattr(module, "weight", None)
        if (isinstance(module, nn.Linear) and "forward" not in module.__dict__
                and type(weight.data) is torch.Tensor and weight.device.type == "cpu"
                and weight.dtype == torch.float32):
            module.forward = _swap_kernel(module, kind, compiled)
            swapped.append(module)
    try:
        yield
    finally:
        for module in swapped:
            del module.forward


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
    # On CPU a batch decodes faster eagerly, through oneDNN, than compiled (7.1 vs 11.5 ms a step at 8).
    compiled = config.compile and not (on_cpu and len(prompts) > 1)
    with cpu_linear_kernels(model, len(prompts), compiled=compiled), torch.inference_mode():
        return _generate(model, prompts, config, on_token, compiled)


# ---------------------------------------------------------------------- compiled decoding


def decode_step(model: Transformer, tokens: Tensor, position: Tensor, key_mask: Tensor, cache: KVCache) -> Tensor:
    """One token per row over the whole fixed-size cache, so that every step is the same
    computation: `cache.length` is a tensor, the new keys land at that slot, and attention
    reads every slot with the ones not yet written masked out."""
    filled = torch.arange(key_mask.shape[-1], device=tokens.device) <= cache.length
    return model(tokens, positions=position, attn_mask=key_mask & filled, cache=cache, last_only=True)


@functools.cache
def compiled_decoding() -> Callable[..., Tensor]:
    """`decode_step` through torch.compile: on CPU, inductor fuses each layer's norms, RoPE and
    SwiGLU and turns the single-row matmuls into passes over the weights at near memory bandwidth,
    with no Python between ops. Shapes are static (`dynamic=False`), so each (model, batch size,
    cache size) compiles once; static shapes are also what CUDA graphs would need."""
    return torch.compile(decode_step, dynamic=False)


STATIC_CACHE_MULTIPLE = 256
"""Compiled decoding rounds the cache up to a multiple of this, so that prompts and budgets of
different lengths reuse one compiled step."""


def static_cache_len(needed: int, max_seq_len: int) -> int:
    """`needed` slots rounded up, within the context window (which `needed` never exceeds)."""
    return min(-(-needed // STATIC_CACHE_MULTIPLE) * STATIC_CACHE_MULTIPLE, max_seq_len)


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
        logits = model(ids, positions=positions, attn_mask=mask, cache=cache, last_only=True)
        position = positions[:, -1:] + 1
    else:
        logits = model(ids, cache=cache, last_only=True)
    if compiled:
        decode = compiled_decoding()
        cache.length = torch.tensor(cache.length, device=device)
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
            logits = decode(model, tokens[:, None], position, key_mask, cache)
            position += 1
            continue
        if len(keep) < len(rows):
            # Finished rows leave the batch, so a few long answers do not carry the finished ones along.
            index = torch.tensor(keep, device=device)
            rows, done = [rows[i] for i in keep], [False] * len(keep)
            tokens, position, key_mask = tokens[index], position[index], key_mask[index]
            cache.keys = [k.index_select(0, index) for k in cache.keys]
            cache.values = [v.index_select(0, index) for v in cache.values]
        if padded:
            length = cache.length + 1
            logits = model(tokens[:, None], positions=position, attn_mask=key_mask[..., :length],
                           cache=cache, last_only=True)
            position += 1
        else:
            logits = model(tokens[:, None], cache=cache, last_only=True)
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


# ---------------------------------------------------------------------- text-level generation


class _TextRow:
    """One prompt's completion as text: stop strings, and what may safely be streamed so far."""

    def __init__(self, tokenizer, stop_strings: Sequence[str], skip_ids: set[int]):
        self.tokenizer, self.stop_strings, self.skip_ids = tokenizer, stop_strings, skip_ids
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0  # characters of `text` already handed to the stream
        self.done = False

    def add(self, token: int) -> bool:
        """Take a new token; True when a stop string has appeared (the text is cut before it)."""
        if token in self.skip_ids:
            return False
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        longest = max((len(s) for s in self.stop_strings), default=0)
        search_from = max(0, self.emitted - longest)
        hits = [i for s in self.stop_strings if (i := self.text.find(s, search_from)) >= 0]
        if hits:
            self.text, self.done = self.text[: min(hits)], True
        return self.done

    def ready(self) -> str:
        """New text that can be shown: not a half-decoded character, not the start of a stop string."""
        end = len(self.text)
        if not self.done:
            if self.text.endswith("\ufffd"):  # the byte-level BPE has not finished this character
                end -= 1
            end -= max((k for stop in self.stop_strings for k in range(1, min(len(stop), end + 1))
                        if self.text[:end].endswith(stop[:k])), default=0)
        end = max(end, self.emitted)
        piece, self.emitted = self.text[self.emitted : end], end
        return piece


def generate_text(
    model: Transformer,
    tokenizer,
    prompts: Sequence[str],
    config: GenerationConfig | None = None,
    *,
    stop_strings: Sequence[str] = (),
    on_text: Callable[[int, str], None] | None = None,
) -> list[str]:
    """The completion of each prompt as text, cut before the first stop string.

    `tokenizer` has `encode(text) -> ids` and `decode(ids) -> text` (olmolab.tokenizer.Tokenizer).
    EOS, stop tokens and stop strings are not part of the returned text. `on_text(row, piece)`
    receives the text as it is produced (pieces join to the returned text).
    An empty prompt starts from EOS, the document separator OLMo models were trained with.
    """
    config = config or GenerationConfig()
    eos = model.config.eos_token_id if config.eos_token_id is None else config.eos_token_id
    encoded = [tokenizer.encode(p) or [eos] for p in prompts]
    return complete_ids(model, tokenizer, encoded, config, stop_strings=stop_strings, on_text=on_text)


def complete_ids(
    model: Transformer,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig | None = None,
    *,
    stop_strings: Sequence[str] = (),
    on_text: Callable[[int, str], None] | None = None,
) -> list[str]:
    """`generate_text` for prompts already encoded (evaluation adds BOS and truncates them itself)."""
    config = config or GenerationConfig()
    eos = model.config.eos_token_id if config.eos_token_id is None else config.eos_token_id
    tokenizer_eos = getattr(tokenizer, "eos_token_id", None)
    if config.stop_at_eos and tokenizer_eos is not None and tokenizer_eos != eos:
        config = dataclasses.replace(config, stop_token_ids=(*config.stop_token_ids, tokenizer_eos))
    stop_strings = [s for s in stop_strings if s]
    skip_ids = set(config.stop_token_ids) | ({eos} if config.stop_at_eos else set())
    rows = [_TextRow(tokenizer, stop_strings, skip_ids) for _ in prompts]

    def on_token(row: int, token: int) -> bool:
        stop = rows[row].add(token)
        if on_text is not None and (piece := rows[row].ready()):
            on_text(row, piece)
        return stop

    generate(model, prompts, config, on_token=on_token)
    for row, state in enumerate(rows):
        state.done = True
        if on_text is not None and (piece := state.ready()):
            on_text(row, piece)
    return [state.text for state in rows]
