"""Post-training: the Tülu 3 recipe that made OLMo 2-Instruct, on pretraining's engine.

    sft.py         supervised fine-tuning on chat data (assistant-only labels, packing)
    dpo.py         direct preference optimisation (dpo, dpo_norm) with a cached reference
    rlvr.py        RL with verifiable rewards: GRPO rollouts, scoring and updates on the engine
    grpo.py        GRPO's rewards, group advantages and clipped-ratio + KL per-token loss
    verifiers.py   answer checkers (gsm8k, math; ifeval with its extra) and their registry, keyed by a row's `dataset`
    chat_data.py   reading and checking JSONL conversations
    batches.py     the seeded, resumable order of examples, and padding
    engine.py      `PostTrainer`: the trainer with chat data instead of token files
    config.py      the `olmolab sft` / `dpo` / `rlvr` run config
    chat.py        `olmolab chat`: talking to a model in its chat template

The chat template itself is in `olmolab.tokenizer` (`render_chat`, `CHAT_TEMPLATE`).
"""
