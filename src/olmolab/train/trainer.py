"""The training loop: OLMo pretraining on one process or many.

    olmolab train run.yaml                                   # one process
    torchrun --nproc-per-node 2 -m olmolab train run.yaml    # DDP / FSDP2

One step: take the rank's share of the global batch, split it into micro-batches, run
forward + backward on each (gradients sync on the last), clip the global gradient norm, set
the LR from the schedule, and step AdamW. The loss of every micro-batch is its summed token
losses divided by the *global* number of labelled tokens (torchtitan's rule), so gradient
accumulation, data parallelism and label masks all give exactly the mean over the batch.

Side concerns (checkpoints, metrics, validation, spikes) live in their own modules; this
file only calls them at the right moments. A run directory resumes by itself: start the same
command again after a crash and it continues from the latest revision, bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from olmolab import model_files
from olmolab.allocator import keep_freed_memory
from olmolab.config import RunConfig
from olmolab.data.loader import validation_batches
from olmolab.data.shards import check_vocab_fits
from olmolab.denormals import flush_denormals
from olmolab.errors import UserError
from olmolab.eval import build_evaluators
from olmolab.eval.perplexity import perplexity_from_totals
from olmolab.model import ModelConfig, Transformer
from olmolab.model.loss import IGNORE_INDEX
from olmolab.precision import Precision, resolve_precision
from olmolab.revisions import Revision, latest_revision, list_revisions
from olmolab.tokenizer import Tokenizer
from olmolab.train import checkpoint as ckpt
from olmolab.train import distributed as dist_utils
from olmolab.train.energy import EnergyMeter
from olmolab.train.metrics import (
    MetricSinks,
    SpikeDetector,
    Throughput,
    measure_matmul_flops,
    peak_flops,
    peak_is_measured,
    read_metrics,
)
from olmolab.train.optim import build_optimizer, clipped_step, gradient_norm, lr_at
from olmolab.train.run_lock import RunLock


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    skipped_steps: int = 0
    consecutive_skipped_steps: int = 0
    data: dict = field(default_factory=dict)


def make_labels(input_ids: torch.Tensor, label_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Targets aligned with the inputs: token t predicts t+1; the last position and any
    target whose label mask is False are ignored (OLMo's `label_mask_paths`)."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = input_ids[:, 1:]
    if label_mask is not None:
        labels[:, :-1].masked_fill_(~label_mask[:, 1:], IGNORE_INDEX)
    return labels


def cpu_compiler_works() -> bool:
    """Whether torch.compile's CPU backend (inductor) finds a working C++ compiler. Without one
    compiling fails at the first step, deep in a traceback; this lets the trainer say so first."""
    from torch._inductor import cpp_builder  # private, but it is what inductor itself asks

    try:
        cpp_builder.get_cpp_compiler()
    except Exception:  # inductor raises its own InvalidCxxCompiler (or a subprocess error)
        return False
    return True


class Trainer:
    def __init__(self, config: RunConfig):
        self.config = config
        tc = config.trainer
        device_type = "cuda" if tc.device == "cuda" or (tc.device == "auto" and torch.cuda.is_available()) else "cpu"
        if device_type == "cuda" and not torch.cuda.is_available():
            raise UserError("trainer.device=cuda but no CUDA device is available; use trainer.device=cpu")
        if tc.compile and device_type == "cpu" and not cpu_compiler_works():
            raise UserError(
                "trainer.compile=true on CPU needs a C++ compiler (torch.compile builds its kernels with "
                "one) and none works here: install g++ or point CXX at a compiler, or set trainer.compile=false"
            )
        self.device = dist_utils.init_from_env(device_type)
        if device_type == "cpu" and tc.keep_freed_memory:
            keep_freed_memory()
        flushed = flush_denormals() if device_type == "cpu" and tc.flush_denormals else None
        if flushed == "this thread only" and dist_utils.rank() == 0:
            print("olmolab: denormal floats are flushed to zero in this thread only: PyTorch's thread pool "
                  "started before the trainer (`olmolab train` starts the trainer first; olmolab/denormals.py)",
                  file=sys.stderr)
        self.rank, self.world_size = dist_utils.rank(), dist_utils.world_size()
        self.run_dir = Path(tc.run_dir)
        self.lock = self._lock_run_dir()  # before anything in the run directory is read or written
        ckpt.remove_leftovers(self.run_dir)
        self.accum_steps = tc.check_batch(self.world_size)
        self.precision = self._choose_precision()

        torch.manual_seed(tc.seed)
        with torch.device(self.device):
            model = Transformer(config.model)
        self.state = TrainState()
        revisions = list_revisions(self.run_dir)
        if not revisions and tc.load_path and tc.reset_trainer_state:
            self._load_weights_only(model, tc.load_path)
        self.raw_model = model
        self.model = dist_utils.parallelize(
            model, strategy="fsdp" if tc.distributed == "fsdp" else "ddp", device=self.device,
            bf16=self.precision.name == "bf16",
            compile_blocks=tc.compile, activation_checkpointing=tc.activation_checkpointing,
        )
        self.optimizer = build_optimizer(self.model, config.optim)
        if revisions:
            self._resume_from_newest_loadable(revisions)
        elif tc.load_path and not tc.reset_trainer_state:
            self._resume(Path(tc.load_path))

        self.tokenizer = self._load_tokenizer()
        self._build_data()
        self.evaluators = self._build_evaluators()

        self.sinks = MetricSinks(self.run_dir, enabled=self.rank == 0, wandb_project=tc.wandb_project,
                                 tensorboard=tc.tensorboard, config=self.resolved_config())
        self.sinks.truncate_after(self.state.step)
        self.spikes = SpikeDetector(tc.spike_window, tc.spike_sigmas)
        for row in read_metrics(self.run_dir) if self.rank == 0 else []:
            if "loss" in row:
                self.spikes.recent.append(row["loss"])
        measured = peak_is_measured(self.device, tc.peak_flops)
        self.throughput = Throughput(config.model.flops_per_token(config.data.seq_len),
                                     peak_flops(self.device, tc.peak_flops, self.precision.dtype), self.world_size,
                                     remeasure_peak=partial(measure_matmul_flops, dtype=self.precision.dtype) if measured else None)

    # ------------------------------------------------------------------ setup helpers

    def _lock_run_dir(self) -> RunLock | None:
        """Rank 0 locks the run directory; every rank learns whether it could, so that a refused
        torchrun job exits as a whole instead of hanging at its first collective."""
        lock, refusal = None, None
        if self.rank == 0:
            lock = RunLock(self.run_dir)
            try:
                lock.acquire()
            except UserError as e:
                refusal = e
        refused = dist_utils.all_reduce_sum(torch.tensor(float(refusal is not None), device=self.device))
        if refused.item():
            raise refusal or UserError(f"{self.run_dir}: in use by another trainer (rank 0 says which)")
        return lock

    def _build_data(self) -> None:
        """The loader (at the resumed position), validation data, and the run's length.
        Post-training (olmolab.posttrain) builds its chat data here instead."""
        tc = self.config.trainer
        self.tokens_per_step = tc.global_batch_size * self.config.data.seq_len
        self.max_steps = tc.max_steps or math.ceil(tc.max_tokens / self.tokens_per_step)
        self.train_data = self.config.data.build(tc.global_batch_size)
        self.validation = self.config.data.build_validation_dataset()
        for dataset in (self.train_data.dataset, self.validation):
            if dataset is not None:
                check_vocab_fits(dataset.files, self.config.model.embedding_size)
        self.loader = self.train_data.loader(rank=self.rank, world_size=self.world_size,
                                             pin_memory=self.device.type == "cuda")
        if self.state.data:
            self.loader.load_state_dict(self.state.data)

    def batch_tokens(self, batch: dict) -> int:
        """Tokens the step on `batch` counts (over all ranks): pretraining's are fixed."""
        return self.tokens_per_step

    def _load_weights_only(self, model: Transformer, path: str) -> None:
        source = model_files.load_model(path, device=self.device)
        self._check_same_model(source.config, path)
        model.load_state_dict(source.state_dict())

    def _check_same_model(self, saved: ModelConfig, path) -> None:
        """Refuse a checkpoint of another architecture, naming each key that differs."""
        differences = [
            f"model.{f.name}={getattr(saved, f.name)!r} there, {getattr(self.config.model, f.name)!r} here"
            for f in dataclasses.fields(ModelConfig)
            if f.name != "name" and getattr(saved, f.name) != getattr(self.config.model, f.name)
        ]
        if differences:
            raise UserError(f"{path}: saved with another model ({'; '.join(differences)}); restore this run's "
                            f"`model:` section, or start a new run (another trainer.run_dir)")

    def _resume_from_newest_loadable(self, revisions: list[Revision]) -> None:
        """Resume from the newest revision that loads, warning about each newer one that does not
        (its error starts with its path). Older revisions are not even read."""
        for revision in reversed(revisions):
            try:
                self._resume(revision.path)
                return
            except ckpt.DamagedCheckpoint as e:
                if self.rank == 0:
                    print(f"olmolab: skipping damaged revision {e}", file=sys.stderr)
        raise UserError(f"{self.run_dir}: every revision in it is damaged (see above); move them away "
                        f"to start the run afresh")

    def _resume(self, path: Path) -> None:
        self._check_same_model(ckpt.saved_model_config(path), path)
        saved = ckpt.load_checkpoint(path, model=self.model, optimizer=self.optimizer)
        self.state = TrainState(step=saved["step"], tokens=saved["tokens"],
                                skipped_steps=saved.get("skipped_steps", 0),
                                consecutive_skipped_steps=saved.get("consecutive_skipped_steps", 0),
                                data=saved["data"])
        if saved.get("world_size") == self.world_size:
            ckpt.restore_rng_state(path)
        if self.rank == 0:
            print(f"olmolab: resuming from {path} (step {self.state.step})", file=sys.stderr)

    def _build_evaluators(self) -> list:
        if self.config.eval is None:
            return []
        if self.tokenizer is None:
            raise UserError("eval: in-loop downstream evaluation needs trainer.tokenizer (a tokenizer.json)")
        return build_evaluators(self.config.eval, self.tokenizer)

    def _load_tokenizer(self):
        if not self.config.trainer.tokenizer:
            return None
        return Tokenizer.from_file(self.config.trainer.tokenizer)

    def _choose_precision(self) -> Precision:
        tc = self.config.trainer
        chosen = resolve_precision(tc.precision, self.device, key="trainer.precision")
        ddp_on_cpus = self.device.type == "cpu" and self.world_size > 1 and tc.distributed != "fsdp"
        if tc.precision == "auto" and chosen.name == "bf16" and ddp_on_cpus:  # see dist_utils.parallelize
            return Precision("fp32", "auto: bf16 on CPU needs trainer.distributed=fsdp")
        return chosen

    def _autocast(self):
        if self.precision.name == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def resolved_config(self) -> dict:
        """The run's config as it runs: `trainer.precision: auto` is written as what it chose here,
        so the file says how the run computed (and reproduces it when given back)."""
        config = self.config.to_dict()
        config["trainer"]["precision"] = self.precision.name
        return config

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict:
        tc = self.config.trainer
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(self.resolved_config(), indent=2) + "\n")
            if tc.progress:
                tqdm.write(f"olmolab: computing in {self.precision}", file=sys.stderr)
        bar = tqdm(total=self.max_steps, initial=self.state.step, disable=self.rank != 0 or not tc.progress,
                   unit="step", dynamic_ncols=True, desc=self.precision.name)
        batches = iter(self.loader)
        last_row: dict = {}
        self.energy = EnergyMeter(self.run_dir, self.device, tc.watts_per_core)
        self.throughput.resume()
        try:
            while self.state.step < self.max_steps:
                batch = next(batches)
                row = self.train_step(batch)
                self._stop_if_diverged(row)
                self.energy.sample()
                self.state.step += 1
                self.state.tokens += self.batch_tokens(batch)
                bar.update(1)
                if self.state.step % tc.log_interval == 0 or self.state.step == self.max_steps:
                    row |= self.throughput.report()
                    last_row = self._log(row, bar)
                if tc.eval_interval and self.state.step % tc.eval_interval == 0 and self.state.step < self.max_steps:
                    self._evaluate()
                if tc.save_interval and self.state.step % tc.save_interval == 0:
                    self._save()
            if not tc.save_interval or self.state.step % tc.save_interval:
                self._save()
            last_row |= self._evaluate()
            self.energy.record(self.state.step)
        finally:
            bar.close()
            self.sinks.close()
            if self.lock is not None:
                self.lock.release()
        return last_row

    def _stop_if_diverged(self, row: dict) -> None:
        limit = self.config.trainer.max_consecutive_skipped_steps
        if self.state.consecutive_skipped_steps >= limit:
            last = latest_revision(self.run_dir)
            raise UserError(
                f"step {self.state.step + 1}: the last {limit} steps were all skipped for a non-finite loss or "
                f"gradient (loss {row['loss']}, grad norm {row['grad_norm']}): the run has diverged. "
                + (f"Its last revision, {last.path.name}, is intact; " if last else "")
                + "lower optim.lr (or raise trainer.max_consecutive_skipped_steps) and run again"
            )

    def train_step(self, batch: dict) -> dict:
        t = self.state.step if self.config.scheduler.units == "steps" else self.state.tokens
        lr = lr_at(t, self.config.optim.lr, self.config.scheduler, self._t_max())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        row = self.forward_backward(batch)
        parameters = list(self.model.parameters())
        grad_norm = gradient_norm(parameters)
        norm = grad_norm.item()
        skipped = not (math.isfinite(row["loss"]) and math.isfinite(norm))
        self.state.consecutive_skipped_steps = self.state.consecutive_skipped_steps + 1 if skipped else 0
        if skipped:  # never train on a non-finite loss or gradient
            self.state.skipped_steps += 1
            if self.rank == 0:
                tqdm.write(f"olmolab: step {self.state.step + 1}: non-finite loss {row['loss']} or grad norm {norm}; "
                           f"step skipped ({self.state.skipped_steps} so far)", file=sys.stderr)
        else:
            clipped_step(self.optimizer, parameters, self.config.trainer.max_grad_norm or math.inf, grad_norm)
        self.optimizer.zero_grad(set_to_none=True)
        self.throughput.add(self.batch_tokens(batch))
        return row | {"grad_norm": norm, "lr": lr, "skipped_steps": self.state.skipped_steps}

    def forward_backward(self, batch: dict) -> dict:
        """Forward and backward over the rank's share of the batch; returns the step's logged
        losses, reduced over ranks. Post-training (olmolab.posttrain) replaces this."""
        tc = self.config.trainer
        input_ids = batch["input_ids"].to(self.device, non_blocking=True)
        self._check_token_ids(input_ids)
        label_mask = batch.get("label_mask")
        labels = make_labels(input_ids, label_mask.to(self.device) if label_mask is not None else None)
        global_count = dist_utils.all_reduce_sum((labels != IGNORE_INDEX).sum().float())
        # Each rank's loss is scaled so that DDP/FSDP's gradient *average* over ranks gives the
        # gradient of the global mean.
        div = global_count.clamp(min=1) / self.world_size

        def micro_loss(rows: slice):
            out = self.model(input_ids[rows], labels[rows], z_loss_multiplier=tc.z_loss_multiplier, loss_div_factor=div)
            return out.loss, torch.stack([out.ce_loss, out.z_loss])

        ce, z = (self.accumulate(micro_loss) / self.world_size).tolist()
        return {"loss": ce + z, "ce_loss": ce, "z_loss": z}

    def accumulate(self, micro_loss) -> torch.Tensor:
        """Gradient accumulation: `micro_loss(rows)` gives (the loss to backpropagate, a tensor of
        detached values to log) for one micro-batch's rows; gradients sync on the last. Returns
        the logged values summed over micro-batches and ranks."""
        micro = self.config.trainer.micro_batch_size
        total = None
        for i in range(self.accum_steps):
            with dist_utils.set_gradient_sync(self.model, i == self.accum_steps - 1), self._autocast():
                loss, logged = micro_loss(slice(i * micro, (i + 1) * micro))
                loss.backward()
            total = logged if total is None else total + logged
        return dist_utils.all_reduce_sum(total)

    def _check_token_ids(self, input_ids: torch.Tensor) -> None:
        """Token files without our sidecar do not say their vocabulary: catch a foreign id here,
        as an error, rather than as an index error deep inside the embedding."""
        top = int(input_ids.max())
        if top >= self.config.model.embedding_size:
            raise UserError(
                f"step {self.state.step + 1}: the data holds token id {top}, outside the model's vocabulary "
                f"(model.embedding_size={self.config.model.embedding_size}); the token files were written "
                f"with another tokenizer: tokenize them with this model's, or fix model.vocab_size"
            )

    def _t_max(self) -> float:
        sc = self.config.scheduler
        if sc.t_max is not None:
            return sc.t_max
        return self.max_steps if sc.units == "steps" else self.max_steps * self.tokens_per_step

    def _log(self, row: dict, bar) -> dict:
        row = {"step": self.state.step, "tokens": self.state.tokens} | row
        if self.rank == 0 and math.isfinite(row["loss"]) and self.spikes.is_spike(row["loss"]):
            row["loss_spike"] = True
            tqdm.write(f"olmolab: loss spike at step {self.state.step}: {row['loss']:.4f}", file=sys.stderr)
        self.sinks.log(row)
        eta = (self.max_steps - self.state.step) * self.tokens_per_step / max(row["tokens_per_s"], 1e-9)
        bar.set_postfix_str(f"loss {row['loss']:.4f} | {row['tokens_per_s']:,.0f} tok/s | "
                            f"MFU {row['mfu']:.1%} | ETA {_duration(eta)}", refresh=False)
        return row

    # ------------------------------------------------------------------ evaluation and saving

    def _evaluate(self) -> dict:
        self.throughput.pause()
        results: dict = {}
        if self.validation is not None:
            results |= self.validation_metrics()
        model = dist_utils.unwrap(self.model)
        for evaluator in self.evaluators:
            with self._autocast():
                results |= evaluator.evaluate(model)
        if results:
            self.sinks.log({"step": self.state.step, "tokens": self.state.tokens} | results)
            if self.rank == 0 and self.config.trainer.progress:
                shown = ", ".join(f"{k.split('/', 1)[-1]} {v:.4f}" for k, v in results.items())
                tqdm.write(f"step {self.state.step}: {shown}")
        self.throughput.resume()
        return results

    @torch.no_grad()
    def validation_metrics(self) -> dict:
        """Loss, perplexity and bits-per-byte over the held-out instances (all ranks share the work)."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        counts = torch.zeros(2, device=self.device, dtype=torch.float64)  # tokens, bytes
        batches = validation_batches(self.validation, self.config.trainer.micro_batch_size,
                                     rank=self.rank, world_size=self.world_size)
        for i, batch in enumerate(batches):
            if self.config.trainer.eval_batches is not None and i >= self.config.trainer.eval_batches:
                break
            ids = batch["input_ids"].to(self.device)
            labels = make_labels(ids)
            with self._autocast():
                out = self.model(ids, labels, loss_div_factor=1.0)
            loss_sum += out.ce_loss.double()
            counts[0] += (labels != IGNORE_INDEX).sum()
            counts[1] += self._target_bytes(labels)
        self.model.train()
        dist_utils.all_reduce_sum(loss_sum)
        dist_utils.all_reduce_sum(counts)
        tokens, n_bytes = counts.tolist()
        return perplexity_from_totals("validation", loss_sum.item(), int(tokens), int(n_bytes) or None,
                                      n_documents=0).metrics()

    def _target_bytes(self, labels: torch.Tensor) -> int:
        if self.tokenizer is None:
            return 0
        return sum(len(self.tokenizer.decode(row[row != IGNORE_INDEX].tolist()).encode("utf-8"))
                   for row in labels.cpu())

    def _save(self) -> None:
        self.throughput.pause()
        tc = self.config.trainer
        self._refuse_non_finite_weights()
        train_state = {"step": self.state.step, "tokens": self.state.tokens, "skipped_steps": self.state.skipped_steps,
                       "consecutive_skipped_steps": self.state.consecutive_skipped_steps,
                       "world_size": self.world_size, "data": self.loader.state_dict(), "time": time.time()}
        ckpt.save_checkpoint(self.run_dir, model=self.model, optimizer=self.optimizer, train_state=train_state,
                             run_config=self.resolved_config(), tokenizer_path=tc.tokenizer)
        ckpt.prune(self.run_dir, tc.keep_last, tc.permanent_interval)
        self.energy.record(self.state.step)
        self.throughput.resume()


    def _refuse_non_finite_weights(self) -> None:
        """A NaN model is never written as a revision (it would be resumed, exported, souped)."""
        bad = torch.zeros((), device=self.device)
        for param in self.model.parameters():
            local = param.to_local() if hasattr(param, "to_local") else param  # an FSDP2 shard
            bad += (~torch.isfinite(local)).any()
        if dist_utils.all_reduce_sum(bad).item():
            last = latest_revision(self.run_dir)
            raise UserError(
                f"step {self.state.step}: the weights hold NaN or infinite values, so they are not saved"
                + (f" (the last revision, {last.path.name}, is kept)" if last else "")
                + "; the learning rate is likely too high: lower optim.lr and run again"
            )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train(config: RunConfig, trainer_class: type[Trainer] = Trainer) -> dict:
    """Run (or resume) the training described by `config`; returns the last logged metrics.
    Post-training passes its own `Trainer` subclass."""
    trainer = trainer_class(config)
    try:
        return trainer.fit()
    finally:
        # The wrapped model's communication state must go before its process group: a DDP
        # reducer outliving the group can abort the interpreter at exit.
        del trainer
        gc.collect()
        dist_utils.shutdown()
