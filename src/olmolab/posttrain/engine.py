"""Post-training on pretraining's engine: `PostTrainer` is the `Trainer` with chat data.

Everything else is the trainer's own: `stepN-tokensM` revisions, exact resume after a kill,
DDP / FSDP2 under torchrun, metrics.jsonl, the LR schedule and gradient accumulation. A method
(SFT, DPO) says how to read its examples (`load_examples`), how to batch them (`collate`) and
what its loss is (`forward_backward`).

The token count of a revision name is the number of positions the model processed, padding
included (the global batch is padded to its longest row).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter

import numpy as np
import torch

from olmolab.errors import UserError
from olmolab.kernels import length_multiple, token_multiple
from olmolab.posttrain.batches import EpochLoader
from olmolab.posttrain.config import PostTrainConfig, steps_for
from olmolab.train.trainer import Trainer


class PostTrainer(Trainer):
    config: PostTrainConfig

    def load_examples(self, counts: Counter) -> list:
        """The method's tokenized examples (the loader's items), counting what was skipped."""
        raise NotImplementedError

    def collate(self, items: list[int]) -> dict[str, torch.Tensor]:
        """The global batch of these items, padded; the loader hands each rank its rows."""
        raise NotImplementedError

    def example_arrays(self, example) -> list[np.ndarray]:
        """The arrays that identify an example's tokenization (for the data fingerprint)."""
        raise NotImplementedError

    def _build_data(self) -> None:
        if self.tokenizer is None:
            raise UserError("trainer.tokenizer: post-training needs the model's tokenizer.json "
                            "(by default the one beside trainer.load_path)")
        section, tc = self.config.data, self.config.trainer
        counts: Counter = Counter()
        self.examples = self.load_examples(counts)
        if not self.examples:
            raise UserError(f"{self.config.method}: no example is left to train on ({dict(counts)})")
        self._report(counts)
        self.max_steps = tc.max_steps or steps_for(section.epochs, len(self.examples), tc.global_batch_size)
        if section.warmup_ratio is not None:  # open-instruct's warmup is a share of the run's steps
            self.config.scheduler.units, self.config.scheduler.t_warmup = "steps", section.warmup_ratio * self.max_steps
        self.loader = EpochLoader(len(self.examples), tc.global_batch_size, self.collate, seed=section.seed,
                                  fingerprint=self._fingerprint(), rank=self.rank, world_size=self.world_size)
        if self.state.data:
            self.loader.load_state_dict(self.state.data)
        self.validation = None
        self.tokens_per_step = tc.global_batch_size * section.max_seq_len  # an upper bound, for the ETA only

    def data_progress(self, label: str) -> str | None:
        """A progress bar's label for work on the data before the first step, or None (no bar)
        where progress is off or on a rank other than 0."""
        return label if self.config.trainer.progress and self.rank == 0 else None

    @property
    def token_multiple(self) -> int:
        """What batches round their token counts up to (`olmolab.kernels.token_multiple`)."""
        return token_multiple(self.precision.dtype, self.device)

    @property
    def length_multiple(self) -> int:
        """What batches round their rows' lengths up to (`olmolab.kernels.length_multiple`)."""
        return length_multiple(self.precision.dtype, self.device)

    def batch_tokens(self, batch: dict) -> int:
        return sum(t.numel() for k, t in batch.items() if k.endswith("input_ids")) * self.world_size

    def _fingerprint(self) -> str:
        """Identifies the tokenized examples and their order (seed, batch size): a resumed run
        must see the batches it would have seen."""
        digest = hashlib.sha256(f"{self.config.data.seed} {self.config.trainer.global_batch_size}".encode())
        for example in self.examples:
            for array in self.example_arrays(example):
                digest.update(np.ascontiguousarray(array).tobytes())
                digest.update(b"|")
        return digest.hexdigest()[:16]

    def _report(self, counts: Counter) -> None:
        """What happened to the rows, printed and saved as RUN_DIR/data_stats.json."""
        stats = {"examples": len(self.examples), **counts}
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "data_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        if self.config.trainer.progress:
            print(f"olmolab {self.config.method}: " + ", ".join(f"{k} {v}" for k, v in stats.items()), file=sys.stderr)
