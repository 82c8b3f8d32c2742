"""The one exception type the command line turns into a clean error message."""


class FnbodyError(Exception):
    """A user-facing error: bad input, a missing file, a mismatched model. The CLI prints it without a traceback."""
