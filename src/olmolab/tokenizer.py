"""Tokenizers: one wrapper over Hugging Face `tokenizers` for OLMo's files and for ones we train.

OLMo's data rule, which pretraining serves: a document becomes
`encode(text.strip(), add_special_tokens=False) + [eos]` - no BOS, no other special tokens
(allenai/dolma `python/dolma/tokenizer/tokenizer.py`; checked against Dolma's own token files
in the tests). A `tokenizer.json` does not say which token is EOS or PAD, so the ids come from,
in order: explicit arguments, a Hugging Face `special_tokens_map.json` / `tokenizer_config.json`
beside the file, then the special tokens whose names OLMo and GPT-style tokenizers use.

Chat (post-training, OLMo 2-Instruct) has its own rule, `render_chat`: the conversation is
rendered to one string in the Tülu template and tokenized whole, as transformers'
`apply_chat_template` does, so both give the same ids.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from olmolab.errors import UserError

# Names of special tokens, most specific first. OLMo 1 and 2 both call EOS `<|endoftext|>`;
# PAD is `<|pad|>` in OLMo 2 (id 100277) and `<|padding|>` in OLMo 1 (id 1).
EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
PAD_NAMES = ("<|pad|>", "<|padding|>", "<pad>")

# What `train_bpe` adds, in this order, so a trained tokenizer has EOS = 0 and PAD = 1.
TRAINED_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")


@dataclass(frozen=True)
class TokenizerIdentity:
    """What a token file must record to say which tokenizer made it."""

    name: str
    """File name the tokenizer was loaded from (informative; `sha256` is what identifies it)."""
    sha256: str
    """Hash of the tokenizer's serialized form: equal hashes give equal token ids."""
    vocab_size: int
    eos_token_id: int | None
    pad_token_id: int | None
    bos_token_id: int | None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerIdentity:
        return cls(**d)


class Tokenizer:
    """A byte-level BPE tokenizer with known EOS / PAD (/ BOS) ids."""

    def __init__(
        self,
        hf: HFTokenizer,
        *,
        name: str = "tokenizer.json",
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
    ):
        self.hf = hf
        self.name = name
        self.eos_token_id = eos_token_id if eos_token_id is not None else self._special_id(EOS_NAMES)
        self.pad_token_id = pad_token_id if pad_token_id is not None else self._special_id(PAD_NAMES)
        # OLMo pretraining data has no BOS, so there is none unless asked for.
        self.bos_token_id = bos_token_id
        for what, token_id in (("eos", self.eos_token_id), ("pad", self.pad_token_id), ("bos", self.bos_token_id)):
            if token_id is not None and not 0 <= token_id < self.vocab_size:
                raise UserError(f"{name}: {what} token id {token_id} is outside the vocabulary (size {self.vocab_size})")

    # -- loading and saving -------------------------------------------------------------------

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
    ) -> Tokenizer:
        """Load a `tokenizer.json`, or a Hugging Face directory that holds one."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises plain Exception for missing or bad files
            raise UserError(f"cannot load tokenizer {file}: {e}; pass a tokenizer.json file") from e
        named = _names_from_hf_config(file.parent)
        if eos_token_id is None and "eos" in named:
            eos_token_id = hf.token_to_id(named["eos"])
        if pad_token_id is None and "pad" in named:
            pad_token_id = hf.token_to_id(named["pad"])
        return cls(hf, name=file.name, eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=bos_token_id)

    def save(self, path: str | Path) -> None:
        """Write `tokenizer.json` (atomically: a temporary name, then a rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.hf.to_str(pretty=True), encoding="utf-8")
        tmp.replace(path)

    # Pickling by JSON lets a tokenizer travel to spawned worker processes.
    def __getstate__(self) -> dict:
        return {"json": self.hf.to_str(), "name": self.name, "ids": self._ids()}

    def __setstate__(self, state: dict) -> None:
        eos, pad, bos = state["ids"]
        self.__init__(HFTokenizer.from_str(state["json"]), name=state["name"], eos_token_id=eos, pad_token_id=pad, bos_token_id=bos)

    # -- identity -------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (OLMo 2: 100278; OLMo 1: 50280)."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def fingerprint(self) -> str:
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = hashlib.sha256(self.hf.to_str().encode("utf-8")).hexdigest()
        return self._fingerprint

    @property
    def identity(self) -> TokenizerIdentity:
        eos, pad, bos = self._ids()
        return TokenizerIdentity(self.name, self.fingerprint, self.vocab_size, eos, pad, bos)

    def _ids(self) -> tuple[int | None, int | None, int | None]:
        return self.eos_token_id, self.pad_token_id, self.bos_token_id

    def _special_id(self, names: Sequence[str]) -> int | None:
        special = {t.content: i for i, t in self.hf.get_added_tokens_decoder().items() if t.special}
        return next((special[n] for n in names if n in special), None)

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, text: str, *, add_eos: bool = False) -> list[int]:
        """Token ids of `text`; `add_eos=True` gives OLMo's document form (caller strips the text)."""
        return self.encode_batch([text], add_eos=add_eos)[0]

    def encode_batch(self, texts: Sequence[str], *, add_eos: bool = False) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel by `tokenizers` (its own thread pool)."""
        tail = [self.require_eos()] if add_eos else []
        # encode_batch_fast (tokenizers >= 0.21) skips the character offsets, which we never
        # use: the same ids for about a quarter less work.
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)
        return [e.ids + tail for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def encode_chat(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = False) -> list[int]:
        """The ids of a conversation in OLMo 2-Instruct's template (what `apply_chat_template` gives)."""
        return self.encode_chat_with_mask(messages, add_generation_prompt=add_generation_prompt)[0]

    def encode_chat_with_mask(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = False,
        last_turn_only: bool = False,
    ) -> tuple[list[int], list[bool]]:
        """Ids of a conversation and, per token, whether it belongs to an assistant turn's trained
        span (only the last turn's with `last_turn_only`, what DPO scores).

        The rendered string is tokenized whole (tokenizing turn by turn could merge differently at
        the seams); a token is trained when its first character lies inside a span.
        """
        return self.encode_chats_with_mask([messages], add_generation_prompt=add_generation_prompt,
                                           last_turn_only=last_turn_only)[0]

    def encode_chats_with_mask(
        self, conversations: Sequence[Sequence[Mapping[str, str]]], *, add_generation_prompt: bool = False,
        last_turn_only: bool = False,
    ) -> list[tuple[list[int], list[bool]]]:
        """`encode_chat_with_mask` of many conversations, encoded in parallel by `tokenizers` (its
        own thread pool): post-training tokenizes its whole dataset before the first step."""
        rendered = [self.render_chat(m, add_generation_prompt=add_generation_prompt) for m in conversations]
        encodings = self.hf.encode_batch([text for text, _ in rendered], add_special_tokens=False)
        return [(e.ids, _trained_mask([start for start, _ in e.offsets], spans[-1:] if last_turn_only else spans))
                for e, (_, spans) in zip(encodings, rendered, strict=True)]

    def render_chat(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = False
    ) -> tuple[str, list[tuple[int, int]]]:
        """`render_chat` with this tokenizer's BOS and EOS: the text, and the trained spans."""
        return render_chat(messages, bos=self.chat_bos_token, eos=self.id_to_token(self.require_eos()),
                           add_generation_prompt=add_generation_prompt)

    @property
    def chat_bos_token(self) -> str:
        """The BOS that starts a chat: OLMo 2's `bos_token` is its EOS, `<|endoftext|>`."""
        return self.id_to_token(self.bos_token_id if self.bos_token_id is not None else self.require_eos())

    def id_to_token(self, token_id: int) -> str:
        return self.hf.id_to_token(token_id)

    def require_eos(self) -> int:
        if self.eos_token_id is None:
            raise UserError(
                f"{self.name}: no EOS token found (looked for special tokens {', '.join(EOS_NAMES)}); "
                "pass the id explicitly (--eos-token-id)"
            )
        return self.eos_token_id

    def __repr__(self) -> str:
        eos, pad, bos = self._ids()
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, eos={eos}, pad={pad}, bos={bos})"


# ---------------------------------------------------------------------- the chat format

CHAT_ROLES = ("system", "user", "assistant")

# OLMo 2-Instruct's `chat_template` (open-instruct's "tulu" template with the BOS in front), as
# Jinja for transformers' `apply_chat_template`; `render_chat` is the same in Python.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% else %}{{ '<|assistant|>\\n' + message['content'] + eos_token }}{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    "{% endfor %}"
)
GENERATION_PROMPT = "<|assistant|>\n"


def _trained_mask(starts: list[int], spans: list[tuple[int, int]]) -> list[bool]:
    """Per token (by the character it starts at), whether it starts inside one of `spans`."""
    trained = [False] * len(starts)
    for span_start, span_end in spans:
        first = bisect.bisect_left(starts, span_start)
        for i in range(first, bisect.bisect_left(starts, span_end)):
            trained[i] = True
    return trained


def render_chat(
    messages: Sequence[Mapping[str, str]], *, bos: str, eos: str, add_generation_prompt: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as text, and the (start, end) character span of each assistant turn's
    trained part: from after `<|assistant|>\\n` through its EOS (and the newline after a turn
    that is not the last, which the model must also learn to write).

    Roles and contents are the caller's to check (`olmolab.posttrain.chat_data` does).
    """
    parts, spans, length = [bos], [], len(bos)
    for i, message in enumerate(messages):
        head = f"<|{message['role']}|>\n"
        if message["role"] == "assistant":
            body = message["content"] + eos + ("\n" if i < len(messages) - 1 else "")
            spans.append((length + len(head), length + len(head) + len(body)))
        else:
            body = message["content"] + "\n"
        parts += [head, body]
        length += len(head) + len(body)
    if add_generation_prompt and messages:
        parts.append(GENERATION_PROMPT)
    return "".join(parts), spans


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    show_progress: bool = False,
    name: str = "tokenizer.json",
) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE with EOS (`<|endoftext|>`, id 0) and PAD (`<|pad|>`, id 1).

    Byte-level means any UTF-8 text encodes without unknown tokens: the 256 byte symbols are
    always in the vocabulary, which therefore needs at least 256 + 2 entries.
    """
    minimum = 256 + len(TRAINED_SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise UserError(f"vocab size {vocab_size} is too small: a byte-level BPE needs at least {minimum} (256 bytes + EOS + PAD)")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(TRAINED_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf, name=name)


def _names_from_hf_config(directory: Path) -> dict[str, str]:
    """EOS / PAD names from Hugging Face's `special_tokens_map.json` / `tokenizer_config.json`.

    BOS is not read: OLMo 2's map names one, yet its pretraining data has none.
    """
    names: dict[str, str] = {}
    for file in ("tokenizer_config.json", "special_tokens_map.json"):  # the map wins where both say
        path = directory / file
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path}: {e}; fix or remove it") from e
        for what in ("eos", "pad"):
            value = config.get(f"{what}_token")
            if isinstance(value, dict):  # the AddedToken form: {"content": "<|endoftext|>", ...}
                value = value.get("content")
            if isinstance(value, str):
                names[what] = value
    return names
