"""OLMo 2's base-model recipe, end to end, at CPU scale.

    python recipes/olmo2.py                                # ~15 minutes on 2 cores -> runs/olmo2-recipe
    python recipes/olmo2.py --scale tiny --out /tmp/r      # well under a minute: what the tests run

OLMo 2 (../shared/seeds/003_*, configs/official/olmo2-7b-stage{1,2}.yaml), and what stands in
for each part here:

1. Stage 1 pretrains on the pretraining mix with a cosine schedule.
   Here: the Python 3.11 docs, cosine from the peak LR to a tenth of it.
2. Stage 2 trains three copies from stage 1's final checkpoint, each with its own data order
   (data seeds 42, 42069 and 666), on a 50/50 mixture of filtered web and high-quality data,
   the LR going linearly from where stage 1 left it to zero.
   Here: 50/50 of the Python docs (stage 1's data) and WikiText-2's validation split (the new
   domain), with fresh trainer state from stage 1's last revision.
3. The three are souped (`olmolab soup`: the uniform average of their weights).

Each model (stage 1, the three ingredients, the soup) is then scored on held-out text,
WikiText-2's *test* split (bits per byte), and on one downstream task (PIQA), and the recipe
prints the table, then what each model cost as the model card counts it: tokens, energy and
emissions of all the training that made it (stage 1 for every model, plus its anneal for an
ingredient, plus all three for the soup). Each training run also gets its `olmolab report`.
Every step is the `olmolab` command a user would type: the stage configs are written to
OUT/configs/ and each command is printed before it runs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from olmolab.cli import main as olmolab
from olmolab.config import load_run_config
from olmolab.revisions import latest_revision
from olmolab.train.energy import read_energy
from olmolab.train.metrics import read_metrics
from olmolab.train.optim import lr_at

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ANNEAL_SEEDS = (42, 42069, 666)  # OLMo-2-1124-7B's three stage-2 ingredients
HELD_OUT = "wikitext-2/test.txt"
TASK = "piqa"


@dataclass(frozen=True)
class Scale:
    model: dict
    seq_len: int
    batch: int
    stage1_steps: int
    stage2_steps: int
    peak_lr: float
    vocab_size: int
    corpus_chars: int | None
    """Train on the first this many characters of each corpus (None: all of it)."""
    eval_tokens: int
    """Held-out tokens scored per model."""
    task_limit: int


SCALES = {
    "cpu": Scale(
        model={"preset": "olmo2-20m", "d_model": 192, "n_layers": 4, "n_heads": 6, "mlp_hidden_size": 576,
               "max_seq_len": 256},
        seq_len=256, batch=8, stage1_steps=200, stage2_steps=40, peak_lr=2e-3, vocab_size=8192,
        corpus_chars=None, eval_tokens=40_000, task_limit=500,
    ),
    "tiny": Scale(
        model={"preset": "olmo2-tiny", "max_seq_len": 64},
        seq_len=64, batch=8, stage1_steps=12, stage2_steps=4, peak_lr=3e-3, vocab_size=512,
        corpus_chars=100_000, eval_tokens=2_000, task_limit=8,
    ),
}


def run(argv: list[str]) -> None:
    """Echo an olmolab command, then run it in this process; stop the recipe if it fails."""
    print(f"\n$ olmolab {' '.join(argv)}", flush=True)
    started = time.perf_counter()
    code = olmolab(argv)
    if code:
        sys.exit(f"olmolab {argv[0]} failed (exit {code})")
    print(f"({time.perf_counter() - started:.0f} s)", flush=True)


def excerpt(source: Path, out_dir: Path, n_chars: int | None) -> Path:
    """The corpus itself, or its first `n_chars` characters (whole documents) as a file in out_dir."""
    if n_chars is None:
        return source
    out = out_dir / source.name
    out_dir.mkdir(parents=True, exist_ok=True)
    if source.name.endswith(".jsonl.gz"):
        kept, size = [], 0
        with gzip.open(source, "rt") as f:
            for line in f:
                if size >= n_chars:
                    break
                kept.append(line)
                size += len(json.loads(line)["text"])
        with gzip.open(out, "wt") as f:
            f.writelines(kept)
    else:
        out.write_text(source.read_text()[:n_chars])
    return out


def stage1_config(out: Path, scale: Scale, docs: Path, held_out: Path, precision: str = "fp32") -> dict:
    tokens = out / "tokens"
    return {
        "prepare": {
            "tokenizer": {"out": str(out / "tokenizer.json"), "train_files": [str(docs)], "vocab_size": scale.vocab_size},
            "tokenize": {"inputs": [str(docs)], "out": str(tokens / "python-docs")},
            "validation": {"inputs": [str(held_out)], "out": str(tokens / "held-out")},
        },
        "model": scale.model | {"vocab_size": scale.vocab_size, "embedding_size": scale.vocab_size},
        "data": {"paths": [str(tokens / "python-docs")], "validation_paths": [str(tokens / "held-out")],
                 "seq_len": scale.seq_len, "seed": 6198},
        "trainer": {"run_dir": str(out / "stage1"), "tokenizer": str(out / "tokenizer.json"),
                    "global_batch_size": scale.batch, "micro_batch_size": scale.batch,
                    "max_steps": scale.stage1_steps, "save_interval": None, "eval_interval": scale.stage1_steps // 4,
                    "eval_batches": 4, "z_loss_multiplier": 1e-5, "precision": precision},
        "optim": {"lr": scale.peak_lr, "weight_decay": 0.1},
        "scheduler": {"name": "cosine", "t_warmup": max(1, scale.stage1_steps // 10), "alpha_f": 0.1},
    }


def stage2_config(stage1: dict, out: Path, scale: Scale, seed: int, start: Path, start_lr: float, wiki: Path) -> dict:
    """An anneal from `start`: stage 1's model and tokenizer, the 50/50 mixture in the order of
    `seed`, the LR linear from `start_lr` (where stage 1 left it) to zero."""
    config = json.loads(json.dumps(stage1))  # a deep copy
    tokens = out / "tokens"
    config["prepare"] = {"tokenizer": {"out": str(out / "tokenizer.json")},
                         "tokenize": {"inputs": [str(wiki)], "out": str(tokens / "wikitext-valid")}}
    config["data"] |= {"paths": [], "seed": seed, "sources": [
        {"name": "python-docs", "paths": [str(tokens / "python-docs")], "weight": 0.5},
        {"name": "wikitext-valid", "paths": [str(tokens / "wikitext-valid")], "weight": 0.5},
    ]}
    config["trainer"] |= {"run_dir": str(out / f"stage2-seed{seed}"), "load_path": str(start),
                          "reset_trainer_state": True, "max_steps": scale.stage2_steps,
                          "eval_interval": None}
    config["optim"]["lr"] = start_lr
    config["scheduler"] = {"name": "linear", "t_warmup": 0, "alpha_f": 0.0}
    return config


def final_lr(stage1_config: Path) -> float:
    """The LR stage 1 ended at, where OLMo 2's anneals start."""
    config = load_run_config(stage1_config)
    steps = config.trainer.max_steps
    return lr_at(steps, config.optim.lr, config.scheduler, steps)


def write_config(out: Path, name: str, config: dict) -> Path:
    path = out / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def evaluate(model_dir: Path, out: Path, name: str, scale: Scale, held_out: Path) -> dict:
    """Held-out bits per byte and the task's accuracy, read back from `olmolab eval --output`."""
    result = out / "eval" / f"{name}.json"
    run(["eval", str(model_dir), "--tasks", TASK, "--limit", str(scale.task_limit), "--no-pmi",
         "--data-dir", str(SHARED_DATA / "eval"), "--perplexity", str(held_out),
         "--max-tokens", str(scale.eval_tokens), "--output", str(result)])
    scores = json.loads(result.read_text())
    return {"bpb": scores["perplexity"][held_out.name]["bits_per_byte"],
            "acc": scores["downstream"][TASK]["metrics"]["acc"]}


def table(scores: dict[str, dict]) -> str:
    """The Markdown table the recipe prints, with the soup set against its ingredients."""
    lines = [f"| model | held-out bits per byte ({HELD_OUT}) | {TASK} acc |", "|---|---:|---:|"]
    lines += [f"| {name} | {s['bpb']:.4f} | {s['acc']:.3f} |" for name, s in scores.items()]
    ingredients = [s["bpb"] for name, s in scores.items() if name.startswith("stage 2")]
    soup, mean, best = scores["soup"]["bpb"], statistics.fmean(ingredients), min(ingredients)
    lines += ["", f"soup {soup:.4f} bpb vs ingredients' mean {mean:.4f} "
                  f"({'no worse' if soup <= mean else 'WORSE'}) and best {best:.4f} "
                  f"({'better' if soup < best else 'not better'}); lower is better"]
    return "\n".join(lines)


def footprint(run_dirs: list[Path], carbon_intensity: float) -> dict:
    """Tokens, kWh and kg CO2e of the training runs that made a model (the model card's columns)."""
    energies = [read_energy(d) for d in run_dirs]
    kwh = sum(e.kwh for e in energies)
    return {"tokens": sum(read_metrics(d)[-1]["tokens"] for d in run_dirs), "kwh": kwh,
            "co2": kwh * carbon_intensity, "method": " and ".join(sorted({e.method for e in energies}))}


def footprint_table(footprints: dict[str, dict], carbon_intensity: float) -> str:
    lines = ["| model | tokens trained | power consumption (kWh) | carbon emissions (g CO₂e) |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {f['tokens']:,} | {f['kwh']:.4f} ({f['method']}) | {1000 * f['co2']:.2f} |"
              for name, f in footprints.items()]
    lines += ["", f"carbon intensity {carbon_intensity:g} kg CO₂e/kWh (trainer.carbon_intensity); "
                  f"each model counts all the training that made it"]
    return "\n".join(lines)


def train_stages(out: Path, scale: Scale, docs: Path, wiki: Path, held_out: Path,
                 precision: str = "fp32") -> tuple[Path, dict[str, Path]]:
    """Stage 1, the three anneals and the soup; (stage 1's config, each model's checkpoint)."""
    stage1 = stage1_config(out, scale, docs, held_out, precision)
    stage1_path = write_config(out, "stage1", stage1)
    run(["train", str(stage1_path)])
    stage1_end, start_lr = latest_revision(out / "stage1").path, final_lr(stage1_path)
    models = {"stage 1": stage1_end}
    for seed in ANNEAL_SEEDS:
        config = stage2_config(stage1, out, scale, seed, stage1_end, start_lr, wiki)
        run(["train", str(write_config(out, f"stage2-seed{seed}", config))])
        models[f"stage 2, seed {seed}"] = latest_revision(config["trainer"]["run_dir"]).path
    run(["soup", *(str(models[f"stage 2, seed {seed}"]) for seed in ANNEAL_SEEDS), "--out", str(out / "soup")])
    return stage1_path, models | {"soup": out / "soup"}


def footprints(out: Path, intensity: float) -> dict[str, dict]:
    """Each model's footprint: stage 1's run, plus its anneal for an ingredient, plus all three for the soup."""
    stage1, anneals = out / "stage1", [out / f"stage2-seed{seed}" for seed in ANNEAL_SEEDS]
    found = {"stage 1": footprint([stage1], intensity)}
    found |= {f"stage 2, seed {seed}": footprint([stage1, run_dir], intensity)
              for seed, run_dir in zip(ANNEAL_SEEDS, anneals, strict=True)}
    return found | {"soup": footprint([stage1, *anneals], intensity)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "olmo2-recipe")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                        help="fp32 (default: the README's tables were run so), bf16, or auto (bf16 on a CPU "
                             "with AMX or AVX512-BF16; olmolab/precision.py)")
    args = parser.parse_args(argv)
    scale, out = SCALES[args.scale], args.out
    started = time.perf_counter()

    corpora = SHARED_DATA / "corpora"
    docs = excerpt(corpora / "python-docs" / "python-3.11-docs.jsonl.gz", out / "corpora", scale.corpus_chars)
    wiki = excerpt(corpora / "wikitext-2" / "valid.txt", out / "corpora", scale.corpus_chars)
    held_out = excerpt(corpora / HELD_OUT, out / "corpora", scale.corpus_chars)
    stage1_path, models = train_stages(out, scale, docs, wiki, held_out, args.precision)
    scores = {name: evaluate(path, out, name.replace(",", "").replace(" ", "-"), scale, held_out)
              for name, path in models.items()}
    for run_dir in ["stage1", *(f"stage2-seed{seed}" for seed in ANNEAL_SEEDS)]:
        run(["report", str(out / run_dir)])
    intensity = load_run_config(stage1_path).trainer.carbon_intensity
    costs = footprints(out, intensity)
    report = table(scores) + "\n\n" + footprint_table(costs, intensity)
    (out / "results.md").write_text(report + "\n")
    (out / "results.json").write_text(json.dumps({"scores": scores, "footprints": costs}, indent=2) + "\n")
    print(f"\n{report}\n\nthe OLMo 2 recipe at {args.scale} scale: {time.perf_counter() - started:.0f} s; "
          f"table in {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
