"""Errors the command line reports as a message, not a traceback."""


class SweepError(RuntimeError):
    """A sweep that cannot start (name taken, nothing to resume, bad search space)."""
