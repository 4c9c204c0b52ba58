"""olmolab's SFT and DPO steps against TRL's SFTTrainer / DPOTrainer, on the same model.

Both sides train the bench model (TRL loads olmolab's Hugging Face export of it) on the same
single-turn conversations, with the same batch, sequence length, labels (the answer only),
gradient clipping (1.0) and AdamW (fused, no weight decay), on the same threads and in one process (so both run with
the malloc settings olmolab's trainer makes, `olmolab.allocator`). A step is forward, backward,
clipping and the optimizer. The two sides' steps are interleaved: TRL runs its own training
loop, and after each of its steps (a callback, outside TRL's timing) olmolab runs one.

What is compared is *useful* tokens per second: the conversations' tokens, padding not
counted, per second of a step (the median over the timed steps). The sides pad differently
(each pads a batch to its longest row, and the batches differ: each side shuffles the data its
own way), so step times alone would not compare like for like. Each step's trained (labelled)
tokens are counted too, to show both sides train the same targets.

Two sets of conversations, one run each (`--lengths`): every answer of one length (seq_len / 2
words after a question of seq_len / 8; ~330 tokens a conversation at 512), so that a batch has
next to no padding and the two sides do the same work on the same tokens; and answers of varied
lengths, each from a quarter of that to all of it, as chat data is, so that a batch padded to its
longest row is a quarter padding. The first compares the computation alone; the second adds what
each side does with padding (olmolab's SFT skips it: `sft.padding_free`).

TRL's settings are its defaults for this hardware: SFT pads each batch to its longest row
(`padding_free` and packing are, by TRL's documentation, for FlashAttention, which a CPU has not;
`--trl-padding-free` measures it anyway: transformers then masks the flattened batch's
documents apart in SDPA); DPO pads (its `padding_free` is disabled in TRL 1.16) and scores the
answers with its fused LM head. DPO compares olmolab's `dpo` loss with TRL's `sigmoid` (the
same formula), both with the reference's log-probs computed before training (TRL:
`precompute_ref_log_probs=True`), so neither side runs the reference during a step.

On a machine shared with other work, wall-clock steps swing with the load (a descheduled
thread stalls its partner at every barrier), interleaving or not. `--threads 1 --cpu-time`
times each step in the process's CPU time instead: the work each side does, whatever else runs.

Both sides train in fp32 by default. `--precision bf16` trains olmolab in `trainer.precision:
bf16` (fp32 master weights, bf16 compute through FSDP2's mixed precision) and TRL with `bf16=True`
(fp32 weights, the forward under bf16 autocast), on a CPU with a bf16 unit (AMX, AVX512-BF16).

Both sides run eagerly by default, each library's default. `--compile` compiles both:
olmolab's `trainer.compile` (each block) and TRL's `torch_compile` (its whole model); the first
steps then include the compilation, and the two untimed ones may not cover it all.

TRL is needed for this benchmark only (`pip install -e ".[bench]"`); olmolab never imports it.

    python bench/post_train.py
    python bench/post_train.py --steps 8 --batch 8 --seq-len 512
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import BENCH_MODEL, WORDS, bf16_skipped, setup

from olmolab import Transformer
from olmolab.convert import hf
from olmolab.model.loss import IGNORE_INDEX
from olmolab.model_files import save_model
from olmolab.posttrain.config import post_train_config_from_dict
from olmolab.posttrain.dpo import DPOTrainer
from olmolab.posttrain.sft import SFTTrainer
from olmolab.tokenizer import train_bpe


def conversations(n: int, answer_words: int, seed: int, lengths: str = "uniform") -> list[tuple[str, str, str]]:
    """(question, answer, another answer) triples of random words, the questions answer_words / 4
    long, the answers answer_words ("uniform") or each from answer_words / 4 to answer_words
    words, uniformly ("varied")."""
    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    answer = lambda: text(answer_words if lengths == "uniform" else rng.randint(answer_words // 4, answer_words))  # noqa: E731
    return [(text(answer_words // 4), answer(), answer()) for _ in range(n)]


@dataclass
class Step:
    seconds: float
    useful: int
    """The conversations' tokens (a DPO pair counts both sides), padding not counted."""
    trained: int
    """Labelled tokens."""


def tokens_per_s(steps: list[Step]) -> float:
    """The median over the timed steps (the first two warm up) of useful tokens per second: a
    median, as for step times, so that a step stalled by other work does not weigh in."""
    return statistics.median(s.useful / s.seconds for s in steps[2:])


class OlmolabSide:
    """olmolab's post-trainer, stepped one batch at a time."""

    def __init__(self, method: str, tmp: Path, data: Path, batch: int, seq_len: int, steps: int, clock,
                 precision: str, compile: bool = False):
        section = {"sft": {"reduction": "mean"}, "dpo": {"loss": "dpo", "beta": 0.1}}[method]
        raw = {
            method: {"paths": [str(data)], "max_seq_len": seq_len} | section,
            "trainer": {"load_path": str(tmp / "olmolab"), "run_dir": str(tmp / f"run-{method}"),
                        "global_batch_size": batch, "micro_batch_size": batch, "max_steps": steps,
                        "save_interval": None, "progress": False, "precision": precision,  # as TRL's side
                        "compile": compile,
                        "max_grad_norm": 1.0},  # as TRL's (post-training's default is none, the same work: the norm is logged)
            "optim": {"lr": 1e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},  # as TRL's
            "scheduler": {"name": "constant"},
        }
        self.method, self.clock = method, clock
        self.trainer = (SFTTrainer if method == "sft" else DPOTrainer)(post_train_config_from_dict(method, raw))
        self.batches = iter(self.trainer.loader)
        self.steps: list[Step] = []

    def step(self) -> None:
        items = self.trainer.loader.batch_items(self.trainer.loader.batches)
        batch = next(self.batches)
        t0 = self.clock()
        self.trainer.train_step(batch)
        seconds = self.clock() - t0
        examples = [self.trainer.examples[i] for i in items]
        if self.method == "sft":  # a sequence: one or more (packed) conversations
            useful = sum(len(e.ids) for sequence in examples for e in sequence)
        else:
            useful = sum(len(p.chosen.ids) + len(p.rejected.ids) for p in examples)
        trained = sum(int((v != IGNORE_INDEX).sum()) for k, v in batch.items() if k.endswith("labels"))
        self.steps.append(Step(seconds, useful, trained))


def trl_token_counts(inputs: dict) -> tuple[int, int]:
    """(useful, trained) tokens of a TRL batch. Its labels are not shifted: the model shifts them."""
    ids = inputs["input_ids"]
    useful = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else ids.numel()  # padding-free: none
    if "completion_mask" in inputs:  # DPO
        return useful, int(inputs["completion_mask"][:, 1:].sum())
    return useful, int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())


def run_interleaved(method: str, tmp: Path, rows: list[dict], ours: OlmolabSide, batch: int, seq_len: int,
                    steps: int, padding_free: bool, clock, precision: str, compile: bool = False) -> list[Step]:
    """TRL's steps; after each, outside its timing, one of `ours`."""
    import datasets
    import transformers
    import trl

    theirs: list[Step] = []
    counts: list[tuple[int, int]] = []

    class Interleave(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = clock()

        def on_step_end(self, args, state, control, **kwargs):
            theirs.append(Step(clock() - self.t0, *counts.pop(0)))
            ours.step()

    base = trl.SFTTrainer if method == "sft" else trl.DPOTrainer

    class Counted(base):
        def training_step(self, model, inputs, *args, **kwargs):
            counts.append(trl_token_counts(inputs))
            return super().training_step(model, inputs, *args, **kwargs)

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp / "hf", dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp / "hf")
    common = dict(output_dir=str(tmp / f"trl-{method}"), per_device_train_batch_size=batch, max_steps=steps,
                  learning_rate=1e-5, lr_scheduler_type="constant", weight_decay=0.0, adam_beta2=0.999,
                  max_grad_norm=1.0, report_to="none", save_strategy="no", logging_steps=10**6, use_cpu=True,
                  dataloader_num_workers=0, max_length=seq_len, seed=0, disable_tqdm=True,
                  bf16=precision == "bf16",  # fp32 weights, bf16 autocast (TRL's configs default to True)
                  gradient_checkpointing=False,  # as olmolab's side (TRL's configs default to True: recomputation)
                  torch_compile=compile)
    if method == "sft":
        if padding_free:  # TRL enforces no max_length then; every conversation here fits it
            common["max_length"] = None
        config = trl.SFTConfig(**common, completion_only_loss=True, packing=False, padding_free=padding_free)
    else:
        config = trl.DPOConfig(**common, beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=True)
    trainer = Counted(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                      processing_class=tokenizer, callbacks=[Interleave()])
    trainer.train()
    return theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="steps per side (the first two are not timed)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trl-padding-free", action="store_true", help="TRL's SFT without padding (see above)")
    parser.add_argument("--methods", nargs="+", choices=["sft", "dpo"], default=["sft", "dpo"])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: olmolab's trainer.precision bf16 against TRL's bf16=True (both keep fp32 "
                             "weights; needs a CPU with a bf16 unit)")
    parser.add_argument("--lengths", choices=["uniform", "varied", "both"], default="both",
                        help="every answer seq_len/2 words long (a conversation ~2/3 of seq_len tokens), or each "
                             "from a quarter of that to all of it; both: one run each (see above)")
    parser.add_argument("--compile", action="store_true",
                        help="both sides torch.compile'd: olmolab's trainer.compile, TRL's torch_compile")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time steps in the process's CPU time, not wall-clock (see above; use with --threads 1)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the whole comparison this many times and end with each ratio's median: one run's "
                             "ratio moves by several percent with the load of a shared machine")
    args = parser.parse_args()
    setup(args.threads)
    if args.precision == "bf16" and bf16_skipped("--precision bf16"):
        sys.exit(1)
    clock = time.process_time if args.cpu_time else time.perf_counter
    try:
        import trl
    except ImportError:
        sys.exit("bench/post_train.py compares with TRL: pip install -e '.[bench]'")
    ratios: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeat):
        for lengths in ("uniform", "varied") if args.lengths == "both" else (args.lengths,):
            results = run_both(args, clock, lengths)
            print(f"bench model, batch {args.batch} (DPO: pairs), conversations up to {args.seq_len} tokens, "
                  f"{LENGTHS[lengths]}, {args.precision}, {args.threads} threads, TRL {trl.__version__}"
                  + (", TRL SFT padding-free" if args.trl_padding_free else "") + (", CPU time" if args.cpu_time else ""))
            for method, sides in results.items():
                for name, steps in zip(("olmolab", "TRL"), sides, strict=True):
                    timed = steps[2:]
                    print(f"  {method.upper():3s} {name:7s}  step {statistics.median(s.seconds for s in timed) * 1e3:7.1f} ms "
                          f"(median)  {tokens_per_s(steps):7.0f} useful tokens/s  per step: "
                          f"{statistics.mean(s.useful for s in timed):6.0f} useful, "
                          f"{statistics.mean(s.trained for s in timed):6.0f} trained")
                ratio = tokens_per_s(sides[0]) / tokens_per_s(sides[1])
                ratios.setdefault((method, lengths), []).append(ratio)
                print(f"  {method.upper():3s} olmolab is {ratio:.2f}x TRL in useful tokens/s")
    if args.repeat > 1:
        print(f"over {args.repeat} runs:")
        for (method, lengths), values in ratios.items():
            print(f"  {method.upper():3s} {LENGTHS[lengths]:38s} " + ", ".join(f"{r:.2f}x" for r in values)
                  + f"; median {statistics.median(values):.2f}x")


LENGTHS = {"uniform": "answers all of one length", "varied": "answers from 1/4 to all of that length"}


def run_both(args: argparse.Namespace, clock, lengths: str) -> dict[str, tuple[list[Step], list[Step]]]:
    """Each method's (olmolab's steps, TRL's steps) on conversations of `lengths`."""
    triples = conversations(args.batch * args.steps, answer_words=args.seq_len // 2, seed=0, lengths=lengths)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tokenizer = train_bpe([" ".join(t) for t in triples] + ["<|user|>\n<|assistant|>\n"] * 50, vocab_size=2048)
        model = Transformer(BENCH_MODEL.replace(max_seq_len=args.seq_len))
        save_model(model, tmp / "olmolab", tokenizer=tokenizer)
        hf.export(model, tmp / "hf", tokenizer=tokenizer)
        user = lambda q: [{"role": "user", "content": q}]  # noqa: E731
        assistant = lambda a: [{"role": "assistant", "content": a}]  # noqa: E731
        rows = {"sft": [{"prompt": user(q), "completion": assistant(a)} for q, a, _ in triples],
                "dpo": [{"prompt": user(q), "chosen": assistant(a), "rejected": assistant(b)} for q, a, b in triples]}
        (tmp / "sft.jsonl").write_text("".join(json.dumps({"messages": r["prompt"] + r["completion"]}) + "\n"
                                               for r in rows["sft"]))
        (tmp / "dpo.jsonl").write_text("".join(json.dumps({"chosen": r["prompt"] + r["chosen"],
                                                           "rejected": r["prompt"] + r["rejected"]}) + "\n"
                                               for r in rows["dpo"]))
        results = {}
        for method in args.methods:
            ours = OlmolabSide(method, tmp, tmp / f"{method}.jsonl", args.batch, args.seq_len, args.steps, clock,
                               args.precision, args.compile)
            theirs = run_interleaved(method, tmp, rows[method], ours, args.batch, args.seq_len, args.steps,
                                     args.trl_padding_free, clock, args.precision, args.compile)
            results[method] = (ours.steps, theirs)
    return results


if __name__ == "__main__":
    main()
