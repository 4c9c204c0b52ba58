"""RLVR's rollouts against the project's own `generate` on the same batch, and a step's split.

The bench model samples `--samples` responses to each of `--prompts` prompts per step, inside
`olmolab rlvr`'s step (RLVRTrainer.train_step: sampling, scoring, reference, update), and
outside it: `generate` called directly on the same prompts with the same sampling settings, on a
copy of the weights the step samples from, before the step on odd steps and after it on even
ones (so neither side always inherits the other's warm caches). Both sides generate to the full
response length, and both build the decode kernels' weight layouts of the step's weights (they
live for one `generate` call). Reported: the median tokens/s of each side, their ratio and the
median of each step's own ratio (which the machine's drift between steps moves less), and the
median share of a step spent sampling, on the rest of the rollout (scoring, the reference's
log-probs) and learning.

    python bench/rlvr.py
    python bench/rlvr.py --prompts 4 --samples 8 --response-length 128 --steps 6
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import BENCH_MODEL, WORDS, setup

from olmolab import Transformer
from olmolab.generation import GenerationConfig, generate
from olmolab.model_files import save_model
from olmolab.posttrain.config import post_train_config_from_dict
from olmolab.posttrain.rlvr import RLVRTrainer
from olmolab.tokenizer import train_bpe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=11, help="RLVR steps (the first is not timed)")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--response-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    setup(args.threads)
    rng = random.Random(0)
    questions = [" ".join(rng.choice(WORDS) for _ in range(24)) for _ in range(args.prompts * args.steps)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tokenizer = train_bpe(questions + ["<|user|>\n<|assistant|>\n"] * 50, vocab_size=2048)
        save_model(Transformer(BENCH_MODEL), tmp / "base", tokenizer=tokenizer)
        (tmp / "prompts.jsonl").write_text("".join(
            json.dumps({"messages": [{"role": "user", "content": q}], "ground_truth": "1", "dataset": "gsm8k"}) + "\n"
            for q in questions))
        raw = {
            "rlvr": {"paths": [str(tmp / "prompts.jsonl")], "max_seq_len": BENCH_MODEL.max_seq_len,
                     "samples_per_prompt": args.samples, "response_length": args.response_length, "sample_interval": 0},
            "trainer": {"load_path": str(tmp / "base"), "run_dir": str(tmp / "run"), "global_batch_size": args.prompts,
                        "micro_batch_size": 1, "max_steps": args.steps, "save_interval": None, "progress": False,
                        "precision": "fp32"},  # as generate's side
            "optim": {"lr": 1e-5},
            "scheduler": {"name": "constant"},
        }
        trainer = RLVRTrainer(post_train_config_from_dict("rlvr", raw))
        eos = trainer.config.model.eos_token_id
        trainer.config.model.eos_token_id = -1  # never met: every response is response_length long, on both sides
        inside, outside, shares = [], [], []
        for step, batch in zip(range(args.steps), iter(trainer.loader), strict=False):
            trainer.state.step = step
            prompts = [trainer.examples[int(i)].ids.tolist() for i in batch["prompt_index"] for _ in range(args.samples)]
            model = copy.deepcopy(trainer.raw_model)  # the weights this step's rollout samples from
            config = GenerationConfig(max_new_tokens=args.response_length, temperature=1.0, eos_token_id=-1, seed=step)
            alone_first = step % 2 == 1  # alternate which side runs first: neither inherits the other's warm caches
            if alone_first:
                alone = _tokens_per_s(model, prompts, config)
            t0 = time.perf_counter()
            row = trainer.train_step(batch)
            total = time.perf_counter() - t0
            if not alone_first:
                alone = _tokens_per_s(model, prompts, config)
            if step:
                outside.append(alone)
                inside.append(row["sampled_tokens_per_s"])
                sampling, rollout = row["time/sampling_s"], row["time/generation_s"]
                shares.append((sampling / total, (rollout - sampling) / total, row["time/learning_s"] / total))
        trainer.config.model.eos_token_id = eos
    ours, plain = statistics.median(inside), statistics.median(outside)
    sampling, rest, learning = (statistics.median(s[i] for s in shares) for i in range(3))
    print(f"bench model, {args.prompts} prompts x {args.samples} samples x {args.response_length} tokens, fp32, "
          f"{args.threads} threads, median of {len(inside)} steps")
    per_step = statistics.median(i / o for i, o in zip(inside, outside, strict=True))
    print(f"  sampling tokens/s: inside RLVR {ours:8.1f}   generate alone {plain:8.1f}   ratio {ours / plain:.2f} "
          f"(median of each step's ratio: {per_step:.2f})")
    print(f"  share of an RLVR step: sampling {sampling:.0%}, scoring + reference {rest:.0%}, learning {learning:.0%}")


def _tokens_per_s(model, prompts: list[list[int]], config: GenerationConfig) -> float:
    start = time.perf_counter()
    tokens = sum(len(r) for r in generate(model, prompts, config))
    return tokens / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
