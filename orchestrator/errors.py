"""Errors the command line reports as a message, not a traceback."""


class SweepError(RuntimeError):
    """A sweep that cannot start (name taken, nothing to resume, bad search space)."""


class PromotionError(RuntimeError):
    """A promotion that cannot run (no such sweep, nothing finished, no test split, data changed)."""
