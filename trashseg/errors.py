"""Errors that carry a message meant for the user: what was wrong, what was expected, the fix."""

import re


class UserError(Exception):
    """Bad input or configuration. The CLI prints the message and exits with status 2."""


class ConfigError(UserError, ValueError):
    """A configuration value or key is invalid."""


class DataError(UserError, ValueError):
    """A dataset, annotation file or prediction folder cannot be used as given."""


class OutputError(UserError, OSError):
    """An output file could not be written (a full disk, no permission). Also an OSError,
    so callers that handle OS errors keep working."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with control characters shown escaped (`\\x1b`, `\\n`): a class name or file_name
    from a dataset can then neither restyle the terminal (ANSI escapes) nor forge a log line."""
    return _CONTROL_CHARACTERS.sub(lambda match: repr(match.group())[1:-1], text)
