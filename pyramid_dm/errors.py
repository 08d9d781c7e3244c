"""User-facing errors: bad input that the command line reports in one line, without a traceback."""


class UserError(ValueError):
    """Bad input (a file, key or value); the message names the culprit and what to do."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as the user should read it. An error raised in a data-loader worker comes back from
    torch re-created with the worker's whole traceback as its message ("Caught X in DataLoader worker process 0.
    Original Traceback ..."); its last line holds the original message."""
    text = str(exc)
    if "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text
