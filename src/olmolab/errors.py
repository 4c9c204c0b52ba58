"""Errors meant for the user: printed as one line by the CLI, never as a traceback."""


class UserError(Exception):
    """A mistake in the user's input (a path, a config value, a file's contents).

    The message says what was wrong, where (file, line, key) and what to do instead.
    """


def first_line(error: BaseException) -> str:
    """The first line of an exception's message: libraries' errors can run to dozens of lines."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def unpickling_refusal(error: BaseException) -> str:
    """What torch's restricted unpickler (`torch.load(weights_only=True)`) refused, in one line:
    the line naming the refused global where there is one. Its message's first line suggests
    loading again with weights_only=False, which runs whatever the file holds: never repeated."""
    lines = [line.strip() for line in str(error).splitlines()]
    return next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), "not tensors")


def refused_unpickling(path, error: BaseException, advice: str) -> UserError:
    """The error for a file torch's restricted unpickler refused, naming what it refused
    (`unpickling_refusal`), with `advice` on what to do instead."""
    return UserError(f"{path}: refused: it holds objects other than tensors, which olmolab never unpickles "
                     f"({unpickling_refusal(error)}); {advice}")
