"""`olmolab chat RUN`: a multi-turn conversation with a model, in its chat template.

The history is kept as messages and the whole conversation is rendered again each turn
(`Tokenizer.render_chat` + the generation prompt), so the model always sees exactly the format
it was fine-tuned on. The reply streams to the terminal and ends at EOS, which closes the
assistant's turn in the template.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from olmolab.cli import add_command
from olmolab.errors import UserError

EXAMPLES = """\
examples:
  olmolab chat runs/dpo
  olmolab chat runs/sft --system "You are a concise assistant." --temperature 0.7 --top-p 0.9 --seed 1

Type a message and press Enter. /reset starts a new conversation (the system message stays);
/quit or Ctrl-D ends."""


class ChatSession:
    """A conversation: the messages so far, and a model to continue it."""

    def __init__(self, model, tokenizer, config, system: str | None = None):
        self.model, self.tokenizer, self.config, self.system = model, tokenizer, config, system
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def prompt(self) -> str:
        """The conversation so far, ending with the generation prompt `<|assistant|>\\n`."""
        return self.tokenizer.render_chat(self.messages, add_generation_prompt=True)[0]

    def reply(self, text: str, on_text: Callable[[str], None] | None = None) -> str:
        """The assistant's answer to `text`; both join the history."""
        from olmolab.model.generate import generate_text

        self.messages.append({"role": "user", "content": text})
        try:
            answer = generate_text(self.model, self.tokenizer, [self.prompt()], self.config,
                                   on_text=None if on_text is None else lambda row, piece: on_text(piece))[0]
        except UserError:
            self.messages.pop()
            raise
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def register(subparsers) -> None:
    p = add_command(subparsers, "chat", "talk with a model in its chat template (multi-turn, streaming)",
                    examples=EXAMPLES)
    p.add_argument("checkpoint", metavar="RUN", help="a run directory, revision, or Hugging Face directory")
    p.add_argument("--system", help="a system message to start every conversation with")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="per reply (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None, metavar="K")
    p.add_argument("--top-p", type=float, default=None, metavar="P")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=_chat)


def _chat(args) -> int:
    from olmolab.inference_cli import _device
    from olmolab.io import load
    from olmolab.model.generate import GenerationConfig

    model, tokenizer = load(args.checkpoint, device=_device(args.device))
    if tokenizer is None:
        raise UserError(f"{args.checkpoint}: no tokenizer.json with this checkpoint")
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed)
    session = ChatSession(model, tokenizer, config, system=args.system)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            return 0
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            session.reset()
            print("(new conversation)")
            continue
        if not text.strip():
            continue
        try:
            session.reply(text, on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
        except UserError as e:
            print(f"\n(error: {e}; /reset starts a new conversation)")
            continue
        sys.stdout.write("\n")
