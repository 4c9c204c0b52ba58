"""Generation: sampling, the decode loop, the static cache for compiled decoding, and text
streaming with stop strings.

    generate(model, [[ids...], ...], GenerationConfig(...))  -> new token ids per prompt
    generate_text(model, tokenizer, ["text", ...], config, stop_strings=[...])  -> new text per prompt
    complete_ids(model, tokenizer, [[ids...], ...], config, stop_strings=[...])  -> the same from ids
"""

from olmolab.generation.config import GenerationConfig, TokenCallback
from olmolab.generation.decode import check_prompts, generate
from olmolab.generation.sampling import next_token
from olmolab.generation.static_cache import decode_step
from olmolab.generation.streaming import complete_ids, generate_text

__all__ = [
    "GenerationConfig",
    "TokenCallback",
    "check_prompts",
    "complete_ids",
    "decode_step",
    "generate",
    "generate_text",
    "next_token",
]
