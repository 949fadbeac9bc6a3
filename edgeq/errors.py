"""Exceptions that reach the user as one line: `edgeq: error: <message>`."""


class EdgeqError(Exception):
    """A problem with the user's input or environment; the message says what is wrong and what to do."""
