"""Errors raised for user mistakes.

Everything a user can cause (a wrong path, an unreadable image, an empty prompt) raises
:class:`AttendsegError` with a message that names the problem; the CLI prints that message
without a traceback. Anything else is a bug and keeps its traceback.
"""


class AttendsegError(ValueError):
    """A user-facing error: bad input, a missing file, an unsupported model."""
