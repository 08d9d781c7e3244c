"""User-facing errors: bad input that the command line reports in one line, without a traceback."""


class UserError(ValueError):
    """Bad input (a file, key or value); the message names the culprit and what to do."""
