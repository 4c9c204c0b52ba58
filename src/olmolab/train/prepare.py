"""The `prepare:` section of a run config: make the tokenizer and token shards if missing.

It turns "train on this folder of text" into one command: the first run trains a byte-level
BPE and tokenizes the corpus; later runs (and resumes) find both done and skip the work.

    prepare:
      tokenizer: {out: runs/quickstart/tokenizer.json, train_files: [corpus.jsonl.gz], vocab_size: 8192}
      tokenize:  {inputs: [corpus.jsonl.gz], out: runs/quickstart/tokens/train}
      validation: {inputs: [held-out.txt], out: runs/quickstart/tokens/valid}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from olmolab.errors import UserError


@dataclass
class TokenizerPlan:
    out: str
    train_files: list[str] = field(default_factory=list)
    vocab_size: int = 16384


@dataclass
class TokenizePlan:
    inputs: list[str]
    out: str
    txt_split: str = "paragraph"
    workers: int = 2


@dataclass
class PrepareConfig:
    tokenizer: TokenizerPlan | None = None
    tokenize: TokenizePlan | None = None
    validation: TokenizePlan | None = None


def run_prepare(config: PrepareConfig, progress: bool = True) -> None:
    from olmolab.data.documents import expand_inputs, iter_documents
    from olmolab.data.tokenize import tokenize_files
    from olmolab.tokenizer import Tokenizer, train_bpe

    if config.tokenizer is None:
        raise UserError("prepare: needs a `tokenizer:` entry (the tokenizer.json to use or to train)")
    tokenizer_path = Path(config.tokenizer.out)
    if not tokenizer_path.exists():
        if not config.tokenizer.train_files:
            raise UserError(f"prepare.tokenizer: {tokenizer_path} does not exist and no train_files are given")
        print(f"olmolab: training a {config.tokenizer.vocab_size}-token BPE -> {tokenizer_path}")
        docs = iter_documents(expand_inputs(config.tokenizer.train_files), txt_split="paragraph")
        tokenizer = train_bpe((d.text for d in docs), config.tokenizer.vocab_size, name=tokenizer_path.name)
        tokenizer_path.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(tokenizer_path)
    tokenizer = Tokenizer.from_file(tokenizer_path)
    for plan in (config.tokenize, config.validation):
        if plan is not None:
            tokenize_files(plan.inputs, tokenizer, plan.out, workers=plan.workers, txt_split=plan.txt_split,
                           progress=progress)
