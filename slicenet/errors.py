"""Errors raised at the boundary (files, flags, configs, images).

The CLI turns an ``InputError`` into one line on stderr and exit status 2; everything else is a bug
and keeps its traceback.
"""


class InputError(ValueError):
    """Bad user input: the message says what was expected, what was received and how to fix it."""
