"""GSM8K generative evaluation throughput: `olmolab eval`'s batched decoding vs transformers'
`generate` one example at a time.

Same weights (the bench model, random init, exported to transformers), same 8-shot GSM8K prompts
(left-truncated to leave room for the answer in the 512-token window), greedy, GSM8K's stop
sequences, the same max new tokens. Both sides turn every prompt into a scored answer:

- olmolab:      `evaluate_generative` (prompts sorted by length, batches of --batch-size with the
                KV cache; rows that reach a stop sequence or EOS leave their batch);
- transformers: `model.generate(ids, max_new_tokens, do_sample=False, stop_strings=...)` per
                example, the answer decoded and cut at the first stop sequence, then scored.

transformers at batch 1 costs the same per example however many there are, so it answers the
first --anchor-examples only (its examples/s is a rate; the run stays short). Both must give the
same answers to those (checked; a random model rarely stops early, so most rows run the whole
budget: the case where a long answer could hold up a batch). One run of each side; prints
examples/s and the ratio (the issue's target: at least 3x).

    python bench/eval_generative.py [--examples 32] [--anchor-examples 8] [--max-new-tokens 64] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import BENCH_MODEL, bench_tokenizer, setup

from olmolab import Transformer
from olmolab.convert import hf
from olmolab.eval.gen_eval import GenSpec, encode_prompts, evaluate_generative
from olmolab.eval.gen_metrics import METRICS
from olmolab.eval.generative import GEN_TASKS, build_gen_examples

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TARGET = 3.0


def transformers_answers(hf_model, hf_tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """One `generate` call per example, the text cut at the first stop sequence, as OLMES does."""
    stops = list(GEN_TASKS["gsm8k"].stop_sequences)
    answers = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        out = hf_model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            stop_strings=stops, tokenizer=hf_tokenizer, pad_token_id=BENCH_MODEL.pad_token_id,
        )  # fmt: skip
        new = [t for t in out[0, ids.shape[1] :].tolist() if t != BENCH_MODEL.eos_token_id]
        text = hf_tokenizer.decode(new)
        cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
        answers.append(text[:cut])
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--anchor-examples", type=int, default=8, help="examples transformers answers")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (SHARED / "eval" / "olmes-gen" / "gsm8k").exists():
        sys.exit(f"shared data not found at {SHARED}; this benchmark reads GSM8K and the corpora from there")
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    setup(args.threads)
    tokenizer = bench_tokenizer(SHARED)
    model = Transformer(BENCH_MODEL).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf_model = AutoModelForCausalLM.from_pretrained(hf.export(model, tmp)).eval()
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer.hf)

    spec = GenSpec("gsm8k")
    examples = build_gen_examples("gsm8k", None, SHARED / "eval", args.examples)
    window = BENCH_MODEL.max_seq_len
    prompts = encode_prompts(tokenizer, examples, chat=False, max_prompt_tokens=window - args.max_new_tokens)
    print(
        f"bench model {BENCH_MODEL.name}: {model.num_params() / 1e6:.1f}M params, fp32, {torch.get_num_threads()} "
        f"threads; GSM8K 8-shot, {len(examples)} examples, prompts {min(map(len, prompts))}-"
        f"{max(map(len, prompts))} tokens, up to {args.max_new_tokens} new tokens, batch size {args.batch_size}"
    )

    t0 = time.perf_counter()
    result = evaluate_generative(
        model, tokenizer, spec, examples, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
    )
    ours_s = time.perf_counter() - t0
    anchor = min(args.anchor_examples, len(examples))
    with torch.inference_mode():
        t0 = time.perf_counter()
        answers = transformers_answers(hf_model, hf_tokenizer, prompts[:anchor], args.max_new_tokens)
        scores = [
            METRICS["gsm8k"](a, ex.golds).values["exact_match"]
            for a, ex in zip(answers, examples, strict=False)
        ]
        theirs_s = time.perf_counter() - t0

    ours = [p["prediction"] for p in result.predictions]
    same = sum(a == b for a, b in zip(ours, answers, strict=False))
    stopped = sum(len(tokenizer.encode(a)) < args.max_new_tokens for a in ours)
    print(
        f"answers identical to transformers': {same}/{anchor}; olmolab answers that stopped early: {stopped}"
    )
    print(
        f"exact match: olmolab {result.metrics['exact_match']:.3f}, transformers {sum(scores) / anchor:.3f}"
    )
    ours_rate, theirs_rate = len(examples) / ours_s, anchor / theirs_s
    print(f"  transformers generate, 1 at a time  {theirs_rate:7.2f} examples/s ({anchor} examples)")
    print(f"  olmolab eval, batched               {ours_rate:7.2f} examples/s ({len(examples)} examples)")
    ratio = ours_rate / theirs_rate
    print(f"  ratio {ratio:.2f}x (target >= {TARGET:.0f}x: {'met' if ratio >= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
