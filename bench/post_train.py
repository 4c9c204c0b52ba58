"""olmolab's SFT and DPO steps against TRL's SFTTrainer / DPOTrainer, on the same model.

Both sides train the bench model (TRL loads olmolab's Hugging Face export of it) on the same
single-turn conversations, with the same batch, sequence length, labels (the answer only) and
AdamW, on the same threads. A step is forward, backward and the optimizer; the median of the
timed steps is reported, and the ratio of the two. DPO compares olmolab's `dpo` loss with TRL's
`sigmoid` (the same formula), both with the reference's log-probs computed before training
(TRL: `precompute_ref_log_probs=True`), so neither side runs the reference during a step.

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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import BENCH_MODEL, setup

from olmolab import Transformer
from olmolab.convert import hf
from olmolab.model_files import save_model
from olmolab.posttrain.config import post_train_config_from_dict
from olmolab.posttrain.dpo import DPOTrainer
from olmolab.posttrain.sft import SFTTrainer
from olmolab.tokenizer import train_bpe

WORDS = "the of and to in is was for on that with as by at from his her it an are were which this be".split()


def conversations(n: int, answer_words: int, seed: int) -> list[tuple[str, str, str]]:
    """(question, answer, another answer) triples of random words, the answers ~answer_words long."""
    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [(text(answer_words // 4), text(answer_words), text(answer_words)) for _ in range(n)]


def olmolab_step_seconds(method: str, tmp: Path, data: Path, batch: int, seq_len: int, steps: int) -> float:
    section = {"sft": {"reduction": "mean"}, "dpo": {"loss": "dpo", "beta": 0.1}}[method]
    raw = {
        method: {"paths": [str(data)], "max_seq_len": seq_len} | section,
        "trainer": {"load_path": str(tmp / "olmolab"), "run_dir": str(tmp / f"run-{method}"), "global_batch_size": batch,
                    "micro_batch_size": batch, "max_steps": steps, "save_interval": None, "progress": False},
        "optim": {"lr": 1e-5, "betas": [0.9, 0.999], "eps": 1e-8},
        "scheduler": {"name": "constant"},
    }
    trainer = (SFTTrainer if method == "sft" else DPOTrainer)(post_train_config_from_dict(method, raw))
    times = []
    for batch_ in iter(trainer.loader):
        if len(times) == steps:
            break
        t0 = time.perf_counter()
        trainer.train_step(batch_)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def trl_step_seconds(method: str, tmp: Path, rows: list[dict], batch: int, seq_len: int, steps: int) -> float:
    import datasets
    import transformers
    import trl

    class StepTimer(transformers.TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.t0)

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp / "hf", dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp / "hf")
    common = dict(output_dir=str(tmp / f"trl-{method}"), per_device_train_batch_size=batch, max_steps=steps,
                  learning_rate=1e-5, lr_scheduler_type="constant", weight_decay=0.0, adam_beta2=0.999,
                  report_to="none", save_strategy="no", logging_steps=10**6, use_cpu=True,
                  dataloader_num_workers=0, max_length=seq_len, seed=0, disable_tqdm=True)
    timer = StepTimer()
    if method == "sft":
        config = trl.SFTConfig(**common, completion_only_loss=True, packing=False)
        trainer = trl.SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                                 processing_class=tokenizer, callbacks=[timer])
    else:
        config = trl.DPOConfig(**common, beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=True)
        trainer = trl.DPOTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                                 processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    return statistics.median(timer.times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="steps per side (the first two are not timed)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    setup(args.threads)
    try:
        import trl
    except ImportError:
        sys.exit("bench/post_train.py compares with TRL: pip install -e '.[bench]'")
    triples = conversations(args.batch * args.steps, answer_words=args.seq_len // 2, seed=0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tokenizer = train_bpe([" ".join(t) for t in triples] + ["<|user|>\n<|assistant|>\n"] * 50, vocab_size=2048)
        model = Transformer(BENCH_MODEL.replace(max_seq_len=args.seq_len))
        save_model(model, tmp / "olmolab", tokenizer=tokenizer)
        hf.export(model, tmp / "hf", tokenizer=tokenizer)
        user = lambda q: [{"role": "user", "content": q}]  # noqa: E731
        assistant = lambda a: [{"role": "assistant", "content": a}]  # noqa: E731
        sft_rows = [{"prompt": user(q), "completion": assistant(a)} for q, a, _ in triples]
        dpo_rows = [{"prompt": user(q), "chosen": assistant(a), "rejected": assistant(b)} for q, a, b in triples]
        (tmp / "sft.jsonl").write_text("".join(json.dumps({"messages": r["prompt"] + r["completion"]}) + "\n"
                                               for r in sft_rows))
        (tmp / "dpo.jsonl").write_text("".join(json.dumps({"chosen": r["prompt"] + r["chosen"],
                                                           "rejected": r["prompt"] + r["rejected"]}) + "\n"
                                               for r in dpo_rows))
        results = {}
        for method, rows in (("sft", sft_rows), ("dpo", dpo_rows)):
            ours = olmolab_step_seconds(method, tmp, tmp / f"{method}.jsonl", args.batch, args.seq_len, args.steps)
            theirs = trl_step_seconds(method, tmp, rows, args.batch, args.seq_len, args.steps)
            results[method] = (ours, theirs)
    print(f"bench model, batch {args.batch} (DPO: pairs), conversations up to {args.seq_len} tokens, fp32, "
          f"{args.threads} threads, TRL {trl.__version__}")
    for method, (ours, theirs) in results.items():
        print(f"  {method.upper():4s} step: olmolab {ours * 1e3:8.1f} ms   TRL {theirs * 1e3:8.1f} ms   "
              f"olmolab is {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
