"""A multi-turn conversation with a model, in its chat template (`olmolab chat RUN`).

The history is kept as messages and the whole conversation is rendered again each turn
(`Tokenizer.render_chat` + the generation prompt), so the model always sees exactly the format
it was fine-tuned on. The reply streams to the terminal and ends at EOS, which closes the
assistant's turn in the template.
"""

from __future__ import annotations

from collections.abc import Callable

from olmolab.errors import UserError


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
        from olmolab.generation import generate_text

        self.messages.append({"role": "user", "content": text})
        try:
            answer = generate_text(self.model, self.tokenizer, [self.prompt()], self.config,
                                   on_text=None if on_text is None else lambda row, piece: on_text(piece))[0]
        except UserError:
            self.messages.pop()
            raise
        self.messages.append({"role": "assistant", "content": answer})
        return answer
