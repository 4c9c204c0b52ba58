"""Errors meant for the user: printed as one line by the CLI, never as a traceback."""


class UserError(Exception):
    """A mistake in the user's input (a path, a config value, a file's contents).

    The message says what was wrong, where (file, line, key) and what to do instead.
    """


def first_line(error: BaseException) -> str:
    """The first line of an exception's message: libraries' errors can run to dozens of lines."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
