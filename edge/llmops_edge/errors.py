"""The edge package's one exception: the command line prints its message on one line."""


class EdgeError(Exception):
    """A command failed; the message says what was wrong and what to do."""
